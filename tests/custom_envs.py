"""Custom environments that register themselves on import, for `module:EnvId` and Dict observations."""

from typing import ClassVar

import gymnasium as gym
import numpy as np


class DictObservations(gym.Env):
    """Observations as a Dict of Box entries, as dm_control tasks give them (through shimmy)."""

    def __init__(self, with_image: bool = False, continuous: bool = False):
        spaces = {"velocity": gym.spaces.Box(-1, 1, (2,)), "angle": gym.spaces.Box(-1, 1, ()),
                  "arm": gym.spaces.Box(-1, 1, (2, 2))}  # fmt: skip
        if with_image:
            spaces["camera"] = gym.spaces.Box(0, 255, (8, 8, 3), np.uint8)
        self.observation_space = gym.spaces.Dict(spaces)
        # dm_control's actions are float64 Boxes
        self.action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float64) if continuous else gym.spaces.Discrete(2)
        self.t = 0

    def observation(self):
        obs = {"velocity": np.array([0.1, 0.2], np.float32), "angle": np.array(0.3, np.float32),
               "arm": np.array([[0.4, 0.5], [0.6, 0.7]], np.float32)}  # fmt: skip
        if "camera" in self.observation_space.spaces:
            obs["camera"] = np.zeros((8, 8, 3), np.uint8)
        return obs

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self.observation(), {}

    def step(self, action):
        self.t += 1
        return self.observation(), 1.0, False, self.t >= 20, {}


class NoFrames(gym.Env):
    """An env that cannot render frames."""

    metadata: ClassVar[dict] = {"render_modes": ["rgb_array"]}
    observation_space = gym.spaces.Box(-1, 1, (3,))
    action_space = gym.spaces.Discrete(2)

    def __init__(self, render_mode=None):
        self.render_mode = render_mode

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(3, np.float32), {}

    def step(self, action):
        return np.zeros(3, np.float32), 0.0, True, False, {}

    def render(self):
        raise NotImplementedError("no frames here")


class CountedFrames(NoFrames):
    """Renders small black frames and counts them; every step rewards 1, and episodes never end."""

    renders = 0

    def step(self, action):
        return np.zeros(3, np.float32), 1.0, False, False, {}

    def render(self):
        self.renders += 1
        return np.zeros((8, 8, 3), np.uint8)


class FiveStepEpisodes(gym.Env):
    """Episodes of exactly five steps: an odd length, which an action repeat of 2 cuts short."""

    observation_space = gym.spaces.Box(-1, 1, (3,))
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(3, np.float32), {}

    def step(self, action):
        self.t += 1
        return np.zeros(3, np.float32), 1.0, self.t >= 5, False, {}


class CellFrames(gym.Env):
    """10x10 images with 3 channels laid out (H, W, C), as MinAtar's are: bool cells, or uint8 pixels."""

    action_space = gym.spaces.Discrete(2)

    def __init__(self, dtype=bool):
        self.observation_space = gym.spaces.Box(0, 1, (10, 10, 3), dtype)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros((10, 10, 3), self.observation_space.dtype), {}

    def step(self, action):
        return np.ones((10, 10, 3), self.observation_space.dtype), 0.0, True, False, {}


gym.register("DictObservations-v0", entry_point=DictObservations)
gym.register("DictWithImage-v0", entry_point=lambda: DictObservations(with_image=True))
gym.register("DictContinuous-v0", entry_point=lambda: DictObservations(continuous=True))
gym.register("NoFrames-v0", entry_point=NoFrames)
gym.register("CountedFrames-v0", entry_point=CountedFrames)
gym.register("FiveStepEpisodes-v0", entry_point=FiveStepEpisodes)
gym.register("BoolCells-v0", entry_point=CellFrames)
gym.register("ByteCells-v0", entry_point=lambda: CellFrames(np.uint8))
