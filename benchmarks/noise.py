"""How often a random policy with colored action noise reaches MountainCarContinuous-v0's goal.

The untrained policy's actions: mean 0, std 0.89 (BoundedNormal's std at a zero output layer), times
noise colored along the episode by agent.noise (beta 0 white, 1 pink, 2 red), clipped to [-1, 1].
Counts the episodes that terminate at the goal; writes JSON.

    python benchmarks/noise.py                        # 50 episodes per color
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

import envs
from agent.checkpoint import atomic_write_text
from agent.noise import colored_noise

UNTRAINED_STD = 0.9 * (1 / (1 + np.exp(-2.0))) + 0.1  # (max - min) * sigmoid(0 + 2) + min, as in BoundedNormal


def goal_rate(env_id: str, beta: float, episodes: int, seed: int) -> int:
    env = envs.make(env_id)
    steps = envs.episode_steps(env_id)
    rng = np.random.default_rng(seed)
    reached = 0
    try:
        for episode in range(episodes):
            env.reset(seed=seed + episode)
            noise = colored_noise(beta, 1, steps, rng)[0]
            for t in range(steps):
                action = np.clip([UNTRAINED_STD * noise[t]], -1, 1).astype(np.float32)
                _, _, terminated, truncated, _ = env.step(action)
                if terminated or truncated:
                    reached += int(terminated)
                    break
    finally:
        env.close()
    return reached


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="MountainCarContinuous-v0")
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/noise-goal-rate.json"))
    args = parser.parse_args()
    results = {}
    for name, beta in (("white", 0.0), ("pink", 1.0), ("red", 2.0)):
        results[name] = goal_rate(args.env, beta, args.episodes, args.seed)
        print(f"{name:5} (beta {beta}): reached the goal in {results[name]} of {args.episodes} episodes")
    out = {"env": args.env, "episodes": args.episodes, "seed": args.seed, "std": UNTRAINED_STD, "reached": results}
    atomic_write_text(args.out, json.dumps(out, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
