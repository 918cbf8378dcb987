"""What a run's world model gets right on its own replayed data: the rewards and terminations its heads
predict from the posterior states (which have seen each observation), and, for images, which lit cells
its decoder reconstructs, per channel. A model that misses the rare events an env scores on leaves the
actor nothing to learn from in imagination, whatever the actor's settings.

    python benchmarks/model_probe.py <run folder> --chunks 10 --out probe.json

Reads the newest `--chunks` replay chunks of the run (about 1,000 env steps each) and the checkpoint
`--which` (last by default: the model that was training on them). Codes are sampled with a fixed seed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from agent import Agent
from agent.checkpoint import CheckpointError, atomic_write_text
from agent.replay import chunk_files

LIT = 128  # a cell counts as lit from half its range on (MinAtar's cells are 0 or 255)


@torch.no_grad()
def predict_chunk(agent: Agent, chunk: dict[str, np.ndarray], generator: torch.Generator) -> dict[str, np.ndarray]:
    """The model's predictions along one replay chunk (streams B, steps T): reward and continuation (B, T),
    and the decoded observations (B, T, *obs_shape), each from the posterior state of that step."""
    wm = agent.world_model
    device = wm.valid.device
    is_first = torch.as_tensor(chunk["is_first"], device=device).clone()
    is_first[:, 0] = True  # a chunk starts mid-episode: the model starts from its initial state there
    post = wm.observe(
        torch.as_tensor(chunk["obs"], device=device), torch.as_tensor(chunk["action"], device=device), is_first,
        generator,
    )  # fmt: skip
    feat = post.latent.features()
    return {
        "reward": wm.reward_dist(feat).mean().float().cpu().numpy(),
        "cont": wm.cont_dist(feat).mean().float().cpu().numpy(),
        "obs": wm.decoder(feat).mean().cpu().numpy(),
    }


def summarize(
    reward: np.ndarray, terminal: np.ndarray, predicted_reward: np.ndarray, predicted_cont: np.ndarray
) -> dict[str, float | int | None]:
    """How the reward and continuation heads do at the steps that matter: flat arrays over all steps."""
    scored, ended = reward != 0, terminal.astype(bool)
    signs = np.sign(reward[scored])

    def mean(values: np.ndarray) -> float | None:  # None where there is nothing to average
        return float(values.mean()) if values.size else None

    return {
        "steps": int(reward.size),
        "reward_steps": int(scored.sum()),
        "terminal_steps": int(ended.sum()),
        # a reward step counts as caught when the prediction has its sign and at least half its size
        "reward_steps_caught": mean(signs * predicted_reward[scored] >= 0.5 * np.abs(reward[scored])),
        "mean_abs_error_at_reward_steps": mean(np.abs(predicted_reward - reward)[scored]),
        "mean_abs_prediction_elsewhere": mean(np.abs(predicted_reward[~scored])),
        "terminal_steps_caught": mean(predicted_cont[ended] < 0.5),  # continuation predicted below one half
        "mean_cont_at_terminal_steps": mean(predicted_cont[ended]),
        "false_terminals": mean(predicted_cont[~ended] < 0.5),
    }


def channel_recall(real: np.ndarray, decoded: np.ndarray) -> list[dict[str, float]]:
    """Per channel of (N, C, H, W) images: the share of cells lit, the share of lit cells that the decoder
    lights too, and the share of dark cells that it lights."""
    out = []
    for c in range(real.shape[1]):
        lit, shown = real[:, c] >= LIT, decoded[:, c] >= LIT
        out.append({
            "lit_share": float(lit.mean()),
            "recall": float((lit & shown).sum() / max(lit.sum(), 1)),
            "false_lit": float((~lit & shown).sum() / max((~lit).sum(), 1)),
        })  # fmt: skip
    return out


def probe_run(agent: Agent, paths: list[Path], seed: int = 0) -> dict:
    generator = torch.Generator(device=agent.world_model.valid.device).manual_seed(seed)
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("reward", "terminal", "pred_reward", "pred_cont")}
    real, decoded = [], []
    for path in paths:
        with np.load(path, allow_pickle=False) as data:  # noqa: TID251 (pickles refused)
            chunk = {key: data[key] for key in data.files}
        predicted = predict_chunk(agent, chunk, generator)
        parts["reward"].append(chunk["reward"].ravel())
        parts["terminal"].append(chunk["is_terminal"].ravel())
        parts["pred_reward"].append(predicted["reward"].ravel())
        parts["pred_cont"].append(predicted["cont"].ravel())
        if chunk["obs"].ndim == 5:  # images (B, T, C, H, W)
            real.append(chunk["obs"].reshape(-1, *chunk["obs"].shape[2:]))
            decoded.append(predicted["obs"].reshape(real[-1].shape))
    flat = {key: np.concatenate(value) for key, value in parts.items()}
    summary = summarize(flat["reward"], flat["terminal"], flat["pred_reward"], flat["pred_cont"])
    if real:
        summary["channels"] = channel_recall(np.concatenate(real), np.concatenate(decoded))
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a run folder (with replay/ and checkpoints/)")
    parser.add_argument("--which", default="last", choices=["last", "best"])
    parser.add_argument("--chunks", type=int, default=10, help="the newest replay chunks to read")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampled codes")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.chunks < 1:
        parser.error("--chunks must be >= 1")
    try:
        agent = Agent.load(args.run, args.which)
    except CheckpointError as error:
        raise SystemExit(f"error: {error}") from None
    files = chunk_files(args.run / "replay")
    if not files:
        raise SystemExit(f"error: {args.run / 'replay'} holds no replay chunks")
    paths = [path for _, _, path in files[-args.chunks :]]
    summary = {"run": str(args.run), "which": args.which, "env_id": agent.config.env_id,
               "chunks": [p.name for p in paths], **probe_run(agent, paths, args.seed)}  # fmt: skip
    print(json.dumps(summary, indent=1))
    if args.out:
        atomic_write_text(args.out, json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
