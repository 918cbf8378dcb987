"""What a run's world model gets right on its own replayed data: the rewards and terminations its heads
predict from the posterior states (which have seen each observation), and, for images, which lit cells
its decoder reconstructs, per channel. A model that misses the rare events an env scores on leaves the
actor nothing to learn from in imagination, whatever the actor's settings.

    python benchmarks/model_probe.py <run folder> --chunks 10 --out probe.json
    python benchmarks/model_probe.py <run folder> --refit --out probe.json   # and fresh heads (minutes)

Reads the newest `--chunks` replay chunks of the run (about 1,000 steps of each env each) and the
checkpoint `--which` (last by default: the model that was training on them). Each chunk is observed from
the model's initial state, its first steps included. Codes are sampled with a fixed seed.
With --refit it also fits fresh reward and continuation heads on all older chunks and scores them on the
newest: once from the model's features, once from the raw frames before and after each step with the
action between them. The model itself trained on the newest chunks, the heads did not: that favours the
features, so where the frames let a head catch the events and the features do not, the representation
is what loses them.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from agent import Agent
from agent.checkpoint import CheckpointError, atomic_write_text
from agent.nets import MLP, Bernoulli, TwoHot
from agent.replay import chunk_files, read_chunk

LIT = 128  # a cell counts as lit from half its range on (MinAtar's cells are 0 or 255)


@torch.no_grad()
def predict_chunk(
    agent: Agent, chunk: dict[str, np.ndarray], generator: torch.Generator, decode: bool = True
) -> dict[str, np.ndarray]:
    """The model's predictions along one replay chunk (streams B, steps T): reward and continuation (B, T),
    the features (B, T, F) and, with `decode`, the decoded observations (B, T, *obs_shape), each of that
    step's posterior."""
    wm = agent.world_model
    device = wm.valid.device
    is_first = torch.as_tensor(chunk["is_first"], device=device).clone()
    is_first[:, 0] = True  # a chunk starts mid-episode: the model starts from its initial state there
    post = wm.observe(
        torch.as_tensor(chunk["obs"], device=device), torch.as_tensor(chunk["action"], device=device), is_first,
        generator,
    )  # fmt: skip
    feat = post.latent.features()
    predicted = {
        "reward": wm.reward_dist(feat).mean().float().cpu().numpy(),
        "cont": wm.cont_dist(feat).mean().float().cpu().numpy(),
        "features": feat.float().cpu().numpy(),
    }
    if decode:
        predicted["obs"] = wm.decoder(feat).mean().cpu().numpy()
    return predicted


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


def read_chunks(
    agent: Agent, files: list[tuple[int, int, Path]], seed: int, decode_from: int = 0
) -> list[dict[str, np.ndarray]]:
    """Each chunk's arrays (files as replay.chunk_files lists them) with the model's predictions added under
    `pred_*`, its codes sampled from `seed` and the chunk's first step: a chunk gets the same predictions
    whichever other chunks are read with it. Only chunks from index `decode_from` on are decoded (images are
    the costly part, and only the newest chunks are summarized)."""
    chunks = []
    for i, (first_step, _, path) in enumerate(files):
        generator = torch.Generator(device=agent.world_model.valid.device).manual_seed(seed * 1_000_003 + first_step)
        chunk = read_chunk(path)
        predicted = predict_chunk(agent, chunk, generator, decode=i >= decode_from)
        chunk.update({f"pred_{key}": value for key, value in predicted.items()})
        chunks.append(chunk)
    return chunks


def probe_chunks(chunks: list[dict[str, np.ndarray]]) -> dict:
    """The summary of the heads' predictions, and per channel the decoder's, over these chunks."""
    flat = {key: np.concatenate([c[key].ravel() for c in chunks])
            for key in ("reward", "is_terminal", "pred_reward", "pred_cont")}  # fmt: skip
    summary = summarize(flat["reward"], flat["is_terminal"], flat["pred_reward"], flat["pred_cont"])
    if chunks[0]["obs"].ndim == 5:  # images (B, T, C, H, W)
        real = np.concatenate([c["obs"].reshape(-1, *c["obs"].shape[2:]) for c in chunks])
        decoded = np.concatenate([c["pred_obs"].reshape(-1, *c["obs"].shape[2:]) for c in chunks])
        summary["channels"] = channel_recall(real, decoded)
    return summary


def transitions(chunks: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Every step that has a previous step in its episode, flattened: the features, the frames before and
    after (uint8, flattened), the action between them, the reward and termination that arrived with it."""
    out: dict[str, list[np.ndarray]] = {k: [] for k in ("features", "before", "after", "action", "reward", "terminal")}
    for c in chunks:
        keep = ~c["is_first"][:, 1:]  # (B, T - 1): step t has a predecessor t - 1 in its episode
        out["features"].append(c["pred_features"][:, 1:][keep])
        cells = int(np.prod(c["obs"].shape[2:]))  # a chunk may hold no such step (-1 cannot size 0 rows)
        out["before"].append(c["obs"][:, :-1][keep].reshape(-1, cells))
        out["after"].append(c["obs"][:, 1:][keep].reshape(-1, cells))
        out["action"].append(c["action"][:, :-1][keep])
        out["reward"].append(c["reward"][:, 1:][keep])
        out["terminal"].append(c["is_terminal"][:, 1:][keep])
    return {key: np.concatenate(value) for key, value in out.items()}


Rows = Callable[[dict[str, np.ndarray], np.ndarray], torch.Tensor]  # (data, row indices) -> head inputs


def fit_heads(
    agent: Agent, inputs: Rows, train: dict[str, np.ndarray], test: dict[str, np.ndarray], steps: int, seed: int
) -> dict:
    """Fresh reward (two-hot) and continuation heads of one hidden layer of 256 units on inputs(data, rows),
    trained for `steps` Adam steps of 512 rows; the summary of their predictions on the test rows."""
    wm = agent.world_model
    torch.manual_seed(seed)
    width = inputs(train, np.arange(1)).shape[1]
    reward_head = MLP(width, wm.cfg.reward_bins, 256, 1, zero_out=True)
    cont_head = MLP(width, 1, 256, 1)
    params = [*reward_head.parameters(), *cont_head.parameters()]
    optimizer = torch.optim.Adam(params, lr=3e-4)
    rng = np.random.default_rng(seed)
    grid = wm.reward_grid.cpu()
    for _ in range(steps):
        rows = rng.integers(0, len(train["reward"]), 512)
        x = inputs(train, rows)
        reward, cont = torch.as_tensor(train["reward"][rows]), torch.as_tensor(~train["terminal"][rows]).float()
        loss = -TwoHot(reward_head(x), grid).log_prob(reward).mean()
        loss = loss - Bernoulli(cont_head(x).squeeze(-1)).log_prob(cont).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    rewards, conts = [], []
    with torch.no_grad():
        for part in np.array_split(np.arange(len(test["reward"])), max(1, len(test["reward"]) // 4096)):
            x = inputs(test, part)
            rewards.append(TwoHot(reward_head(x), grid).mean())
            conts.append(Bernoulli(cont_head(x).squeeze(-1)).mean())
    return summarize(test["reward"], test["terminal"], torch.cat(rewards).numpy(), torch.cat(conts).numpy())


def refit(agent: Agent, chunks: list[dict[str, np.ndarray]], held_out: int, steps: int = 4000, seed: int = 0) -> dict:
    """Fresh heads fitted on all but the newest `held_out` chunks, scored on those: from the model's features,
    and from the frames before and after each step with the action between them."""
    train, test = transitions(chunks[:-held_out]), transitions(chunks[-held_out:])

    def features(data: dict, rows: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(data["features"][rows])

    def frames(data: dict, rows: np.ndarray) -> torch.Tensor:
        cells = np.concatenate([data["before"][rows], data["after"][rows]], 1).astype(np.float32) / 255.0
        return torch.as_tensor(np.concatenate([cells, data["action"][rows]], 1))

    return {"train_steps": len(train["reward"]), "train_reward_steps": int((train["reward"] != 0).sum()),
            "from_features": fit_heads(agent, features, train, test, steps, seed),
            "from_frames": fit_heads(agent, frames, train, test, steps, seed)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a run folder (with replay/ and checkpoints/)")
    parser.add_argument("--which", default="last", choices=["last", "best"])
    parser.add_argument("--chunks", type=int, default=10, help="the newest replay chunks to read")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampled codes")
    parser.add_argument("--refit", action="store_true", help="also fit fresh heads on all older chunks (minutes)")
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
    if len(files) < (args.chunks + 1 if args.refit else 1):
        raise SystemExit(f"error: {args.run / 'replay'} holds {len(files)} replay chunks, too few")
    files = files if args.refit else files[-args.chunks :]
    chunks = read_chunks(agent, files, args.seed, decode_from=len(files) - args.chunks)
    summary = {"run": str(args.run), "which": args.which, "env_id": agent.config.env_id,
               "chunks": [path.name for _, _, path in files[-args.chunks :]],
               **probe_chunks(chunks[-args.chunks :])}  # fmt: skip
    if args.refit:
        summary["refit"] = refit(agent, chunks, args.chunks, seed=args.seed)
    print(json.dumps(summary, indent=1))
    if args.out:
        atomic_write_text(args.out, json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
