"""How much reward random discrete actions find when they are temporally consistent. Two ways:
- held: the sampled action is redrawn with probability p at every step (p = 1: uniform random actions;
  p = 0.1: runs of 10 steps on average);
- colored: the action is the argmax of one colored Gaussian sequence per action (agent.noise), which is
  how the agent explores with `train.discrete_noise_color` (each step's action is still uniform on its own).
A sparse-reward game such as MinAtar Freeway pays a random walk almost nothing, which leaves a world model
no rewards to learn from (docs/results.md: MinAtar). Also the mean return of each constant action over episodes with
seeds 0, 1, ... (Freeway's always-up: 0 to 39 by seed, as the cars' timing lets it through or not).

    python benchmarks/persistence.py --env MinAtar/Freeway-v1
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np

import envs
from agent.checkpoint import atomic_write_text
from agent.noise import ActionNoise

# (is_first) -> the next action index
Chooser = Callable[[bool], int]


def held_chooser(actions: int, redraw: float, rng: np.random.Generator) -> Chooser:
    """Uniform random actions, each kept until redrawn with probability `redraw` per step."""
    current = int(rng.integers(actions))

    def choose(is_first: bool) -> int:
        nonlocal current
        if rng.random() < redraw:
            current = int(rng.integers(actions))
        return current

    return choose


def colored_chooser(actions: int, beta: float, episode_steps: int, rng: np.random.Generator) -> Chooser:
    """The argmax of colored Gaussian noise per action: uniform at each step, correlated along episodes."""
    noise = ActionNoise(beta, envs=1, action_dim=actions, steps=episode_steps, rng=rng)
    return lambda is_first: int(noise.next(np.array([is_first]))[0].argmax())


def total_reward(env, choose: Chooser, seed: int, steps: int | None = None) -> float:
    """Total reward of the chooser's actions over `steps` env steps (episodes restart), or over one episode."""
    env.reset(seed=seed)
    total, is_first, step = 0.0, True, 0
    while steps is None or step < steps:
        _, reward, terminated, truncated, _ = env.step(choose(is_first))
        total, is_first, step = total + float(reward), terminated or truncated, step + 1
        if is_first:
            if steps is None:
                break
            env.reset()
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="MinAtar/Freeway-v1")
    parser.add_argument("--steps", type=int, default=25_000)
    parser.add_argument("--redraw", type=float, nargs="+", default=[1.0, 0.1, 0.02])
    parser.add_argument("--colors", type=float, nargs="+", default=[0.0, 1.0, 2.0], help="noise exponents beta")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--constant-episodes", type=int, default=20, help="episodes per constant action")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    env = envs.make(args.env)
    actions, discrete = envs.action_info(env.action_space)
    if not discrete:
        raise SystemExit(f"{args.env}: this benchmark needs discrete actions")
    episode_steps = envs.episode_steps(args.env)
    schemes = [("redraw", p, partial(held_chooser, actions, p)) for p in args.redraw]
    schemes += [("color", b, partial(colored_chooser, actions, b, episode_steps)) for b in args.colors]
    rows = []
    for kind, value, make_chooser in schemes:
        rewards = [total_reward(env, make_chooser(np.random.default_rng(s)), s, args.steps) for s in args.seeds]
        rows.append({kind: value, "reward_per_seed": rewards})
        print(f"{kind} {value}: reward in {args.steps:,} steps per seed {rewards}")
    constant = [
        [total_reward(env, lambda is_first, a=action: a, seed) for seed in range(args.constant_episodes)]
        for action in range(actions)
    ]
    print(f"mean return of each constant action over {args.constant_episodes} episodes: {np.mean(constant, 1)}")
    out = args.out or Path(f"benchmarks/results/persistence-{args.env.replace('/', '_')}.json")
    payload = {"args": {k: str(v) for k, v in vars(args).items()}, "random": rows, "constant_action_returns": constant}
    atomic_write_text(out, json.dumps(payload, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
