"""Evaluation: episodes of a policy (deterministic, or sampled as DreamerV3 does), played as one batch of
environments."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np
import torch

import envs

if TYPE_CHECKING:  # for type hints only: this module needs nothing of the Agent's but its methods
    from agent.agent import Agent


def evaluation_seed(seed: int, evaluation: int, episodes: int) -> int:
    """First episode seed of a run's n-th evaluation: fresh for every evaluation, never a training seed."""
    return 1_000_000 + seed * 10_000 + evaluation * episodes


def confirmation_seed(seed: int, evaluation: int, episodes: int) -> int:
    """First episode seed of the episodes that confirm a run's n-th evaluation before it becomes the best."""
    return 5_000_000 + seed * 100_000 + evaluation * episodes


def evaluation_envs(agent: Agent, episodes: int) -> gym.vector.VectorEnv:
    """`episodes` environments stepped together, for `evaluate(..., env=)` to reuse."""
    return envs.make_vector(agent.config.env_id, episodes, **agent.config.env_options())


def evaluate(
    agent: Agent, episodes: int = 10, seed: int = 0, env: gym.vector.VectorEnv | None = None, sample: bool = False
) -> dict[str, Any]:
    """Returns and lengths of `episodes` episodes with seeds seed, seed + 1, ..., played with the policy's most
    likely actions (no exploration), and for discrete actions the share of the steps that took each action
    (a policy that always takes one action shows at once).

    sample: actions (and the model's codes) drawn from the policy instead, as DreamerV3 evaluates; the
    draws are seeded by `seed` too, and leave the agent's own generator alone.
    env: a vector env of exactly `episodes` sub-environments from `evaluation_envs` (reused between
    calls, so that repeated evaluations do not build new environments); made and closed here if None.
    """
    generator = torch.Generator(agent.device).manual_seed(seed) if sample else None
    own = env is None
    env = evaluation_envs(agent, episodes) if own else env
    if env.num_envs != episodes:
        raise ValueError(f"the evaluation env has {env.num_envs} sub-environments, not {episodes}")
    try:
        obs, _ = env.reset(seed=seed)
        state = agent.initial_state(episodes)
        is_first = np.ones(episodes, bool)
        returns, lengths = np.zeros(episodes), np.zeros(episodes, int)
        running, terminated = np.ones(episodes, bool), np.zeros(episodes, bool)
        action_counts = np.zeros(agent.action_dim)
        while running.any():
            action, state = agent.policy_step(obs, state, is_first, deterministic=not sample, generator=generator)
            action_counts += action[running].sum(0)  # one-hot rows when discrete
            obs, reward, term, trunc, _ = env.step(envs.to_env_action(action, agent.discrete))
            returns += reward * running
            lengths += running
            terminated |= term & running
            running &= ~(term | trunc)
            is_first = np.zeros(episodes, bool)
    finally:
        if own:
            env.close()
    return {
        "env_id": agent.config.env_id,
        "episodes": episodes,
        "seed": seed,
        "sampled": sample,
        "mean_return": float(returns.mean()),
        "std_return": float(returns.std()),
        "min_return": float(returns.min()),
        "max_return": float(returns.max()),
        "mean_length": float(lengths.mean()),
        "returns": returns.tolist(),
        "lengths": lengths.tolist(),
        "terminated": terminated.tolist(),
        "action_share": (action_counts / lengths.sum()).tolist() if agent.discrete else None,
    }
