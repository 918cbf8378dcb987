"""The training loop: collect -> world-model update -> imagine -> actor-critic update -> log/checkpoint.

Updates follow the train ratio: after n agent steps (env steps / action_repeat), n * train_ratio /
(batch * seq_len) updates have been made, so every stored step is replayed about train_ratio times.
The first `prefill` env steps use random actions. Evaluation runs deterministic episodes in separate
environments every `eval_every` env steps; the run keeps its best evaluated checkpoint beside its last.

State that an update changes besides the weights (the return normalisation's percentiles, VQ's
codebook statistics) is committed only after the update's losses and gradients are known to be
finite; an update that is not is skipped whole.

A run folder (see runs.py) can be resumed after anything, a crash included: `last.safetensors` holds
the weights and the whole training state (optimisers, return normalisation, counters, RNG states),
the replay buffer lives in chunk files beside it (see replay.py), and the metric log is cut back to
the checkpoint's step. Episodes in progress at the checkpoint are not continued: the environments
start new ones. Ctrl-C writes a checkpoint before it stops training.
"""

from __future__ import annotations

import contextlib
import importlib.util
import signal
import threading
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

import envs
from agent import checkpoint
from agent.agent import Agent
from agent.config import RESUMABLE, Config, ConfigError, from_dict, set_value, validate
from agent.evaluate import confirmation_seed, evaluate, evaluation_envs, evaluation_seed
from agent.noise import ActionNoise
from agent.replay import Replay
from agent.runs import RunFolder, RunFolderError
from agent.world_model import Latent


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. it diverged); the message says why and what was kept."""


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped at a user's Ctrl-C, after writing a checkpoint (when it has a run folder)."""

    def __init__(self, step: int):
        super().__init__(f"interrupted at env step {step:,}")
        self.step = step


def optimizer_state(prefix: str, optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list]:
    """An optimiser's state as flat tensors and JSON-able param groups (no pickling)."""
    state = optimizer.state_dict()
    tensors = {f"{prefix}.{i}.{k}": v for i, s in state["state"].items() for k, v in s.items()}
    return tensors, state["param_groups"]


def load_optimizer_state(prefix: str, optimizer: torch.optim.Optimizer, tensors: dict, groups: list) -> None:
    state: dict[int, dict[str, torch.Tensor]] = defaultdict(dict)
    for key, value in tensors.items():
        if key.startswith(prefix + "."):
            index, _, name = key[len(prefix) + 1 :].partition(".")
            state[int(index)][name] = value
    optimizer.load_state_dict({"state": dict(state), "param_groups": groups})


def updates_due(config: Config, env_steps: int) -> float:
    """The updates a run has made after `env_steps` (it updates while its count is below this): the train
    ratio counts replayed steps per stored (agent) step, taken here as env steps / action_repeat (the same but
    where an episode ended inside a repeat: a function of the count alone, so a resumed run owes the same)."""
    t = config.train
    return env_steps // config.action_repeat * t.train_ratio / (t.batch * t.seq_len)


def next_due(now: int, every: int) -> int | None:
    """The first multiple of `every` after `now` (None when `every` is 0: never)."""
    return (now // every + 1) * every if every else None


def all_finite(*values: torch.Tensor) -> bool:
    """Whether every element of every tensor is finite (one host sync for all of them)."""
    return bool(torch.isfinite(torch.cat([v.detach().float().reshape(-1) for v in values])).all())


def to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """A replay array on the device; to a GPU through pinned memory, so the device copy runs asynchronously."""
    tensor = torch.from_numpy(array)
    if device.type != "cuda":
        return tensor
    return tensor.pin_memory().to(device, non_blocking=True)


def tensorboard_writer(folder: Path, step: int) -> Any:
    """A TensorBoard writer for a run's metric lines. Events after `step` (the checkpoint a run resumes from:
    written before a crash, and written again now) are purged, so the curves stay continuous."""
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(folder), purge_step=step + 1)


def set_threads(threads: int) -> None:
    """torch's intra-op thread count (0 leaves torch's default, one per core). Small models gain nothing
    from a second thread, and lose 10-20x when other work shares the cores (README: Threads)."""
    if threads > 0 and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


class Trainer:
    """Trains an `Agent`: environments, replay, optimisers, counters, evaluation and the choice of the
    best policy, the metric log and the checkpoints of a run folder.

    >>> trainer = Trainer(Agent.create("CartPole-v1", train={"steps": 15_000}), run_dir="runs/mine")
    >>> trainer.learn(on_log=print)          # to the run's budget; learn(5_000) trains 5k steps more
    >>> trainer.agent.act(obs)               # the trained policy
    >>> trainer = Trainer.resume("runs/mine", {"train.steps": 30_000})

    run_dir must not hold a run yet (resume one with `Trainer.resume`); it is created here, after the
    agent (and so its config and environment) has been validated, and locked until `close()`.
    """

    def __init__(self, agent: Agent, run_dir: str | Path | RunFolder | None = None):
        self.agent = agent
        cfg = agent.config
        if cfg.train.tensorboard and importlib.util.find_spec("tensorboard") is None:
            raise ConfigError('train.tensorboard needs the tensorboard package: pip install -e ".[tb]"')
        set_threads(cfg.threads)
        self.env = envs.make_vector(cfg.env_id, cfg.train.envs, mode=cfg.train.vector, **cfg.env_options())
        images = len(agent.obs_shape) == 3
        self.replay = Replay(
            cfg.train.replay_capacity, cfg.train.envs, agent.obs_shape, agent.action_dim,
            obs_dtype=np.uint8 if images else np.float32, recency=cfg.train.recency, seed=cfg.seed,
        )  # fmt: skip
        wm, ac = agent.world_model, agent.actor_critic
        a = cfg.actor_critic
        self.optimizers = {
            "wm": torch.optim.Adam(wm.parameters(), lr=cfg.model.lr, eps=cfg.model.eps),
            "actor": torch.optim.Adam(ac.actor.parameters(), lr=a.actor_lr, eps=a.eps),
            "critic": torch.optim.Adam(ac.critic.parameters(), lr=a.critic_lr, eps=a.eps),
        }
        self.generator = torch.Generator(agent.device).manual_seed(cfg.seed + 1)  # replay starts, imagination
        self.rng = np.random.default_rng(cfg.seed)  # prefill actions, action noise
        # discrete actions at color 0 are sampled from the categorical directly (the same distribution)
        color = cfg.train.discrete_noise_color if agent.discrete else cfg.train.noise_color
        self.action_noise = None if agent.discrete and color == 0 else ActionNoise(
            color, cfg.train.envs, agent.action_dim, envs.episode_steps(cfg.env_id, cfg.action_repeat),
            self.rng,
        )  # fmt: skip
        self.counters = {"env_steps": 0, "updates": 0, "episodes": 0}
        self.best_eval = -np.inf
        self.evaluations = 0
        self.resumes = 0
        self.restarted = False  # resumed from the config of a run that had no checkpoint yet
        self.nonfinite = {"total": 0, "in_a_row": 0}
        self.recent_returns: list[float] = []
        self.sums: dict[str, torch.Tensor | float] = defaultdict(float)
        self.sum_count = 0
        self.update_seconds, self.update_calls = 0.0, 0  # time in update() since the last metric line
        self.seconds_before = 0.0  # wall-clock of earlier learn() calls and sessions of a resumed run
        self.start_time = time.perf_counter()
        self.last_log = (0.0, 0)  # (seconds, env steps) at the previous log line
        self.eval_envs: dict[int, gym.vector.VectorEnv] = {}
        self.stop_requested = False
        self.tensorboard: Any = None  # a SummaryWriter once learn() runs with train.tensorboard
        self.run: RunFolder | None = None
        try:
            self.start_episodes(cfg.seed)
            self.run = run_dir if isinstance(run_dir, RunFolder) or run_dir is None else RunFolder(run_dir, new=True)
            if self.run is not None:
                self.run.write_config(cfg.to_json())
                self.replay.persist(self.run.replay)
        except BaseException:
            self.env.close()  # a run folder opened here is released here; one passed in, by its caller
            if self.run is not None and not isinstance(run_dir, RunFolder):
                self.run.close()
            raise

    @classmethod
    def create(
        cls,
        env_id: str = "CartPole-v1",
        quantizer: str = "categorical",
        preset: str = "default",
        run_dir: str | Path | None = None,
        **config: Any,
    ) -> Trainer:
        """A trainer of a new agent: `Trainer(Agent.create(env_id, quantizer, preset, **config), run_dir)`."""
        return cls(Agent.create(env_id, quantizer, preset, **config), run_dir)

    @classmethod
    def resume(cls, run_dir: str | Path, overrides: dict[str, Any] | None = None, device: str | None = None) -> Trainer:
        """The trainer of a run folder, ready to go on where its last checkpoint left it. A run that has
        no checkpoint yet (it was stopped early) starts again from its config.json (`restarted` is True).

        overrides may change only the keys in config.RESUMABLE (e.g. {"train.steps": 30_000} to extend
        the budget); anything else would not match the checkpoint and is refused. device moves the run.
        """
        refused = sorted(set(overrides or {}) - set(RESUMABLE))
        if refused:
            raise ConfigError(
                f"cannot change {', '.join(refused)} when resuming a run; allowed: {', '.join(RESUMABLE)}"
            )
        run = RunFolder(run_dir, new=False)
        try:
            last = run.checkpoint("last")
            if last.is_file():
                tensors, meta = checkpoint.load(last)
                if "training" not in meta or "counters" not in meta:
                    raise checkpoint.CheckpointError(f"{last}: holds no training state to resume from")
                agent = Agent.from_checkpoint(last, tensors, meta, device)
            else:
                try:
                    config = from_dict(run.read_config())
                except ConfigError as error:
                    raise RunFolderError(f"{run.path / 'config.json'}: {error}") from None
                if device is not None:
                    config.device = device
                agent, tensors, meta = Agent.from_config(config), None, None
            for key, value in (overrides or {}).items():
                set_value(agent.config, key, value)
            validate(agent.config)
            done = agent.trained_env_steps
            if agent.config.train.steps < done:
                raise ConfigError(
                    f"train.steps ({agent.config.train.steps:,}) is below the run's env steps ({done:,}); "
                    "give a larger total"
                )
            if meta is None:
                run.clear_progress()
            trainer = cls(agent, run)
        except BaseException:
            run.close()
            raise
        try:
            if meta is None:
                trainer.restarted = True
            else:
                trainer.restore(tensors, meta)
        except BaseException:
            trainer.close()
            raise
        return trainer

    def close(self) -> None:
        """Close the environments and release the run folder."""
        try:
            for env in [self.env, *self.eval_envs.values()]:
                env.close()
            self.eval_envs.clear()
            if self.tensorboard is not None:
                self.tensorboard.close()
                self.tensorboard = None
        finally:
            if self.run is not None:
                self.run.close()

    def __enter__(self) -> Trainer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def run_dir(self) -> Path | None:
        return self.run.path if self.run is not None else None

    @property
    def finished(self) -> bool:
        """Whether the run has reached its budget, config.train.steps."""
        return self.counters["env_steps"] >= self.agent.config.train.steps

    def start_episodes(self, seed: int) -> None:
        """Reset every sub-environment; the next stored step of each is an is_first step."""
        n = self.agent.config.train.envs
        self.obs, _ = self.env.reset(seed=seed)
        self.reward = np.zeros(n, np.float32)
        self.is_first, self.is_last, self.is_terminal = np.ones(n, bool), np.zeros(n, bool), np.zeros(n, bool)
        self.state = self.agent.initial_state(n)
        self.episode_return = np.zeros(n)

    # --- collection ---------------------------------------------------------------------------------

    def collect(self) -> None:
        """One step of every sub-environment; the finished step goes to replay."""
        agent, cfg, counters = self.agent, self.agent.config, self.counters
        noise = None if self.action_noise is None else self.action_noise.next(self.is_first)
        if counters["env_steps"] < cfg.train.prefill:
            action = self.random_action(noise)
            # keep the policy state in step with the data, so acting after prefill starts cleanly
            self.state = agent.initial_state(cfg.train.envs)
        else:
            action, self.state = agent.policy_step(self.obs, self.state, self.is_first, False, noise)
        self.replay.add({
            "obs": self.obs, "action": action, "reward": self.reward,
            "is_first": self.is_first, "is_last": self.is_last, "is_terminal": self.is_terminal,
        })  # fmt: skip
        real = ~self.is_last  # a step after is_last only resets its sub-environment
        obs, reward, term, trunc, info = self.env.step(envs.to_env_action(action, agent.discrete))
        # the env's own steps, as scores count them: ActionRepeat's count, fewer where an episode ended first
        taken = np.full(len(real), cfg.action_repeat)
        if "env_steps" in info:  # absent without a repeat, and for sub-environments that only reset
            taken = np.where(info["_env_steps"], info["env_steps"], taken)
        counters["env_steps"] += int(taken[real].sum())
        self.is_first = self.is_last.copy()
        self.obs, self.reward = obs, reward.astype(np.float32)
        self.is_last, self.is_terminal = term | trunc, term.copy()
        self.episode_return = np.where(self.is_first, 0.0, self.episode_return) + self.reward
        for i in np.flatnonzero(self.is_last):
            self.recent_returns = [*self.recent_returns[-9:], float(self.episode_return[i])]
            counters["episodes"] += 1

    def random_action(self, noise: np.ndarray | None) -> np.ndarray:
        """Prefill's actions: for continuous actions the action noise, clipped; for discrete ones uniform, from
        the noise's argmax where there is noise (a uniform policy's Gumbel-max sample)."""
        n, a = self.agent.config.train.envs, self.agent.action_dim
        if noise is None:
            return np.eye(a, dtype=np.float32)[self.rng.integers(0, a, n)]
        if self.agent.discrete:
            return np.eye(a, dtype=np.float32)[noise.argmax(-1)]
        return np.clip(noise, -1, 1)

    # --- updates ------------------------------------------------------------------------------------

    def update(self) -> dict[str, torch.Tensor] | None:
        """One gradient step of the world model, the actor and the critic (DreamerV3's order: imagination
        starts from this batch's posterior, under the world model the batch was scored with). If any
        loss or gradient norm is not finite, the step is skipped whole: no optimiser steps, no
        statistics committed; it is counted and None is returned. One host sync per update, and one per
        further actor-critic step (`actor_critic.repeats`), each applied only if finite."""
        agent, cfg = self.agent, self.agent.config
        wm, ac, device = agent.world_model, agent.actor_critic, agent.device
        sample = self.replay.sample(cfg.train.batch, cfg.train.seq_len)
        batch = {k: to_device(v, device) for k, v in sample.items()}

        wm.quantizer.anneal(self.counters["env_steps"] / max(cfg.train.steps, 1))
        wm_loss, terms, post = wm.loss(batch, self.generator)
        self.optimizers["wm"].zero_grad(set_to_none=True)
        wm_loss.backward()
        wm_norm = torch.nn.utils.clip_grad_norm_(wm.parameters(), cfg.model.grad_clip)

        # what every actor-critic step of this update starts from: the posterior states (N, ...), whether each
        # continues, and the posterior features of the replayed sequences (for the replay value loss)
        starts = Latent(post.latent.deter.detach().flatten(0, 1), post.latent.code.detach().flatten(0, 1))
        start_cont = 1.0 - batch["is_terminal"].flatten().float()
        post_feats = post.latent.features() if cfg.actor_critic.replay_value > 0 else None
        actor_loss, critic_loss, metrics, pending, norms = self.actor_critic_step(starts, start_cont, post_feats, batch)
        if not all_finite(wm_loss, wm_norm, actor_loss, critic_loss, *pending.values(), *norms):
            return self.reject_update()
        for optimizer in self.optimizers.values():
            optimizer.step()
        wm.quantizer.update(post.inputs, post.index, self.generator)
        ac.commit(pending)
        ac.update_slow_critic()
        for _ in range(cfg.actor_critic.repeats - 1):  # more actor-critic steps on the same batch
            actor_loss_r, critic_loss_r, _, pending_r, norms_r = self.actor_critic_step(
                starts, start_cont, post_feats, batch
            )
            if not all_finite(actor_loss_r, critic_loss_r, *pending_r.values(), *norms_r):
                self.nonfinite["total"] += 1  # the update itself is good and kept; its further steps are dropped
                break
            self.optimizers["actor"].step()
            self.optimizers["critic"].step()
            ac.commit(pending_r)
            ac.update_slow_critic()
        self.nonfinite["in_a_row"] = 0
        self.counters["updates"] += 1
        out = {f"loss/{k}": v.detach() for k, v in terms.items()}
        out.update({"loss/world_model": wm_loss.detach(), "loss/actor": actor_loss.detach(),
                    "loss/critic": critic_loss.detach(), "train/wm_grad_norm": wm_norm.detach()})  # fmt: skip
        out.update(metrics)
        return out

    def actor_critic_step(
        self, starts: Latent, start_cont: torch.Tensor, post_feats: torch.Tensor | None, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor], list[torch.Tensor]]:
        """The actor's and the critic's losses from imagination out of a draw of `starts` (the replayed batch's
        posterior states, flattened, and whether each continues: start_cont (N,)), their gradients set and
        clipped (not yet applied). post_feats (B, T, F; None without a replay value loss) and batch feed the
        replay value loss. Returns (actor loss, critic loss, metrics, the state to commit (ActorCritic.loss), the
        two gradient norms)."""
        agent, cfg = self.agent, self.agent.config
        wm, ac, device = agent.world_model, agent.actor_critic, agent.device
        if 0 < cfg.actor_critic.starts < len(start_cont):
            pick = torch.randperm(len(start_cont), generator=self.generator, device=device)[: cfg.actor_critic.starts]
            starts, start_cont = Latent(starts.deter[pick], starts.code[pick]), start_cont[pick]
        feats, actions = ac.imagine(wm, starts, self.generator)
        actor_loss, critic_loss, metrics, pending = ac.loss(wm, feats, actions, start_cont)
        if cfg.actor_critic.replay_value > 0:
            replay_loss = ac.replay_value_loss(post_feats, batch["reward"], batch["is_last"], batch["is_terminal"])
            critic_loss = critic_loss + cfg.actor_critic.replay_value * replay_loss
            metrics["loss/critic_replay"] = replay_loss.detach()
        # each loss reaches only its own network's parameters
        actor_params, critic_params = list(ac.actor.parameters()), list(ac.critic.parameters())
        actor_grads = torch.autograd.grad(actor_loss, actor_params, retain_graph=True)
        critic_grads = torch.autograd.grad(critic_loss, critic_params)
        norms = []
        for params, grads in ((actor_params, actor_grads), (critic_params, critic_grads)):
            for p, g in zip(params, grads, strict=True):
                p.grad = g
            norms.append(torch.nn.utils.clip_grad_norm_(params, cfg.actor_critic.grad_clip))
        return actor_loss, critic_loss, metrics, pending, norms

    def reject_update(self) -> None:
        """Drop the gradients of an update whose losses or gradients were not finite, count it, and stop
        training once `max_nonfinite` such updates came in a row."""
        self.nonfinite["total"] += 1
        self.nonfinite["in_a_row"] += 1
        for optimizer in self.optimizers.values():
            optimizer.zero_grad(set_to_none=True)
        warnings.warn(
            f"skipped an update with non-finite losses or gradients ({self.nonfinite['in_a_row']} in a row)",
            RuntimeWarning,
            stacklevel=3,
        )
        limit = self.agent.config.train.max_nonfinite
        if self.nonfinite["in_a_row"] >= limit:
            kept = f"; the last good checkpoint is in {self.run.path / 'checkpoints'}" if self.run else ""
            raise TrainingError(f"training diverged: {limit} updates in a row had non-finite losses or gradients{kept}")

    # --- the loop -----------------------------------------------------------------------------------

    def learn(self, steps: int | None = None, on_log: Callable[[dict[str, Any]], None] | None = None) -> Trainer:
        """Train for `steps` more env steps (raising the run's budget if needed), or (None) until the run's
        budget, config.train.steps. on_log(line) receives every metric line (also written to the run's
        metrics.jsonl). Ctrl-C stops at the next safe point with a checkpoint and raises TrainingInterrupted."""
        cfg, counters = self.agent.config, self.counters
        t = cfg.train
        target = t.steps if steps is None else counters["env_steps"] + steps
        if steps is not None and steps <= 0:
            raise ConfigError(f"steps must be > 0, got {steps}")
        if target > t.steps:
            t.steps = target
            if self.run is not None:
                self.run.write_config(cfg.to_json())
        if t.tensorboard and self.run is not None and self.tensorboard is None:
            self.tensorboard = tensorboard_writer(self.run.path / "tb", counters["env_steps"])
        next_log, next_eval, next_checkpoint = (
            next_due(counters["env_steps"], every) for every in (t.log_every, t.eval_every, t.checkpoint_every)
        )
        self.start_time = time.perf_counter()
        try:
            with self.interrupt_guard():
                while counters["env_steps"] < target:
                    self.collect()
                    now = counters["env_steps"]
                    if now >= t.prefill and self.replay.count >= t.seq_len:
                        due = updates_due(cfg, now)
                        while counters["updates"] < due and not self.stop_requested:
                            started = time.perf_counter()
                            metrics = self.update()  # one host sync inside: the time is the update's own
                            self.update_seconds += time.perf_counter() - started
                            self.update_calls += 1
                            if metrics is not None:
                                for key, value in metrics.items():
                                    self.sums[key] = self.sums[key] + value  # tensors: one read per log line
                                self.sum_count += 1
                    done = now >= target
                    evaluation = None
                    if next_eval is not None and (now >= next_eval or done):
                        next_eval = next_due(now, t.eval_every)
                        evaluation = self.evaluate_and_keep_best()
                    if evaluation is not None or now >= next_log or done:
                        next_log = next_due(now, t.log_every)
                        self.log(evaluation or {}, on_log)
                    if evaluation is not None and evaluation["eval_new_best"]:
                        self.save("best", evaluation)
                    if done or (next_checkpoint is not None and now >= next_checkpoint):
                        next_checkpoint = next_due(now, t.checkpoint_every)
                        self.save("last", evaluation)
                    if self.stop_requested:  # after what was due at this step, so a resume misses nothing
                        self.stop()
        finally:
            # a later learn() call continues the clock from here (time between calls is not training)
            self.seconds_before, self.start_time = self.seconds(), time.perf_counter()
        return self

    @contextlib.contextmanager
    def interrupt_guard(self) -> Iterator[None]:
        """While training, a first Ctrl-C (SIGINT) asks the loop to stop at its next safe point, where it
        writes a checkpoint; a second one aborts at once. Signals reach only the main thread; a process
        that ignores SIGINT (a background job) keeps ignoring it."""
        previous = signal.getsignal(signal.SIGINT) if threading.current_thread() is threading.main_thread() else None
        if previous in (None, signal.SIG_IGN):  # not the main thread, or Ctrl-C is ignored (a background job)
            yield
            return

        def on_sigint(signum: int, frame: Any) -> None:
            if self.stop_requested:
                raise KeyboardInterrupt
            self.stop_requested = True

        signal.signal(signal.SIGINT, on_sigint)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)
            self.stop_requested = False

    def stop(self) -> None:
        """Write a checkpoint of where training is and end it with TrainingInterrupted."""
        self.save("last")
        raise TrainingInterrupted(self.counters["env_steps"])

    def evaluate_and_keep_best(self) -> dict[str, Any]:
        """Evaluate on fresh seeds (never those of training or of earlier evaluations). A policy that
        scores above the best so far is confirmed on `confirm_episodes` more episodes before it
        becomes the best: ten episodes alone often rank a lucky policy first."""
        cfg = self.agent.config
        self.evaluations += 1
        episodes, confirm = cfg.train.eval_episodes, cfg.train.confirm_episodes
        seed = evaluation_seed(cfg.seed, self.evaluations, episodes)
        result = evaluate(self.agent, episodes, seed, self.evaluation_env(episodes))
        record = {
            "eval_return_mean": result["mean_return"],
            "eval_return_std": result["std_return"],
            "eval_length_mean": result["mean_length"],
        }
        score = result["mean_return"]
        if score > self.best_eval and confirm:
            seed = confirmation_seed(cfg.seed, self.evaluations, confirm)
            more = evaluate(self.agent, confirm, seed, self.evaluation_env(confirm))
            score = (score * episodes + more["mean_return"] * confirm) / (episodes + confirm)
            record["eval_confirmed_mean"] = score
        record["eval_new_best"] = score > self.best_eval
        self.best_eval = max(self.best_eval, score)
        record["eval_return_best"] = self.best_eval
        return record

    def evaluation_env(self, episodes: int) -> gym.vector.VectorEnv:
        """The environments of evaluations of `episodes` episodes, built once."""
        if episodes not in self.eval_envs:
            self.eval_envs[episodes] = evaluation_envs(self.agent, episodes)
        return self.eval_envs[episodes]

    def seconds(self) -> float:
        return self.seconds_before + time.perf_counter() - self.start_time

    def log(self, record: dict[str, Any], on_log: Callable[[dict[str, Any]], None] | None) -> None:
        counters = self.counters
        elapsed = self.seconds()
        since_seconds, since_steps = elapsed - self.last_log[0], counters["env_steps"] - self.last_log[1]
        self.last_log = (elapsed, counters["env_steps"])
        line = {"step": counters["env_steps"], "updates": counters["updates"], "episodes": counters["episodes"],
                "time/seconds": round(elapsed, 2), "time/sps": round(since_steps / max(since_seconds, 1e-9), 2),
                "train/nonfinite_updates": self.nonfinite["total"]}  # fmt: skip
        if self.update_calls:
            line["time/update_ms"] = round(1000 * self.update_seconds / self.update_calls, 2)
            self.update_seconds, self.update_calls = 0.0, 0
        if self.recent_returns:
            line["train/episode_return"] = float(np.mean(self.recent_returns))
        if self.sum_count:
            line.update({k: float(v) / self.sum_count for k, v in self.sums.items()})
            self.sums.clear()
            self.sum_count = 0
        line.update(record)
        if self.run is not None:
            self.run.append_metrics(line)
        if self.tensorboard is not None:
            for key, value in line.items():
                if key != "step" and isinstance(value, int | float) and not isinstance(value, bool):
                    self.tensorboard.add_scalar(key, value, line["step"])
            self.tensorboard.flush()
        if on_log is not None:
            on_log(line)

    # --- checkpoints and resuming -------------------------------------------------------------------

    def save(self, name: str, evaluation: dict[str, Any] | None = None) -> None:
        """best: the weights of the best evaluated policy. last: weights and the whole training state,
        written after the replay buffer's pending steps, so that the two always agree."""
        if self.run is None:
            return
        extra: dict[str, Any] = {"counters": dict(self.counters)}
        if evaluation:
            extra["evaluation"] = evaluation
        tensors: dict[str, torch.Tensor] = {}
        if name == "last":
            self.replay.flush()
            groups = {}
            for key, optimizer in self.optimizers.items():
                opt_tensors, groups[key] = optimizer_state(f"optimizer.{key}", optimizer)
                tensors.update(opt_tensors)
            tensors["rng.act"] = self.agent.generator.get_state()
            tensors["rng.train"] = self.generator.get_state()
            extra["training"] = {
                "optimizer_groups": groups,
                "replay_total": self.replay.total,
                "numpy_rng": self.rng.bit_generator.state,
                "replay_rng": self.replay.rng.bit_generator.state,
                "best_eval": self.best_eval if np.isfinite(self.best_eval) else None,
                "evaluations": self.evaluations,
                "nonfinite_updates": self.nonfinite["total"],
                "seconds": self.seconds(),
                "resumes": self.resumes,
                "device": self.agent.device.type,
            }
        self.agent.save(self.run.checkpoint(name), extra, tensors)
        if name == "last":
            self.replay.checkpointed()

    def restore(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        """Continue from a `last` checkpoint's training state (see `save`)."""
        assert self.run is not None
        try:
            training = meta["training"]
            self.counters.update({k: int(meta["counters"][k]) for k in self.counters})
            for key, optimizer in self.optimizers.items():
                load_optimizer_state(f"optimizer.{key}", optimizer, tensors, training["optimizer_groups"][key])
            if training.get("device", "cpu") == self.agent.device.type:
                self.agent.generator.set_state(tensors["rng.act"])
                self.generator.set_state(tensors["rng.train"])
            else:  # a run moved to another kind of device: its generators' states do not carry over
                seed = self.agent.config.seed + 7_919 * (training["resumes"] + 1)
                self.agent.generator.manual_seed(seed)
                self.generator.manual_seed(seed + 1)
            self.rng.bit_generator.state = training["numpy_rng"]
            self.replay.rng.bit_generator.state = training["replay_rng"]
            self.best_eval = training["best_eval"] if training["best_eval"] is not None else -np.inf
            self.evaluations = training["evaluations"]
            self.nonfinite["total"] = training["nonfinite_updates"]
            self.seconds_before = training["seconds"]
            self.resumes = training["resumes"] + 1
        except (KeyError, TypeError, ValueError, RuntimeError) as error:
            raise checkpoint.CheckpointError(
                f"{self.run.checkpoint('last')}: its training state does not fit this version ({error!r})"
            ) from None
        self.last_log = (self.seconds_before, self.counters["env_steps"])
        self.replay.restore(self.run.replay, training["replay_total"])
        best = self.run.checkpoint("best")
        if best.is_file():  # best may be newer than last if a crash fell between the two writes
            best_eval = checkpoint.metadata(best).get("evaluation", {}).get("eval_return_best")
            if best_eval is not None and best_eval > self.best_eval:
                self.best_eval = best_eval
        self.run.cut_metrics(self.counters["env_steps"])
        # new episodes, with seeds no earlier session used
        self.start_episodes(self.agent.config.seed + 100_003 * self.resumes)
