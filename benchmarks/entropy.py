"""Does the policy keep exploring while the rewards say nothing? Train on MountainCar's dynamics with the
reward replaced by -1 on every step and no termination (200-step episodes), and record the policy's
entropy and the return scale at every log line. The maximum entropy is ln 3 = 1.099 (3 discrete
actions) and 1.419 (the bounded normal at its largest std, 1).

    python benchmarks/entropy.py discrete --steps 25000
    python benchmarks/entropy.py discrete --steps 25000 --set actor_critic.return_scale=magnitude
    python benchmarks/entropy.py continuous --steps 25000 --set actor_critic.actor_grad=reinforce

Writes benchmarks/results/entropy-<actions>-<tag>.json (tag: the --set values, or "default").
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import gymnasium as gym
from rich.console import Console

from agent import Trainer
from agent.checkpoint import atomic_write_text
from agent.config import parse_overrides
from agent.trainer import set_threads

BASES = {"discrete": "MountainCar-v0", "continuous": "MountainCarContinuous-v0"}


class ConstantReward(gym.Wrapper):
    """-1 on every step, never terminated: only the time limit ends an episode (tests/test_exploration.py
    trains on these ids too)."""

    def step(self, action):
        obs, _, _, truncated, info = self.env.step(action)
        return obs, -1.0, False, truncated, info


def constant_reward(base: str, **kwargs) -> gym.Env:
    return ConstantReward(gym.make(base, max_episode_steps=200, **kwargs))


for kind, base in BASES.items():
    gym.register(f"ConstantReward-{kind}-v0", entry_point=lambda base=base, **kwargs: constant_reward(base, **kwargs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("actions", choices=list(BASES))
    parser.add_argument("--steps", type=int, default=25_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    set_threads(args.threads)
    console = Console()
    overrides = parse_overrides(args.set)
    trainer = Trainer.create(f"ConstantReward-{args.actions}-v0", seed=args.seed, threads=args.threads,
                             **{"train.steps": args.steps, "train.log_every": 1000, "train.eval_every": 0,
                                **overrides})  # fmt: skip
    curve: list[dict] = []

    def on_log(line: dict) -> None:
        if "actor/entropy" in line:
            point = {"step": line["step"], "entropy": line["actor/entropy"], "return_scale": line["actor/return_scale"]}
            curve.append(point)
            console.log(f"step {point['step']:>7,}  entropy {point['entropy']:.3f}  scale {point['return_scale']:.2f}")

    with trainer:
        trainer.learn(on_log=on_log)
    tag = "_".join(f"{k}={v}" for k, v in sorted(overrides.items())) or "default"
    out = Path("benchmarks/results") / f"entropy-{args.actions}-{tag}.json"
    payload = {"env": f"ConstantReward-{args.actions}-v0", "seed": args.seed, "steps": args.steps,
               "overrides": overrides, "curve": curve}  # fmt: skip
    atomic_write_text(out, json.dumps(payload, indent=1))
    console.print(f"wrote {out}")


if __name__ == "__main__":
    main()
