"""Gymnasium environments with the project's conventions.

- Observations: a Box of vectors (float32).
- Actions: Discrete (the agent emits one-hot vectors) or a bounded Box, rescaled to [-1, 1].
- Termination and truncation stay apart: a time limit truncates (the agent bootstraps), a terminal
  state terminates (it does not).
- Vector environments use Gymnasium's NEXT_STEP autoreset: the step after an episode ends returns
  the reset observation with reward 0 and ignores its action, so every step of every sub-environment
  maps onto one replay step (is_last, then is_first).

Errors that a user can cause (unknown id, unsupported space, missing dependency) raise EnvError with
a one-line message.
"""

from __future__ import annotations

import difflib

import gymnasium as gym
import numpy as np


class EnvError(ValueError):
    """An environment that cannot be used, with the reason in one line."""


def suggest(env_id: str, count: int = 3) -> list[str]:
    """Registered ids close to env_id (case-insensitive)."""
    ids = list(gym.registry)
    lowered = {i.lower(): i for i in ids}
    close = difflib.get_close_matches(env_id.lower(), list(lowered), n=count, cutoff=0.5)
    return [lowered[c] for c in close]


def check_spaces(env_id: str, observation_space: gym.Space, action_space: gym.Space) -> None:
    obs, act = observation_space, action_space
    if not isinstance(obs, gym.spaces.Box) or len(obs.shape) != 1:
        raise EnvError(f"{env_id}: observation space {obs} is not supported; expected a 1-D Box (a vector of numbers)")
    if isinstance(act, gym.spaces.Discrete):
        return
    if isinstance(act, gym.spaces.Box) and len(act.shape) == 1:
        if not (np.isfinite(act.low).all() and np.isfinite(act.high).all()):
            raise EnvError(f"{env_id}: action space {act} is unbounded; the agent needs finite action bounds")
        return
    raise EnvError(f"{env_id}: action space {act} is not supported; expected Discrete or a 1-D Box")


def make(env_id: str, seed: int | None = None, render_mode: str | None = None, **options) -> gym.Env:
    """A single environment with the project's conventions; raises EnvError on bad input."""
    if env_id not in gym.registry:
        close = suggest(env_id)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see gymnasium.registry for the ids"
        raise EnvError(f"unknown environment {env_id!r}{hint}")
    try:
        env = gym.make(env_id, render_mode=render_mode, **options)
    except gym.error.DependencyNotInstalled as error:
        raise EnvError(f"{env_id}: a dependency is missing: {error}") from None
    except TypeError as error:
        raise EnvError(f"{env_id}: bad option: {error}") from None
    check_spaces(env_id, env.observation_space, env.action_space)
    if isinstance(env.action_space, gym.spaces.Box):
        low, high = np.full(env.action_space.shape, -1.0, np.float32), np.full(env.action_space.shape, 1.0, np.float32)
        env = gym.wrappers.RescaleAction(env, low, high)
    env = gym.wrappers.TransformObservation(
        env,
        lambda o: np.asarray(o, np.float32),
        gym.spaces.Box(-np.inf, np.inf, env.observation_space.shape, np.float32),
    )
    if seed is not None:
        env.action_space.seed(seed)
    return env


def make_vector(env_id: str, num_envs: int, mode: str = "sync", **options) -> gym.vector.VectorEnv:
    """`num_envs` copies stepped together (sync: in this process; async: a process each)."""
    make(env_id, **options).close()  # fail fast, in this process, with a clear message
    thunks = [lambda: make(env_id, **options) for _ in range(num_envs)]
    if mode == "async":
        return gym.vector.AsyncVectorEnv(thunks, autoreset_mode=gym.vector.AutoresetMode.NEXT_STEP)
    if mode == "sync":
        return gym.vector.SyncVectorEnv(thunks, autoreset_mode=gym.vector.AutoresetMode.NEXT_STEP)
    raise EnvError(f"vector mode must be sync or async, got {mode!r}")


def action_info(space: gym.Space) -> tuple[int, bool]:
    """(action vector size, discrete?) of a checked action space."""
    if isinstance(space, gym.spaces.Discrete):
        return int(space.n), True
    return int(space.shape[0]), False


def to_env_action(action: np.ndarray, discrete: bool) -> np.ndarray:
    """The agent's action vectors (N, A) -> what the env takes: indices (N,) or boxes in [-1, 1]."""
    return action.argmax(-1) if discrete else np.clip(action, -1.0, 1.0)
