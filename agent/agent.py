"""The public API, in the habits of Stable-Baselines3: create, learn, act, evaluate, save, load."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

import envs
from agent import checkpoint, quantize
from agent.behavior import ActorCritic
from agent.config import RESUMABLE, Config, ConfigError, flatten, from_dict, make_config, set_value, validate
from agent.render import RenderError, to_rgb, upscale
from agent.trainer import Trainer, evaluate
from agent.world_model import Latent, WorldModel

CHECKPOINT_NAMES = ("best", "last")


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


@dataclass
class PolicyState:
    """The recurrent state a policy carries between steps: the latent and the last action taken."""

    latent: Latent
    action: Tensor


class Agent:
    """A world-model agent: a `WorldModel` and an `ActorCritic` built for one environment's spaces.

    >>> agent = Agent.create("CartPole-v1", quantizer="gumbel", train={"steps": 20_000})
    >>> agent.learn()
    >>> action, state = agent.act(obs)            # state=None starts an episode
    >>> action, state = agent.act(next_obs, state)
    >>> agent.save("runs/mine"); agent = Agent.load("runs/mine")
    """

    def __init__(self, config: Config, obs_shape: tuple[int, ...], action_dim: int, discrete: bool):
        self.config = config
        self.obs_shape, self.action_dim, self.discrete = tuple(obs_shape), action_dim, discrete
        self.device = torch.device(config.device)
        torch.manual_seed(config.seed)
        quantizer = quantize.make(config.quantizer, **config.quantizer_options)
        self.world_model = WorldModel(obs_shape, action_dim, config.model, quantizer).to(self.device)
        feat_dim = config.model.deter + quantizer.code_size
        self.actor_critic = ActorCritic(
            feat_dim, action_dim, discrete, config.actor_critic, config.model.hidden, config.model.layers
        ).to(self.device)
        self.generator = torch.Generator(self.device).manual_seed(config.seed)
        self.counters = {"env_steps": 0, "updates": 0, "episodes": 0}
        self.trainer = None

    # --- construction -------------------------------------------------------------------------------

    @classmethod
    def create(
        cls, env_id: str = "CartPole-v1", quantizer: str = "categorical", preset: str = "default", **config: Any
    ) -> Agent:
        """An untrained agent for `env_id`. `config` holds top-level fields (seed, device,
        quantizer_options) and sections as dicts, e.g. model={"deter": 64}, train={"steps": 5000}."""
        return cls.from_config(make_config(preset, flatten(config), env_id=env_id, quantizer=quantizer))

    @classmethod
    def from_config(cls, config: Config) -> Agent:
        """An untrained agent for a validated config, sized for its environment's spaces."""
        return cls(config, *env_spaces(config))

    # --- acting -------------------------------------------------------------------------------------

    def initial_state(self, batch: int) -> PolicyState:
        latent, action = self.world_model.initial(batch)
        return PolicyState(latent, action)

    @torch.inference_mode()
    def policy_step(
        self, obs: np.ndarray, state: PolicyState, is_first: np.ndarray, deterministic: bool
    ) -> tuple[np.ndarray, PolicyState]:
        """Batched acting: obs (N, ...), is_first (N,) -> action vectors (N, A) and the next state."""
        obs_t = torch.as_tensor(obs, device=self.device)
        first = torch.as_tensor(is_first, dtype=torch.bool, device=self.device)
        latent = self.world_model.observe_step(
            state.latent, state.action, obs_t, first, deterministic=deterministic, generator=self.generator
        )
        policy = self.actor_critic.policy(latent.features())
        action = policy.mode() if deterministic else policy.sample(self.generator)
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

    def play(
        self,
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
            env = envs.make(self.config.env_id, render_mode=render, **self.config.env_options())
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
                    action, state = self.act(obs, state)
                    actions.append(state.action[0].cpu().numpy())
                    obs, reward, terminated, truncated, _ = env.step(action)
                    observations.append(obs)
                    rewards.append(float(reward))
            finally:
                env.close()
            out.append(Episode(np.stack(observations), np.stack(actions) if actions else np.zeros((0, self.action_dim)),
                               np.array(rewards, np.float32), frames, bool(terminated), bool(truncated)))  # fmt: skip
        return out

    # --- learning and evaluation ---------------------------------------------------------------------

    def learn(
        self,
        steps: int | None = None,
        run_dir: str | Path | None = None,
        on_log: Callable[[dict[str, Any]], None] | None = None,
    ) -> Agent:
        """Train for `steps` more env steps, or (None) until the run's budget, config.train.steps,
        is reached; collection and updates alternate. With run_dir, writes config.json,
        metrics.jsonl, best/last checkpoints and the replay buffer there."""
        if self.trainer is None:
            self.trainer = Trainer(self, run_dir)
        if steps is None:
            steps = self.config.train.steps - self.counters["env_steps"]
        if steps > 0:
            self.trainer.learn(steps, on_log)
        return self

    @classmethod
    def resume(cls, run_dir: str | Path, overrides: dict[str, Any] | None = None, device: str | None = None) -> Agent:
        """The agent of a run folder, ready to go on training where its last checkpoint left it.

        overrides may change only the keys in config.RESUMABLE (e.g. {"train.steps": 30_000} to
        extend the budget); anything else would not match the checkpoint and is refused. device
        moves the run to another device.
        """
        run_dir = Path(run_dir)
        refused = sorted(set(overrides or {}) - set(RESUMABLE))
        if refused:
            raise ConfigError(
                f"cannot change {', '.join(refused)} when resuming a run; allowed: {', '.join(RESUMABLE)}"
            )
        last = run_dir / "checkpoints" / "last.safetensors"
        if not last.is_file():
            raise checkpoint.CheckpointError(f"{run_dir}: nothing to resume (no checkpoints/last.safetensors)")
        tensors, meta = checkpoint.load(last)
        agent = cls.from_checkpoint(last, tensors, meta, device)
        if "training" not in meta:
            raise checkpoint.CheckpointError(f"{last}: holds no training state to resume from")
        for key, value in (overrides or {}).items():
            set_value(agent.config, key, value)
        validate(agent.config)
        if agent.config.train.steps < agent.counters["env_steps"]:
            raise ConfigError(
                f"train.steps ({agent.config.train.steps:,}) is below the run's env steps "
                f"({agent.counters['env_steps']:,}); give a larger total"
            )
        agent.trainer = Trainer(agent, run_dir)
        training = meta["training"]
        best = run_dir / "checkpoints" / "best.safetensors"
        if best.is_file():  # best may be newer than last if a crash fell between the two writes
            best_eval = checkpoint.metadata(best).get("evaluation", {}).get("eval_return_best")
            if best_eval is not None and (training["best_eval"] is None or best_eval > training["best_eval"]):
                training = {**training, "best_eval": best_eval}
        agent.trainer.restore(tensors, training)
        return agent

    def evaluate(self, episodes: int = 10, seed: int = 0) -> dict[str, Any]:
        """Returns and lengths of `episodes` deterministic episodes (no exploration)."""
        return evaluate(self, episodes, seed)

    # --- persistence --------------------------------------------------------------------------------

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
            "counters": self.counters,
        }

    def save(
        self, path: str | Path, extra: dict[str, Any] | None = None, tensors: dict[str, Tensor] | None = None
    ) -> Path:
        """Save the weights and config. A path ending in .safetensors is the file itself; any other
        path is a folder that receives agent.safetensors. Returns the file written. (extra metadata
        and tensors are the trainer's: its evaluation and training state.)"""
        path = Path(path)
        file = path if path.suffix == ".safetensors" else path / "agent.safetensors"
        checkpoint.save(file, {**self.state_tensors(), **(tensors or {})}, {**self.metadata(), **(extra or {})})
        return file

    def check_env(self, file: Path) -> None:
        """The checkpoint's environment must still have the spaces the networks were built for."""
        obs_shape, action_dim, discrete = env_spaces(self.config)
        if (obs_shape, action_dim, discrete) != (self.obs_shape, self.action_dim, self.discrete):
            kind = "discrete" if discrete else "continuous"
            raise checkpoint.CheckpointError(
                f"{file}: {self.config.env_id} has observations of shape {obs_shape} and {action_dim} {kind} "
                f"actions, but the checkpoint was made for {self.obs_shape} and {self.action_dim}"
            )

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
            agent = cls(config, tuple(meta["obs_shape"]), int(meta["action_dim"]), bool(meta["discrete"]))
            split = {"world_model": {}, "actor_critic": {}}  # other tensors are training state
            for key, value in tensors.items():
                module, _, name = key.partition(".")
                if module in split:
                    split[module][name] = value
            agent.world_model.load_state_dict(split["world_model"])
            agent.actor_critic.load_state_dict(split["actor_critic"])
        except (KeyError, ValueError, RuntimeError, TypeError) as error:
            reason = str(error).splitlines()[0]
            raise checkpoint.CheckpointError(f"{file}: does not match this version of the agent ({reason})") from None
        agent.check_env(file)
        agent.counters.update(meta.get("counters", {}))
        agent.loaded_from = file
        agent.checkpoint_info = meta
        return agent


def env_spaces(config: Config) -> tuple[tuple[int, ...], int, bool]:
    """(observation shape, action vector size, discrete?) of the config's environment."""
    env = envs.make(config.env_id, **config.env_options())
    try:
        return env.observation_space.shape, *envs.action_info(env.action_space)
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


def frame_of(env, obs: np.ndarray) -> np.ndarray:
    """The env's rgb_array frame, or the observation itself for image envs that cannot render
    (MinAtar without its GUI packages), upscaled so small frames stay visible."""
    try:
        frame = env.render()
    except Exception:
        frame = None
    if frame is None:
        if np.ndim(obs) != 3:
            raise RenderError(f"{env.spec.id if env.spec else env}: cannot render rgb_array frames")
        frame = obs
    return upscale(to_rgb(frame))
