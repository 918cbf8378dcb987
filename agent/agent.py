"""The policy: a world model and an actor-critic built for one environment's spaces; acting and weights.

Training lives in `agent.trainer` (which imports this module, never the reverse), evaluation in
`agent.evaluate`, episodes with frames in `agent.play`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

import envs
from agent import checkpoint, quantize
from agent.behavior import ActorCritic
from agent.config import Config, ConfigError, flatten, from_dict, kinds_of_observation, make_config, parse_device
from agent.nets import use_bf16
from agent.world_model import Latent, WorldModel

CHECKPOINT_NAMES = ("best", "last")


@dataclass
class PolicyState:
    """The recurrent state a policy carries between steps: the latent and the last action taken."""

    latent: Latent
    action: Tensor


class Agent:
    """A world-model agent's policy: a `WorldModel` and an `ActorCritic` for one environment's spaces.

    >>> agent = Agent.load("runs/mine")              # a run folder, a saved folder or a .safetensors file
    >>> action, state = agent.act(obs)               # state=None starts an episode
    >>> action, state = agent.act(next_obs, state)
    >>> agent.save("mine.safetensors")

    Train one with `agent.Trainer`.
    """

    def __init__(self, config: Config, obs_shape: tuple[int, ...], action_dim: int, discrete: bool):
        self.config = config
        self.obs_shape, self.action_dim, self.discrete = tuple(obs_shape), action_dim, discrete
        self.device = check_device(config.device)
        # the weights are initialised from the config's seed without touching the caller's RNGs
        with torch.random.fork_rng(devices=range(torch.cuda.device_count()) if self.device.type == "cuda" else []):
            torch.manual_seed(config.seed)
            quantizer = quantize.make(config.quantizer, **config.quantizer_options)
            bf16 = use_bf16(config.model.precision, self.device)
            self.world_model = WorldModel(obs_shape, action_dim, config.model, quantizer, bf16).to(self.device)
            feat_dim = config.model.deter + quantizer.code_size
            self.actor_critic = ActorCritic(
                feat_dim, action_dim, discrete, config.actor_critic, config.model.hidden, config.model.layers, bf16
            ).to(self.device)
        self.generator = torch.Generator(self.device).manual_seed(config.seed)  # for sampled actions
        self.loaded_from: Path | None = None  # the checkpoint file, for agents made by `load`
        self.trained_env_steps = 0  # env steps of training behind the loaded weights (from the checkpoint)

    @classmethod
    def create(
        cls, env_id: str = "CartPole-v1", quantizer: str = "categorical", preset: str = "default", **config: Any
    ) -> Agent:
        """An untrained agent for `env_id`. `config` holds top-level fields (seed, device, threads,
        quantizer_options) and sections as dicts, e.g. model={"deter": 64}, train={"steps": 5000}."""
        return cls.from_config(make_env_config(preset, flatten(config), env_id=env_id, quantizer=quantizer))

    @classmethod
    def from_config(cls, config: Config) -> Agent:
        """An untrained agent for a validated config, sized for its environment's spaces."""
        spaces = env_spaces(config)
        return cls(config, spaces.obs_shape, spaces.action_dim, spaces.discrete)

    # --- acting -------------------------------------------------------------------------------------

    def initial_state(self, batch: int) -> PolicyState:
        latent, action = self.world_model.initial(batch)
        return PolicyState(latent, action)

    @torch.inference_mode()
    def policy_step(
        self,
        obs: np.ndarray,
        state: PolicyState,
        is_first: np.ndarray,
        deterministic: bool,
        noise: np.ndarray | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[np.ndarray, PolicyState]:
        """Batched acting: obs (N, ...), is_first (N,) -> action vectors (N, A) and the next state.
        noise (N, A): the standard-normal noise of sampled actions (continuous: added to the mean; discrete:
        Gumbel-max), if not drawn here; generator: what draws the samples (the agent's own by default)."""
        generator = self.generator if generator is None else generator
        obs_t = torch.as_tensor(obs, device=self.device)
        first = torch.as_tensor(is_first, dtype=torch.bool, device=self.device)
        latent = self.world_model.observe_step(
            state.latent, state.action, obs_t, first, deterministic=deterministic, generator=generator
        )
        policy = self.actor_critic.policy(latent.features())
        if deterministic:
            action = policy.mode()
        elif noise is not None:  # on the CPU: the policy moves it (the Gumbel transform runs on the CPU)
            action = policy.sample(noise=torch.as_tensor(noise))
        else:
            action = policy.sample(generator)
        return action.cpu().numpy(), PolicyState(latent, action)

    def act(
        self,
        obs: np.ndarray,
        state: PolicyState | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = True,
    ) -> tuple[np.ndarray, PolicyState]:
        """The action(s) the environment takes for one observation or a batch of them.

        state=None starts new episodes; episode_start (N,) marks rows that start one mid-batch.
        Returns (action, state): pass the state back with the next observation.
        """
        obs = np.asarray(obs, dtype=np.uint8 if len(self.obs_shape) == 3 else np.float32)
        single = obs.shape == self.obs_shape
        if not single and obs.shape[1:] != self.obs_shape:
            raise ValueError(f"observation shape {obs.shape} does not match the agent's {self.obs_shape}")
        batch = obs[None] if single else obs
        if state is None:
            state = self.initial_state(len(batch))
            is_first = np.ones(len(batch), bool)
        else:
            is_first = np.zeros(len(batch), bool) if episode_start is None else np.asarray(episode_start, bool)
        action, state = self.policy_step(batch, state, is_first, deterministic)
        env_action = envs.to_env_action(action, self.discrete)
        return (env_action[0] if single else env_action), state

    # --- weights ------------------------------------------------------------------------------------

    def state_tensors(self) -> dict[str, Tensor]:
        tensors = {f"world_model.{k}": v for k, v in self.world_model.state_dict().items()}
        tensors.update({f"actor_critic.{k}": v for k, v in self.actor_critic.state_dict().items()})
        return tensors

    def metadata(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(),
            "obs_shape": list(self.obs_shape),
            "action_dim": self.action_dim,
            "discrete": self.discrete,
        }

    def save(
        self, path: str | Path, extra: dict[str, Any] | None = None, tensors: dict[str, Tensor] | None = None
    ) -> Path:
        """Save the weights and config. A path ending in .safetensors is the file itself; any other
        path is a folder that receives agent.safetensors. Returns the file written. `extra` metadata
        (JSON) and `tensors` are stored beside them (the trainer's counters and training state)."""
        path = Path(path)
        file = path if path.suffix == ".safetensors" else path / "agent.safetensors"
        checkpoint.save(file, {**self.state_tensors(), **(tensors or {})}, {**self.metadata(), **(extra or {})})
        return file

    @classmethod
    def load(cls, path: str | Path, which: str = "best", device: str | None = None) -> Agent:
        """Load a saved agent: a .safetensors file, a folder written by save(), or a run folder
        (its `which` checkpoint, best or last, falling back to the other)."""
        file = find_checkpoint(Path(path), which)
        tensors, meta = checkpoint.load(file)
        return cls.from_checkpoint(file, tensors, meta, device)

    @classmethod
    def from_checkpoint(
        cls, file: Path, tensors: dict[str, Tensor], meta: dict[str, Any], device: str | None = None
    ) -> Agent:
        """An agent from a checkpoint's contents; CheckpointError if they do not fit this agent."""
        try:
            config = from_dict(meta["config"])
            if device is not None:
                config.device = device
        except (KeyError, ValueError, TypeError) as error:
            raise checkpoint.CheckpointError(
                f"{file}: its config is not this version's ({envs.first_line(error)})"
            ) from None
        check_device(config.device)  # a checkpoint from a GPU machine, opened on another
        try:
            agent = cls(config, tuple(meta["obs_shape"]), int(meta["action_dim"]), bool(meta["discrete"]))
            split: dict[str, dict[str, Tensor]] = {"world_model": {}, "actor_critic": {}}  # others: training state
            for key, value in tensors.items():
                module, _, name = key.partition(".")
                if module in split:
                    split[module][name] = value
            agent.world_model.load_state_dict(split["world_model"])
            agent.actor_critic.load_state_dict(split["actor_critic"])
        except (KeyError, ValueError, RuntimeError, TypeError) as error:
            raise checkpoint.CheckpointError(
                f"{file}: does not match this version of the agent ({envs.first_line(error)})"
            ) from None
        agent.check_env(file)
        agent.loaded_from = file
        agent.trained_env_steps = int(meta.get("counters", {}).get("env_steps", 0))
        return agent

    def check_env(self, file: Path) -> None:
        """The checkpoint's environment must still have the spaces the networks were built for."""
        obs_shape, action_dim, discrete, _ = env_spaces(self.config)
        if (obs_shape, action_dim, discrete) != (self.obs_shape, self.action_dim, self.discrete):
            kind = "discrete" if discrete else "continuous"
            raise checkpoint.CheckpointError(
                f"{file}: {self.config.env_id} has observations of shape {obs_shape} and {action_dim} {kind} "
                f"actions, but the checkpoint was made for {self.obs_shape} and {self.action_dim}"
            )


def check_device(name: str) -> torch.device:
    """The device `name` names; ConfigError unless this machine has it (a run or checkpoint may come from another)."""
    device = parse_device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device}: no CUDA device is available here (torch {torch.__version__}); use cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {device}: no MPS device is available here; use cpu")
    return device


def make_env_config(preset: str = "default", overrides: dict[str, Any] | None = None, **top: Any) -> Config:
    """`config.make_config` with the defaults that the environment's observations and actions choose
    (config.OBS_DEFAULTS, config.SPACE_DEFAULTS); the environment is made once to read its spaces."""
    spaces = env_spaces(make_config(preset, overrides, **top))
    action_kind = "discrete" if spaces.discrete else "continuous"
    kinds = kinds_of_observation(spaces.obs_shape, spaces.binary_image)
    return make_config(preset, overrides, action_kind=action_kind, observation_kinds=kinds, **top)


class EnvSpaces(NamedTuple):
    """What the networks and the env-chosen defaults need to know of an environment."""

    obs_shape: tuple[int, ...]
    action_dim: int  # size of the action vector (one-hot for discrete actions)
    discrete: bool
    binary_image: bool  # images of cells that are only on or off (envs.binary_image)


def env_spaces(config: Config) -> EnvSpaces:
    """The spaces of the config's environment (made once, then closed)."""
    env = envs.make(config.env_id, **config.env_options())
    try:
        return EnvSpaces(env.observation_space.shape, *envs.action_info(env.action_space), envs.binary_image(env))
    finally:
        env.close()


def find_checkpoint(path: Path, which: str = "best") -> Path:
    """The checkpoint file a path names; CheckpointError (one line) if there is none."""
    if which not in CHECKPOINT_NAMES:
        raise checkpoint.CheckpointError(f"checkpoint must be one of {', '.join(CHECKPOINT_NAMES)}, got {which!r}")
    if path.is_file():
        return path
    if not path.exists():
        raise checkpoint.CheckpointError(f"{path}: no such file or folder")
    order = [which] + [n for n in CHECKPOINT_NAMES if n != which]
    candidates = [path / "checkpoints" / f"{name}.safetensors" for name in order] + [path / "agent.safetensors"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise checkpoint.CheckpointError(f"{path}: no checkpoint found (looked for checkpoints/best|last.safetensors)")
