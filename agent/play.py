"""Playing episodes with a policy and recording them: observations, actions, rewards and frames.

Used by `agent watch` (videos, the terminal, a window) and `agent dream` (the real episode beside
the imagined one).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import gymnasium as gym
import numpy as np

import envs
from agent.render import RenderError, obs_to_rgb, to_rgb, upscale

if TYPE_CHECKING:
    from agent.agent import Agent


@dataclass
class Episode:
    """One played episode: every observation (the last one included), the actions and rewards between
    them, rendered frames if asked for, and how it ended."""

    obs: np.ndarray  # (T + 1, *obs_shape)
    actions: np.ndarray  # (T, A) the agent's action vectors
    rewards: np.ndarray  # (T,)
    frames: list[np.ndarray]  # T + 1 frames (H, W, 3) uint8, or none
    terminated: bool
    truncated: bool

    @property
    def length(self) -> int:
        return len(self.rewards)

    @property
    def total_reward(self) -> float:
        return float(self.rewards.sum())

    @property
    def ending(self) -> str:
        return "terminated" if self.terminated else "truncated" if self.truncated else "stopped"


def play(
    agent: Agent,
    episodes: int = 1,
    seed: int = 0,
    render: str | None = None,
    max_steps: int | None = None,
    on_frame: Callable[[np.ndarray, int, int, float], None] | None = None,
) -> list[Episode]:
    """Play episodes with the deterministic policy. render="rgb_array" records frames (and calls
    on_frame(frame, episode, step, return) with each); "human" shows the env's own window."""
    out = []
    for number in range(episodes):
        env = envs.make(agent.config.env_id, render_mode=render, **agent.config.env_options())
        try:
            obs, _ = env.reset(seed=seed + number)
            observations, actions, rewards, frames = [obs], [], [], []
            state, terminated, truncated = None, False, False
            while True:  # a frame of every observation, the last one included
                if render == "rgb_array":
                    frames.append(frame_of(env, obs))
                    if on_frame is not None:
                        on_frame(frames[-1], number, len(rewards), float(sum(rewards)))
                if terminated or truncated or (max_steps is not None and len(rewards) >= max_steps):
                    break
                action, state = agent.act(obs, state)
                actions.append(state.action[0].cpu().numpy())
                obs, reward, terminated, truncated, _ = env.step(action)
                observations.append(obs)
                rewards.append(float(reward))
        finally:
            env.close()
        out.append(Episode(np.stack(observations), np.stack(actions) if actions else np.zeros((0, agent.action_dim)),
                           np.array(rewards, np.float32), frames, bool(terminated), bool(truncated)))  # fmt: skip
    return out


def frame_of(env: gym.Env, obs: np.ndarray) -> np.ndarray:
    """The env's rgb_array frame, or the (C, H, W) observation itself for image envs that cannot render
    (MinAtar without its GUI packages), upscaled so that small frames stay visible."""
    try:
        frame = env.render()
    except Exception:  # third-party renderers fail in many ways (MinAtar's needs seaborn)
        frame = None
    if frame is not None:
        return upscale(to_rgb(frame))
    if np.ndim(obs) != 3:
        raise RenderError(f"{envs.env_name(env)}: cannot render rgb_array frames")
    return upscale(obs_to_rgb(obs))
