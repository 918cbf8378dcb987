"""Peers on the same tasks and protocol: Stable-Baselines3 SAC (continuous actions, e.g. DMC) and DQN
(discrete actions, e.g. MinAtar), trained on the project's own environments (envs.make: the same Dict
flattening, channels-first images and action repeat) and evaluated exactly as this agent is: 10
deterministic episodes on the evaluation seeds of agent/evaluate.py every --eval-every env steps, env
steps counting the environment's own steps (an action repeated twice is two). Writes JSON per seed.

    python benchmarks/peers.py sac dm_control/cartpole-swingup-v0 --action-repeat 2 --steps 100000
    python benchmarks/peers.py dqn MinAtar/Breakout-v1 --steps 100000 --seeds 0 1 2

Settings (say which in any comparison):
- SAC: SB3's defaults (2 x 256 MLPs, Adam 3e-4, batch 256, tau 0.005, one update per agent step) with
  rl-baselines3-zoo's MuJoCo warm-up of 10,000 random agent steps, gamma 0.99.
- DQN: the MinAtar paper's DQN (Young & Tian 2019): one 3x3 convolution with 16 channels and a 128-unit
  layer, batch 32, replay 100,000, target network every 1,000 updates, one update per step, epsilon
  1 -> 0.1 over the first 100,000 frames, 5,000 random steps first, gamma 0.99; Adam 2.5e-4 where the
  paper used RMSProp (SB3's DQN takes any torch optimiser; Adam is its default). SB3's own NatureCNN
  needs images of at least 36 x 36 pixels, so it cannot take MinAtar's 10 x 10 grids.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from rich.console import Console
from torch import nn

import envs
from agent.checkpoint import atomic_write_text
from agent.evaluate import evaluation_seed
from agent.runs import safe_name
from agent.trainer import set_threads

SAC_SETTINGS = {"learning_starts": 10_000, "gamma": 0.99, "batch_size": 256, "learning_rate": 3e-4, "tau": 0.005}
DQN_SETTINGS = {"learning_starts": 5_000, "gamma": 0.99, "batch_size": 32, "learning_rate": 2.5e-4,
                "buffer_size": 100_000, "target_update_interval": 1_000, "train_freq": 1,
                "exploration_initial_eps": 1.0, "exploration_final_eps": 0.1}  # fmt: skip
EPSILON_FRAMES = 100_000  # DQN's epsilon reaches its final value here


def minatar_cnn(observation_space: gym.spaces.Box) -> type:
    """The MinAtar paper's network body, one 3x3 convolution (16 channels) then 128 units, as the
    BaseFeaturesExtractor subclass SB3 wants (made here so that SB3 is imported only when used)."""
    from stable_baselines3.common.torch_layers import BaseFeaturesExtractor

    channels, height, width = observation_space.shape

    class MinAtarCNN(BaseFeaturesExtractor):
        def __init__(self, space: gym.spaces.Box):
            super().__init__(space, 128)
            self.net = nn.Sequential(
                nn.Conv2d(channels, 16, 3), nn.ReLU(), nn.Flatten(),
                nn.Linear(16 * (height - 2) * (width - 2), 128), nn.ReLU(),
            )  # fmt: skip

        def forward(self, obs: torch.Tensor) -> torch.Tensor:
            return self.net(obs)

    return MinAtarCNN


def make_model(algo: str, env: gym.Env, seed: int, steps: int, action_repeat: int):
    from stable_baselines3 import DQN, SAC

    if algo == "sac":
        return SAC("MlpPolicy", env, seed=seed, device="cpu", verbose=0, **SAC_SETTINGS)
    agent_steps = steps // action_repeat
    settings = dict(DQN_SETTINGS, exploration_fraction=min(1.0, EPSILON_FRAMES / action_repeat / agent_steps))
    image = len(env.observation_space.shape) == 3
    # images: SB3 divides uint8 observations by 255 itself (MinAtar's cells are 0 or 255)
    # the paper: the 128 units feed the Q-values directly (no further layers: net_arch=[])
    kwargs = {"features_extractor_class": minatar_cnn(env.observation_space), "net_arch": []} if image else {}
    return DQN("MlpPolicy", env, seed=seed, device="cpu", verbose=0, policy_kwargs=kwargs, **settings)


def evaluate_model(model, args: argparse.Namespace, seed: int, evaluation: int, discrete: bool) -> float:
    """Mean return of `args.eval_episodes` deterministic episodes on this agent's evaluation seeds."""
    vector = envs.make_vector(args.env, args.eval_episodes, action_repeat=args.action_repeat)
    try:
        obs, _ = vector.reset(seed=evaluation_seed(seed, evaluation, args.eval_episodes))
        returns, running = np.zeros(args.eval_episodes), np.ones(args.eval_episodes, bool)
        while running.any():
            action, _ = model.predict(obs, deterministic=True)
            obs, reward, term, trunc, _ = vector.step(action)
            returns += reward * running
            running &= ~(term | trunc)
    finally:
        vector.close()
    return float(returns.mean())


def run_seed(args: argparse.Namespace, seed: int, console: Console) -> dict:
    from stable_baselines3.common.callbacks import BaseCallback

    env = envs.make(args.env, action_repeat=args.action_repeat)
    discrete = isinstance(env.action_space, gym.spaces.Discrete)
    if (args.algo == "dqn") != discrete:
        raise SystemExit(f"error: {args.algo} needs {'discrete' if args.algo == 'dqn' else 'continuous'} actions")
    model = make_model(args.algo, env, seed, args.steps, args.action_repeat)
    curve: list[dict] = []
    start = time.perf_counter()
    eval_seconds = 0.0

    class Evaluate(BaseCallback):
        def _on_step(self) -> bool:
            nonlocal eval_seconds
            frames = self.num_timesteps * args.action_repeat
            while frames >= (len(curve) + 1) * args.eval_every:
                began = time.perf_counter()
                value = evaluate_model(model, args, seed, len(curve) + 1, discrete)
                eval_seconds += time.perf_counter() - began
                point = {"step": (len(curve) + 1) * args.eval_every, "seconds": time.perf_counter() - start,
                         "return": value}  # fmt: skip
                curve.append(point)
                console.log(f"{args.algo} seed {seed}: step {point['step']:>7,}  eval {value:8.1f}  "
                            f"{point['seconds']:7.1f} s")  # fmt: skip
            return True

    model.learn(total_timesteps=args.steps // args.action_repeat, callback=Evaluate())
    seconds = time.perf_counter() - start
    env.close()
    returns = [point["return"] for point in curve]
    return {
        "seed": seed,
        "final": returns[-1] if returns else None,
        "best": max(returns) if returns else None,
        "last_20_percent_mean": float(np.mean(returns[-max(1, len(returns) // 5) :])) if returns else None,
        "seconds": seconds,
        "env_steps_per_second": args.steps / max(seconds - eval_seconds, 1e-9),
        "peak_memory_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "curve": curve,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("algo", choices=["sac", "dqn"])
    parser.add_argument("env")
    parser.add_argument("--steps", type=int, default=100_000, help="env steps (the environment's own)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--action-repeat", type=int, default=1)
    parser.add_argument("--eval-every", type=int, default=5_000)
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    set_threads(args.threads)
    console = Console()
    settings = SAC_SETTINGS if args.algo == "sac" else {**DQN_SETTINGS, "epsilon_frames": EPSILON_FRAMES}
    for seed in args.seeds:  # one after another, each written as it finishes
        result = run_seed(args, seed, console)
        payload = {"algo": args.algo, "env": args.env, "steps": args.steps, "action_repeat": args.action_repeat,
                   "eval_every": args.eval_every, "eval_episodes": args.eval_episodes, "threads": args.threads,
                   "settings": settings, **result}  # fmt: skip
        out = args.out / f"peer-{args.algo}-{safe_name(args.env)}-seed{seed}.json"
        atomic_write_text(out, json.dumps(payload, indent=1))
        console.print(f"{args.algo} seed {seed}: final {result['final']}, best {result['best']}; wrote {out}")


if __name__ == "__main__":
    main()
