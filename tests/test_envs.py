"""Environment creation, checks and conventions."""

import gymnasium as gym
import numpy as np
import pytest

import envs


def test_unknown_ids_fail_with_close_matches():
    with pytest.raises(envs.EnvError, match=r"unknown environment 'Cartpole-v1'; did you mean CartPole-v1"):
        envs.make("Cartpole-v1")
    with pytest.raises(envs.EnvError, match="unknown environment 'zzzz'"):
        envs.make("zzzz")


@pytest.mark.parametrize(
    ("env_id", "what"),
    [("FrozenLake-v1", "observation space Discrete"), ("Blackjack-v1", "observation space Tuple")],
)
def test_unsupported_spaces_are_named(env_id, what):
    with pytest.raises(envs.EnvError, match=what):
        envs.make(env_id)


def test_unsupported_action_spaces_are_named():
    with pytest.raises(envs.EnvError, match="action space MultiBinary"):
        envs.check_spaces("X", gym.spaces.Box(-1, 1, (3,)), gym.spaces.MultiBinary(4))
    with pytest.raises(envs.EnvError, match="unbounded"):
        envs.check_spaces("X", gym.spaces.Box(-1, 1, (3,)), gym.spaces.Box(-np.inf, np.inf, (2,)))


def test_box_actions_are_rescaled_to_unit_range_and_observations_are_float32():
    env = envs.make("Pendulum-v1")
    assert env.action_space.low.tolist() == [-1.0] and env.action_space.high.tolist() == [1.0]
    obs, _ = env.reset(seed=0)
    assert obs.dtype == np.float32
    assert envs.action_info(env.action_space) == (1, False)
    assert envs.action_info(envs.make("CartPole-v1").action_space) == (2, True)


def test_time_limits_truncate_and_failures_terminate():
    env = envs.make("CartPole-v1", max_episode_steps=5)
    env.reset(seed=0)
    results = [env.step(0)[2:4] for _ in range(5)]
    assert results[-1] == (False, True)  # truncated, not terminated
    env = envs.make("CartPole-v1")
    env.reset(seed=0)
    terminated = truncated = False
    while not (terminated or truncated):
        _, _, terminated, truncated, _ = env.step(1)  # always push right: the pole falls
    assert terminated and not truncated


def test_vector_envs_autoreset_on_the_next_step():
    env = envs.make_vector("CartPole-v1", 2, max_episode_steps=3)
    env.reset(seed=0)
    dones = [env.step(np.zeros(2, int))[3] for _ in range(4)]
    assert dones[2].all() and not dones[3].any()  # the 4th step is the reset step
    with pytest.raises(envs.EnvError, match="vector mode"):
        envs.make_vector("CartPole-v1", 2, mode="threads")
