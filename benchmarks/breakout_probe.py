"""Where a trained agent loses the ball in MinAtar Breakout, read from the game's own state.

Plays a checkpoint's most likely actions (as evaluation does, sticky actions on) and records, at every
step, the paddle's column, and at each lost ball how far the paddle was from it. At the step where the
critic's value falls (the ball will be lost under the current policy) it records the actor's probability
of each action: a policy that could still reach the ball but does not move shows there.

    python benchmarks/breakout_probe.py <run folder or checkpoint> --episodes 20 --out probe.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

import envs
from agent import Agent
from agent.checkpoint import CheckpointError, atomic_write_text

ENV_ID = "MinAtar/Breakout-v1"


def probe_episode(agent: Agent, seed: int) -> dict:
    """One episode: the paddle's columns, the return, and where the ball was lost (if it was)."""
    env = envs.make(ENV_ID)
    obs, _ = env.reset(seed=seed)
    game = env.unwrapped.game.env  # MinAtar's Breakout: ball_x, ball_y, pos (the paddle's column)
    state, first, total, steps = None, np.array([True]), 0.0, []
    while True:
        action, state = agent.act(obs[None], state, first)
        first = np.array([False])
        feat = state.latent.features()
        with torch.no_grad():
            probs = agent.actor_critic.policy(feat).probs[0].tolist()
            value = float(agent.actor_critic.value(feat).mean())
        steps.append({"ball": [int(game.ball_x), int(game.ball_y)], "paddle": int(game.pos), "probs": probs,
                      "value": value})  # fmt: skip
        obs, reward, terminated, truncated, _ = env.step(int(np.asarray(action).reshape(-1)[0]))
        total += float(reward)
        if terminated or truncated:
            break
    env.close()
    lost = None
    if terminated:
        # the last step whose value was still that of a ball in play: from the next one on it was lost
        values = [s["value"] for s in steps]
        drop = next((i for i in range(len(values) - 1, 0, -1) if values[i - 1] > 0.5 > values[i]), None)
        lost = {"ball_column": steps[-1]["ball"][0], "paddle_column": steps[-1]["paddle"],
                "steps_before_loss_when_value_fell": None if drop is None else len(steps) - drop,
                "probs_when_value_fell": None if drop is None else steps[drop]["probs"]}  # fmt: skip
    columns = [s["paddle"] for s in steps]
    return {"seed": seed, "return": total, "length": len(steps), "paddle_columns": columns, "lost": lost}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a run folder (its last checkpoint) or a .safetensors file")
    parser.add_argument("--which", default="last", choices=["last", "best"])
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    try:
        agent = Agent.load(args.checkpoint, args.which)
    except CheckpointError as error:
        raise SystemExit(f"error: {error}") from None
    if agent.config.env_id != ENV_ID:
        raise SystemExit(f"error: {args.checkpoint} is an agent of {agent.config.env_id}, not {ENV_ID}")
    episodes = [probe_episode(agent, 1_000 + i) for i in range(args.episodes)]
    columns = np.concatenate([e["paddle_columns"] for e in episodes])
    share = np.bincount(columns, minlength=10) / len(columns)
    lost = [e["lost"] for e in episodes if e["lost"]]
    distances = [abs(x["ball_column"] - x["paddle_column"]) for x in lost]
    fell = [x["probs_when_value_fell"] for x in lost if x["probs_when_value_fell"]]
    summary = {
        "mean_return": float(np.mean([e["return"] for e in episodes])),
        "paddle_column_share": [round(float(s), 3) for s in share],
        "lost_balls": len(lost),
        "median_paddle_distance_at_loss": float(np.median(distances)) if distances else None,
        "mean_probs_when_value_fell": np.mean(fell, 0).round(3).tolist() if fell else None,
    }
    print(json.dumps(summary))
    if args.out:
        record = {"checkpoint": str(args.checkpoint), "which": args.which, "summary": summary, "episodes": episodes}
        atomic_write_text(args.out, json.dumps(record))


if __name__ == "__main__":
    main()
