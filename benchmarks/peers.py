"""Peers on the same tasks and protocol: Stable-Baselines3 SAC (continuous actions, e.g. DMC) and DQN
(discrete actions, e.g. MinAtar), trained on the project's own environments (envs.make: the same Dict
flattening, channels-first images and action repeat) and evaluated exactly as this agent is: 10
deterministic episodes on the evaluation seeds of agent/evaluate.py every --eval-every env steps and at
the end, env steps counting the environment's own steps (an action repeated twice is two). Writes JSON
per seed: the curve, the final evaluation and the mean of the last 20% of the curve (a peer has no
confirmed best checkpoint to hand over; its highest evaluation is kept as `max_eval_unconfirmed`).

    python benchmarks/peers.py sac dm_control/cartpole-swingup-v0 --action-repeat 2 --steps 100000
    python benchmarks/peers.py dqn MinAtar/Breakout-v1 --steps 100000 --seeds 0 1 2

Settings (say which in any comparison):
- SAC: SB3's defaults (2 x 256 MLPs, Adam 3e-4, batch 256, tau 0.005, one update per agent step) with
  rl-baselines3-zoo's MuJoCo warm-up of 10,000 random agent steps, gamma 0.99.
- DQN: the MinAtar paper's DQN (Young & Tian 2019) as far as SB3's DQN goes: one 3x3 convolution with
  16 channels and a 128-unit layer, batch 32, replay 100,000, one update per step after 5,000 random
  steps, gamma 0.99. SB3's differences: Adam 2.5e-4 where the paper used RMSProp; the target network
  copied every 1,000 agent steps (warm-up included) rather than updates; epsilon annealed 1 -> 0.1 over
  the first 100,000 frames counted from the first step (the paper: after the warm-up); gradients
  clipped at norm 10 (SB3's default). SB3's own NatureCNN needs images of at least 36 x 36 pixels, so
  it cannot take MinAtar's 10 x 10 grids.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path
from typing import TYPE_CHECKING

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

if TYPE_CHECKING:
    from stable_baselines3.common.base_class import BaseAlgorithm

SAC_SETTINGS = {"learning_starts": 10_000, "gamma": 0.99, "batch_size": 256, "learning_rate": 3e-4, "tau": 0.005}
DQN_SETTINGS = {"learning_starts": 5_000, "gamma": 0.99, "batch_size": 32, "learning_rate": 2.5e-4,
                "buffer_size": 100_000, "target_update_interval": 1_000, "train_freq": 1,
                "exploration_initial_eps": 1.0, "exploration_final_eps": 0.1}  # fmt: skip
EPSILON_FRAMES = 100_000  # DQN's epsilon reaches its final value here


def minatar_cnn() -> type:
    """The MinAtar paper's network body, one 3x3 convolution (16 channels) then 128 units, as the
    BaseFeaturesExtractor subclass SB3 wants (made here so that SB3 is imported only when used)."""
    from stable_baselines3.common.torch_layers import BaseFeaturesExtractor

    class MinAtarCNN(BaseFeaturesExtractor):
        def __init__(self, space: gym.spaces.Box):
            super().__init__(space, 128)
            channels, height, width = space.shape
            self.net = nn.Sequential(
                nn.Conv2d(channels, 16, 3), nn.ReLU(), nn.Flatten(),
                nn.Linear(16 * (height - 2) * (width - 2), 128), nn.ReLU(),
            )  # fmt: skip

        def forward(self, obs: torch.Tensor) -> torch.Tensor:
            return self.net(obs)

    return MinAtarCNN


def make_model(algo: str, env: gym.Env, seed: int, agent_steps: int, action_repeat: int) -> BaseAlgorithm:
    from stable_baselines3 import DQN, SAC

    if algo == "sac":
        return SAC("MlpPolicy", env, seed=seed, device="cpu", verbose=0, **SAC_SETTINGS)
    settings = dict(DQN_SETTINGS, exploration_fraction=exploration_fraction(agent_steps, action_repeat))
    shape = env.observation_space.shape
    if len(shape) == 3 and max(shape[1:]) > 16:
        raise SystemExit(f"error: the DQN peer's network is MinAtar's, for 10x10 grids; {shape} is too large")
    # images: SB3 divides uint8 observations by 255 itself (MinAtar's cells are 0 or 255); the paper's 128
    # units feed the Q-values directly (no further layers: net_arch=[])
    kwargs = {"features_extractor_class": minatar_cnn(), "net_arch": []} if len(shape) == 3 else {}
    return DQN("MlpPolicy", env, seed=seed, device="cpu", verbose=0, policy_kwargs=kwargs, **settings)


def exploration_fraction(agent_steps: int, action_repeat: int) -> float:
    """The share of training over which SB3 anneals DQN's epsilon: EPSILON_FRAMES, or the whole run."""
    return min(1.0, EPSILON_FRAMES / action_repeat / agent_steps)


def sb3_mean_return(model: BaseAlgorithm, vector: gym.vector.VectorEnv, seed: int) -> float:
    """Mean return of one deterministic episode per sub-environment, the first seeded `seed` (as
    agent/evaluate.py plays this agent's evaluations)."""
    obs, _ = vector.reset(seed=seed)
    returns, running = np.zeros(vector.num_envs), np.ones(vector.num_envs, bool)
    while running.any():
        action, _ = model.predict(obs, deterministic=True)
        obs, reward, term, trunc, _ = vector.step(action)
        returns += reward * running
        running &= ~(term | trunc)
    return float(returns.mean())


def run_seed(args: argparse.Namespace, seed: int, console: Console) -> dict:
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.logger import Logger

    env = envs.make(args.env, action_repeat=args.action_repeat)
    discrete = isinstance(env.action_space, gym.spaces.Discrete)
    if (args.algo == "dqn") != discrete:
        raise SystemExit(f"error: {args.algo} needs {'discrete' if args.algo == 'dqn' else 'continuous'} actions")
    agent_steps = args.steps // args.action_repeat
    model = make_model(args.algo, env, seed, agent_steps, args.action_repeat)
    model.set_logger(Logger(None, []))  # SB3's default logger leaves an empty folder in /tmp per run
    vector = envs.make_vector(args.env, args.eval_episodes, action_repeat=args.action_repeat)  # built once
    curve: list[dict] = []
    start = time.perf_counter()
    eval_seconds = 0.0

    def evaluate_at(step: int) -> None:
        nonlocal eval_seconds
        began = time.perf_counter()
        value = sb3_mean_return(model, vector, evaluation_seed(seed, len(curve) + 1, args.eval_episodes))
        eval_seconds += time.perf_counter() - began
        curve.append({"step": step, "seconds": time.perf_counter() - start, "return": value})
        console.log(f"{args.algo} seed {seed}: step {step:>7,}  eval {value:8.1f}  {curve[-1]['seconds']:7.1f} s")

    class Evaluate(BaseCallback):
        def _on_step(self) -> bool:
            while self.num_timesteps * args.action_repeat >= (len(curve) + 1) * args.eval_every:
                evaluate_at((len(curve) + 1) * args.eval_every)
            return True

    model.learn(total_timesteps=agent_steps, callback=Evaluate())
    frames = model.num_timesteps * args.action_repeat
    if not curve or curve[-1]["step"] < frames:  # as the agent's runs, an evaluation at the very end
        evaluate_at(frames)
    seconds = time.perf_counter() - start
    env.close()
    vector.close()
    returns = [point["return"] for point in curve]
    return {
        "seed": seed,
        "env_steps": frames,
        "final": returns[-1],
        "last_20_percent_mean": last_fifth_mean(curve, args.steps),
        # the highest 10-episode mean, unconfirmed (the agent confirms its best on 20 more episodes)
        "max_eval_unconfirmed": max(returns),
        "seconds": seconds,
        "env_steps_per_second": frames / max(seconds - eval_seconds, 1e-9),  # training only
        # the process's peak so far (seeds run one after another, so later seeds include earlier ones)
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "curve": curve,
    }


def last_fifth_mean(curve: list[dict], steps: int) -> float:
    """Mean evaluation over the last 20% of a run's env steps (steps above 0.8 * steps): DreamerV3's published
    score. The agent's benchmarks take it from here too, so that both sides average the same window."""
    return float(np.mean([point["return"] for point in curve if point["step"] > 0.8 * steps]))


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
    if args.steps < args.action_repeat or min(args.eval_every, args.eval_episodes, args.action_repeat) < 1:
        parser.error("--steps must cover one action repeat; --eval-every, --eval-episodes, --action-repeat >= 1")
    set_threads(args.threads)
    console = Console()
    settings = dict(SAC_SETTINGS)
    if args.algo == "dqn":
        fraction = exploration_fraction(args.steps // args.action_repeat, args.action_repeat)
        settings = {**DQN_SETTINGS, "epsilon_frames": EPSILON_FRAMES, "exploration_fraction": fraction}
    for seed in args.seeds:  # one after another, each written as it finishes
        result = run_seed(args, seed, console)
        payload = {"algo": args.algo, "env": args.env, "steps": args.steps, "action_repeat": args.action_repeat,
                   "eval_every": args.eval_every, "eval_episodes": args.eval_episodes, "threads": args.threads,
                   "settings": settings, **result}  # fmt: skip
        out = args.out / f"peer-{args.algo}-{safe_name(args.env)}-seed{seed}.json"
        atomic_write_text(out, json.dumps(payload, indent=1))
        final, late = result["final"], result["last_20_percent_mean"]
        console.print(f"{args.algo} seed {seed}: final {final:.1f}, last 20% of the curve {late:.1f}; wrote {out}")


if __name__ == "__main__":
    main()
