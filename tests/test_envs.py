"""Environment creation, checks and conventions."""

import importlib.util
import os
import subprocess
import sys
import warnings
from pathlib import Path

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


# --- custom environments, Dict observations, optional packages -----------------------------------------


def test_module_colon_id_imports_the_module_that_registers_the_env():
    env = envs.make("custom_envs:DictObservations-v0")
    obs, _ = env.reset(seed=0)
    assert obs.shape == (7,) and obs.dtype == np.float32
    with pytest.raises(envs.EnvError, match="cannot import module 'no_such_module'"):
        envs.make("no_such_module:Env-v0")
    with pytest.raises(envs.EnvError, match="unknown environment 'custom_envs:Nope-v0'"):
        envs.make("custom_envs:Nope-v0")
    with pytest.raises(envs.EnvError, match="expected module:EnvId"):
        envs.make(":Env-v0")


def test_dict_observations_of_boxes_are_flattened_in_the_spaces_key_order():
    env = envs.make("custom_envs:DictObservations-v0")
    obs, _ = env.reset(seed=0)
    # gymnasium sorts a Dict's keys: angle (a scalar), arm (2x2, row-major), velocity
    assert obs.tolist() == pytest.approx([0.3, 0.4, 0.5, 0.6, 0.7, 0.1, 0.2])
    assert env.observation_space.shape == (7,)
    with pytest.raises(envs.EnvError, match="observation entry 'camera' is an image"):
        envs.make("custom_envs:DictWithImage-v0")


def test_float64_box_actions_as_dm_control_gives_them_are_rescaled_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # gymnasium warned "overflow encountered in cast" at every make
        env = envs.make("custom_envs:DictContinuous-v0", action_repeat=2)
        env.reset(seed=0)
        _, reward, *_ = env.step(np.full(2, 0.5, np.float32))
    assert env.action_space.low.tolist() == [-1.0, -1.0] and env.action_space.high.tolist() == [1.0, 1.0]
    assert reward == 2.0  # two env steps of reward 1


@pytest.mark.parametrize(
    ("env_id", "message"),
    [
        ("ALE/Pong-v5", "ALE/ environments need an optional package: pip install ale-py"),
        ("dm_control/cartpole-swingup-v0", 'pip install "shimmy[dm-control]" "mujoco<4"'),
        ("Reacher-v2", "a dependency is missing: The mujoco v2 and v3 based environments have been moved"),
        ("phys2d/CartPole-v1", "a dependency is missing: No module named 'jax'"),
        (
            "GymV26Environment-v0",
            'a dependency is missing: To use the gym compatibility environments, run `pip install "shimmy',
        ),
    ],
)
def test_missing_optional_packages_are_named_in_one_line(env_id, message):
    namespace_module = {"ALE": "ale_py", "dm_control": "shimmy"}.get(env_id.split("/")[0])
    if namespace_module and importlib.util.find_spec(namespace_module):
        pytest.skip(f"{namespace_module} is installed here")
    with pytest.raises(envs.EnvError) as error:
        envs.make(env_id)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_pixel_observations_of_envs_that_cannot_render_are_refused_in_one_line():
    with pytest.raises(envs.EnvError, match="cannot render rgb_array frames for pixel observations"):
        envs.make("custom_envs:NoFrames-v0", obs="pixels")


@pytest.mark.skipif(importlib.util.find_spec("minatar") is None, reason="needs minatar")
def test_minatar_with_pixel_observations_says_its_observations_are_images_already():
    with pytest.raises(envs.EnvError, match="its own observations are images already: use --obs state"):
        envs.make("MinAtar/Breakout-v1", obs="pixels")


def test_action_repeat_holds_the_action_and_sums_rewards_until_the_episode_ends():
    env = envs.make("CartPole-v1", action_repeat=3, max_episode_steps=7)
    env.reset(seed=0)
    rewards = [env.step(0)[1] for _ in range(2)]
    assert rewards == [3.0, 3.0]
    _, reward, terminated, truncated, info = env.step(0)  # the 7th env step ends the episode: one step, not three
    assert reward == 1.0 and (terminated or truncated)
    assert info["env_steps"] == 1


@pytest.mark.skipif(importlib.util.find_spec("shimmy") is None, reason='needs pip install -e ".[dmc]"')
@pytest.mark.skipif(not envs.headless_egl(), reason="needs libEGL to render without a display")
def test_dm_control_renders_frames_without_a_display():
    script = ("import envs; env = envs.make('dm_control/cartpole-swingup-v0', render_mode='rgb_array'); "
              "env.reset(seed=0); print(env.render().shape)")  # fmt: skip
    environ = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "MUJOCO_GL")}
    result = subprocess.run([sys.executable, "-c", script], env=environ, capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[1], timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "(240, 320, 3)"


@pytest.mark.skipif(importlib.util.find_spec("minatar") is None, reason="needs minatar")
def test_minatar_episodes_end_at_a_time_limit_even_where_the_game_never_ends():
    env = envs.make("MinAtar/Seaquest-v1")  # staying at the surface (no-op) never ends the game
    env.reset(seed=0)
    steps, terminated, truncated = 0, False, False
    while not (terminated or truncated) and steps <= envs.MINATAR_STEP_LIMIT:
        _, _, terminated, truncated, _ = env.step(0)
        steps += 1
    assert (steps, terminated, truncated) == (envs.MINATAR_STEP_LIMIT, False, True)


class ImageOf(gym.Env):
    """Random bool images of a given shape (MinAtar's dtype), for the layout of ChannelsFirst."""

    def __init__(self, shape):
        self.observation_space = gym.spaces.Box(0, 1, shape, bool)
        self.action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.frame = self.np_random.random(self.observation_space.shape) < 0.5
        return self.frame, {}


@pytest.mark.parametrize(
    ("shape", "channels_last"),
    [((10, 10, 10), True), ((10, 10, 4), True), ((64, 64, 3), True), ((3, 64, 64), False), ((1, 84, 84), False)],
)
def test_images_become_channels_first_including_as_many_channels_as_pixels_a_side(shape, channels_last):
    wrapped = envs.ChannelsFirst(ImageOf(shape))
    obs, _ = wrapped.reset(seed=0)
    raw = wrapped.env.frame
    expected = raw.transpose(2, 0, 1) if channels_last else raw
    assert wrapped.observation_space.shape == expected.shape == obs.shape
    np.testing.assert_array_equal(obs, expected.astype(np.uint8) * 255)


@pytest.mark.skipif(importlib.util.find_spec("minatar") is None, reason="needs minatar")
@pytest.mark.parametrize("game", ["Seaquest", "Breakout"])
def test_minatar_channels_are_the_games_own(game):
    env = envs.make(f"MinAtar/{game}-v1")
    obs, _ = env.reset(seed=0)
    for _ in range(20):
        obs, *_ = env.step(env.action_space.sample())
    state = env.unwrapped.game.state()  # (10, 10, channels) bools
    np.testing.assert_array_equal(obs, state.transpose(2, 0, 1).astype(np.uint8) * 255)


def test_pixel_observations_render_once_per_agent_step_under_action_repeat():
    env = envs.make("custom_envs:CountedFrames-v0", obs="pixels", size=8, action_repeat=3)
    obs, _ = env.reset(seed=0)
    before = env.unwrapped.renders
    for _ in range(4):
        obs, reward, *_ = env.step(0)
        assert reward == 3.0 and obs.shape == (3, 8, 8)
    assert env.unwrapped.renders - before == 4
