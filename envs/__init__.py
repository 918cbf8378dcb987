"""Gymnasium environments with the project's conventions.

- Observations: vectors (float32, a 1-D Box) or images (uint8, channels first: (C, H, W)).
  obs="pixels" replaces any env's observations by its rgb_array frames resized to size x size;
  image observations of other layouts ((H, W, C), bool) are converted, bool channels to 0/255.
- Dict observations whose entries are Box vectors (dm_control's) become one float32 vector: each
  entry flattened, in the Dict space's key order (gymnasium sorts the keys of a Dict by name unless
  the env built it from an OrderedDict).
- Ids: any registered id; `module:EnvId` imports `module` first (which registers `EnvId`), as
  gymnasium.make does, for custom environments. Namespaces of optional packages (MinAtar/, ALE/,
  dm_control/) are registered on first use, or named with the command that installs them.
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

import ctypes.util
import difflib
import importlib
import logging
import math
import os
import signal
import sys
import threading
import warnings

import gymnasium as gym
import numpy as np

OBS_MODES = ("state", "pixels")

# namespace -> (the module whose import registers its ids, the command that installs it)
OPTIONAL_NAMESPACES = {
    "MinAtar": ("minatar.gym", "pip install --no-deps minatar"),
    "ALE": ("ale_py", "pip install ale-py"),
    "dm_control": ("shimmy", 'pip install "shimmy[dm-control]" "mujoco<4"'),
}


class EnvError(ValueError):
    """An environment that cannot be used, with the reason in one line."""


def suggest(env_id: str, count: int = 3) -> list[str]:
    """Registered ids close to env_id (case-insensitive)."""
    ids = list(gym.registry)
    lowered = {i.lower(): i for i in ids}
    close = difflib.get_close_matches(env_id.lower(), list(lowered), n=count, cutoff=0.5)
    return [lowered[c] for c in close]


def is_image(space: gym.Space) -> bool:
    return isinstance(space, gym.spaces.Box) and len(space.shape) == 3


def check_spaces(env_id: str, observation_space: gym.Space, action_space: gym.Space) -> None:
    obs, act = observation_space, action_space
    if not isinstance(obs, gym.spaces.Box) or len(obs.shape) not in (1, 3):
        raise EnvError(
            f"{env_id}: observation space {obs} is not supported; expected a Box of vectors or of images "
            "(or use --obs pixels for an env that renders rgb_array frames)"
        )
    if isinstance(act, gym.spaces.Discrete):
        if act.start != 0:
            raise EnvError(f"{env_id}: action space {act} starts at {act.start}; only Discrete(n) from 0 is supported")
        return
    if isinstance(act, gym.spaces.Box) and len(act.shape) == 1:
        if not (np.isfinite(act.low).all() and np.isfinite(act.high).all()):
            raise EnvError(f"{env_id}: action space {act} is unbounded; the agent needs finite action bounds")
        return
    raise EnvError(f"{env_id}: action space {act} is not supported; expected Discrete or a 1-D Box")


def headless_egl() -> bool:
    """Whether MuJoCo can render without a display through EGL (Linux with libEGL)."""
    return sys.platform.startswith("linux") and ctypes.util.find_library("EGL") is not None


def register_namespace(namespace: str) -> None:
    """Import the optional package that registers a namespace's ids; EnvError with its install command."""
    module, install = OPTIONAL_NAMESPACES[namespace]
    if namespace == "dm_control" and not has_display() and headless_egl():
        # MuJoCo's default GL backend (GLFW) needs a display: render headless through EGL, as pygame
        # renders with SDL_VIDEODRIVER=dummy (set before dm_control is imported, which reads it once;
        # only where libEGL exists: dm_control would fail to import with a backend it cannot load)
        os.environ.setdefault("MUJOCO_GL", "egl")
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # MinAtar warns at import that its GUI packages are missing: not needed here
    try:
        imported = importlib.import_module(module)
    except ImportError:
        raise EnvError(f"{namespace}/ environments need an optional package: {install}") from None
    finally:
        root.setLevel(level)
    if namespace == "MinAtar":  # MinAtar does not register itself under Gymnasium 1.x
        imported.register_envs()


def registered_id(env_id: str) -> str:
    """The Gymnasium id that `env_id` names, after importing what registers it (see the module docstring);
    EnvError with close matches if there is none."""
    module, sep, name = env_id.partition(":")
    if sep:
        if not module or not name:
            raise EnvError(f"{env_id!r}: expected module:EnvId")
        if os.getcwd() not in sys.path:  # a module beside the user, as `python -m` would find it
            sys.path.append(os.getcwd())
        try:
            importlib.import_module(module)
        except ImportError as error:
            raise EnvError(f"{env_id}: cannot import module {module!r} ({error})") from None
        except Exception as error:  # the user's module failed while importing
            raise EnvError(
                f"{env_id}: importing {module!r} failed: {type(error).__name__}: {first_line(error)}"
            ) from None
    else:
        name = env_id
    namespace = name.split("/")[0] if "/" in name else None
    if name not in gym.registry and namespace in OPTIONAL_NAMESPACES:
        register_namespace(namespace)
    if name not in gym.registry:
        close = suggest(name)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see gymnasium.registry for the ids"
        raise EnvError(f"unknown environment {env_id!r}{hint}")
    return name


def env_name(env: gym.Env) -> str:
    """The id an env was made from, for messages."""
    return env.spec.id if env.spec is not None else str(env)


def has_display() -> bool:
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def first_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


class FlattenDict(gym.ObservationWrapper):
    """Dict observations of Box entries -> one float32 vector, the entries flattened in the space's key order."""

    def __init__(self, env: gym.Env, env_id: str):
        super().__init__(env)
        self.keys = list(env.observation_space.spaces)
        for key, space in env.observation_space.spaces.items():
            if not isinstance(space, gym.spaces.Box) or len(space.shape) > 2:
                kind = f"an image {space}" if is_image(space) else str(space)
                raise EnvError(
                    f"{env_id}: observation entry {key!r} is {kind}; only Dict observations of Box vectors "
                    "can be flattened (or use --obs pixels)"
                )
        size = sum(math.prod(space.shape) for space in env.observation_space.spaces.values())
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (size,), np.float32)

    def observation(self, obs):
        return np.concatenate([np.asarray(obs[key], np.float32).reshape(-1) for key in self.keys])


class ChannelsFirst(gym.ObservationWrapper):
    """Image observations as (C, H, W) uint8; bool channels (MinAtar's) become 0 / 255 (and `binary` says so)."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        space = env.observation_space
        # Gymnasium's images are (H, W, C); one whose last axis is longer than its first is channels-first
        # already. A tie is (H, W, C): MinAtar Seaquest's 10x10 frames have 10 channels.
        self.transpose = space.shape[-1] <= space.shape[0]
        shape = (space.shape[-1], *space.shape[:2]) if self.transpose else space.shape
        self.binary = space.dtype == bool
        self.observation_space = gym.spaces.Box(0, 255, shape, np.uint8)

    def observation(self, obs):
        obs = np.asarray(obs)
        if self.transpose:
            obs = obs.transpose(2, 0, 1)
        return (obs * 255 if self.binary else obs).astype(np.uint8)


class ActionRepeat(gym.Wrapper):
    """Each action held for `repeat` env steps (fewer when the episode ends first), their rewards summed:
    DreamerV3's action repeat for DMC. Scores count the env's own steps: info["env_steps"] says how many
    an agent step took."""

    def __init__(self, env: gym.Env, repeat: int):
        super().__init__(env)
        self.repeat = repeat

    def step(self, action):
        total, taken = 0.0, 0
        while taken < self.repeat:
            obs, reward, terminated, truncated, info = self.env.step(action)
            total, taken = total + float(reward), taken + 1
            if terminated or truncated:
                break
        return obs, total, terminated, truncated, {**info, "env_steps": taken}


class PixelObservation(gym.ObservationWrapper):
    """The env's rgb_array frame, resized to size x size, as (3, size, size) uint8 observations."""

    def __init__(self, env: gym.Env, size: int):
        super().__init__(env)
        self.size = size
        self.observation_space = self.space(size)
        self.frame: np.ndarray | None = None

    @staticmethod
    def space(size: int) -> gym.spaces.Box:
        return gym.spaces.Box(0, 255, (3, size, size), np.uint8)

    def observation(self, obs):
        try:
            frame = self.env.render()
        except Exception as error:  # third-party renderers fail in many ways (MinAtar's needs seaborn)
            raise EnvError(f"{env_name(self.env)}: cannot render rgb_array frames for pixel observations "
                           f"({type(error).__name__}: {first_line(error)}){self.hint()}") from None  # fmt: skip
        if frame is None or np.ndim(frame) != 3:
            raise EnvError(f"{env_name(self.env)}: renders no rgb_array frames for pixel observations{self.hint()}")
        self.frame = np.asarray(frame)
        return resize(self.frame, self.size).transpose(2, 0, 1)

    def hint(self) -> str:
        own = self.env.observation_space
        return "; its own observations are images already: use --obs state" if is_image(own) else ""

    def render(self):
        """The full-size frame of the latest observation: rendered once per step, not again."""
        return self.frame if self.frame is not None else self.env.render()


def resize(frame: np.ndarray, size: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (size, size, 3) uint8, with Pillow's area-averaging filter."""
    try:
        from PIL import Image  # optional
    except ImportError:
        raise EnvError('pixel observations need Pillow: pip install -e ".[video]"') from None
    return np.asarray(Image.fromarray(frame).resize((size, size), Image.Resampling.BOX))


MINATAR_STEP_LIMIT = 10_000


def time_limit(name: str) -> int | None:
    """The env steps after which a registered env's episodes are cut: its own limit, or for MinAtar, which
    registers none, MINATAR_STEP_LIMIT (Seaquest never ends for a policy that stays at the surface, so an
    evaluation would wait forever; 10,000 is four times Freeway's own 2,500-step game)."""
    limit = gym.spec(name).max_episode_steps
    return MINATAR_STEP_LIMIT if limit is None and name.startswith("MinAtar/") else limit


def make(
    env_id: str, render_mode: str | None = None, obs: str = "state", size: int = 64, action_repeat: int = 1, **options
) -> gym.Env:
    """A single environment with the project's conventions; raises EnvError on bad input."""
    if obs not in OBS_MODES:
        raise EnvError(f"obs must be one of {', '.join(OBS_MODES)}, got {obs!r}")
    name = registered_id(env_id)
    if obs == "pixels":
        if render_mode not in (None, "rgb_array"):
            raise EnvError(f"{env_id}: pixel observations need render_mode rgb_array, got {render_mode!r}")
        render_mode = "rgb_array"
    if render_mode == "rgb_array" and not has_display():
        os.environ.setdefault("SDL_VIDEODRIVER", "dummy")  # pygame renders frames without a screen
    if render_mode is not None:  # passed only when asked for: custom envs often take no render_mode
        options["render_mode"] = render_mode
    # gymnasium's warnings while an env is made, wrapped and probed (deprecated versions, its passive checker)
    # would break the one-line errors and clutter every command; the env's own warnings while it runs still show
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if name.startswith("MinAtar/"):
            options.setdefault("max_episode_steps", time_limit(name))
        try:
            env = gym.make(name, **options)
        except (ImportError, gym.error.DependencyNotInstalled) as error:
            raise EnvError(f"{env_id}: a dependency is missing: {first_line(error)}") from None
        except Exception as error:  # a third-party env may fail in any way while it is made
            raise EnvError(f"{env_id}: cannot be made: {type(error).__name__}: {first_line(error)}") from None
        if obs != "pixels" and isinstance(env.observation_space, gym.spaces.Dict):
            env = FlattenDict(env, env_id)
        own_obs = PixelObservation.space(size) if obs == "pixels" else env.observation_space
        check_spaces(env_id, own_obs, env.action_space)
        if isinstance(env.action_space, gym.spaces.Box):
            shape, dtype = env.action_space.shape, env.action_space.dtype  # float32 bounds on a float64 Box warn
            low, high = np.full(shape, -1.0, dtype), np.full(shape, 1.0, dtype)
            env = gym.wrappers.RescaleAction(env, low, high)
        if action_repeat > 1:
            env = ActionRepeat(env, action_repeat)
        if obs == "pixels":  # outside the action repeat: one frame rendered per agent step
            env = PixelObservation(env, size)
            env.reset(seed=0)  # renders a first frame: fails here, with EnvError, if the env cannot
        elif is_image(env.observation_space):
            env = ChannelsFirst(env)
        else:
            space = gym.spaces.Box(-np.inf, np.inf, env.observation_space.shape, np.float32)
            env = gym.wrappers.TransformObservation(env, lambda o: np.asarray(o, np.float32), space)
    return env


def binary_image(env: gym.Env) -> bool:
    """Whether an env from `make` shows images of cells that are only on or off (MinAtar's bool channels):
    `make` wraps image observations in ChannelsFirst last."""
    return isinstance(env, ChannelsFirst) and env.binary


def make_vector(env_id: str, num_envs: int, mode: str = "sync", **options) -> gym.vector.VectorEnv:
    """`num_envs` copies stepped together (sync: in this process; async: a process each)."""
    make(env_id, **options).close()  # fail fast, in this process, with a clear message
    thunks = [lambda: make(env_id, **options) for _ in range(num_envs)]
    if mode == "async":
        # the workers ignore Ctrl-C (the terminal sends it to the whole process group): the trainer in the
        # main process decides what a Ctrl-C does, and needs its workers alive to do it
        main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
        try:
            return gym.vector.AsyncVectorEnv(thunks, autoreset_mode=gym.vector.AutoresetMode.NEXT_STEP)
        finally:
            if main:
                signal.signal(signal.SIGINT, previous)
    if mode == "sync":
        return gym.vector.SyncVectorEnv(thunks, autoreset_mode=gym.vector.AutoresetMode.NEXT_STEP)
    raise EnvError(f"vector mode must be sync or async, got {mode!r}")


def episode_steps(env_id: str, action_repeat: int = 1) -> int:
    """The agent steps in a full episode: the registered time limit (1,000 env steps if none, as
    dm_control's tasks) over the action repeat."""
    limit = time_limit(registered_id(env_id)) or 1000
    return max(1, math.ceil(limit / action_repeat))


def action_info(space: gym.Space) -> tuple[int, bool]:
    """(action vector size, discrete?) of a checked action space."""
    if isinstance(space, gym.spaces.Discrete):
        return int(space.n), True
    return int(space.shape[0]), False


def to_env_action(action: np.ndarray, discrete: bool) -> np.ndarray:
    """The agent's action vectors (N, A) -> what the env takes: indices (N,) or boxes in [-1, 1]."""
    return action.argmax(-1) if discrete else np.clip(action, -1.0, 1.0)
