"""How much reward random discrete actions find when each action is held for a while: the sampled action is
redrawn with probability p at every step (p = 1: uniform random actions; p = 0.1: runs of 10 steps on
average). A sparse-reward game such as MinAtar Freeway pays a random walk almost nothing, which leaves a
world model no rewards to learn from (README: MinAtar). Also the reward of each constant action.

    python benchmarks/persistence.py --env MinAtar/Freeway-v1
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

import envs
from agent.checkpoint import atomic_write_text


def random_reward(env, steps: int, redraw: float, seed: int) -> float:
    """Total reward of `steps` env steps of uniform random actions, each redrawn with probability `redraw`."""
    rng = np.random.default_rng(seed)
    env.reset(seed=seed)
    action, total = int(rng.integers(env.action_space.n)), 0.0
    for _ in range(steps):
        if rng.random() < redraw:
            action = int(rng.integers(env.action_space.n))
        _, reward, terminated, truncated, _ = env.step(action)
        total += float(reward)
        if terminated or truncated:
            env.reset()
    return total


def constant_reward(env, action: int, seed: int) -> float:
    """Return of one episode that always takes `action`."""
    env.reset(seed=seed)
    total, done = 0.0, False
    while not done:
        _, reward, terminated, truncated, _ = env.step(action)
        total, done = total + float(reward), terminated or truncated
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="MinAtar/Freeway-v1")
    parser.add_argument("--steps", type=int, default=25_000)
    parser.add_argument("--redraw", type=float, nargs="+", default=[1.0, 0.1, 0.02])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    env = envs.make(args.env)
    if not hasattr(env.action_space, "n"):
        raise SystemExit(f"{args.env}: this benchmark needs discrete actions")
    rows = []
    for redraw in args.redraw:
        rewards = [random_reward(env, args.steps, redraw, seed) for seed in args.seeds]
        rows.append({"redraw": redraw, "mean_run_steps": 1 / redraw, "reward_per_seed": rewards})
        print(f"redraw p={redraw}: reward in {args.steps:,} steps per seed {rewards}")
    constant = [constant_reward(env, action, args.seeds[0]) for action in range(env.action_space.n)]
    print(f"one episode of each constant action: {constant}")
    out = args.out or Path(f"benchmarks/results/persistence-{args.env.replace('/', '_')}.json")
    payload = {"args": {k: str(v) for k, v in vars(args).items()}, "random": rows, "constant_action_return": constant}
    atomic_write_text(out, json.dumps(payload, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
