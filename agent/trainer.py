"""The training loop: collect -> world-model update -> imagine -> actor-critic update -> log/checkpoint.

Updates follow the train ratio: after n env steps, n * train_ratio / (batch * seq_len) updates have
been made, so every env step is replayed about train_ratio times. The first `prefill` env steps use
random actions. Evaluation runs deterministic episodes in separate environments every `eval_every`
env steps; the run keeps its best evaluated checkpoint beside its last.

A run folder can be resumed after anything, a crash included: `last.safetensors` holds the weights
and the whole training state (optimisers, return normalisation, counters, RNG states), the replay
buffer lives in chunk files beside it (see replay.py), and the metric log is cut back to the
checkpoint's step. Episodes in progress at the checkpoint are not continued: the environments
start new ones.
"""

from __future__ import annotations

import json
import time
import warnings
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

import envs
from agent.checkpoint import TEMP_MARK, atomic_write_text
from agent.replay import Replay
from agent.world_model import Latent

if TYPE_CHECKING:
    from agent.agent import Agent


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. it diverged); the message says why and what was kept."""


def evaluate(agent: Agent, episodes: int, seed: int) -> dict[str, Any]:
    """`episodes` deterministic episodes, run as one batch of environments."""
    env = envs.make_vector(agent.config.env_id, episodes, **agent.config.env_options())
    try:
        obs, _ = env.reset(seed=seed)
        state = agent.initial_state(episodes)
        is_first = np.ones(episodes, bool)
        returns, lengths = np.zeros(episodes), np.zeros(episodes, int)
        running, terminated = np.ones(episodes, bool), np.zeros(episodes, bool)
        while running.any():
            action, state = agent.policy_step(obs, state, is_first, deterministic=True)
            obs, reward, term, trunc, _ = env.step(envs.to_env_action(action, agent.discrete))
            returns += reward * running
            lengths += running
            terminated |= term & running
            running &= ~(term | trunc)
            is_first = np.zeros(episodes, bool)
    finally:
        env.close()
    return {
        "env_id": agent.config.env_id,
        "episodes": episodes,
        "seed": seed,
        "mean_return": float(returns.mean()),
        "std_return": float(returns.std()),
        "min_return": float(returns.min()),
        "max_return": float(returns.max()),
        "mean_length": float(lengths.mean()),
        "returns": returns.tolist(),
        "lengths": lengths.tolist(),
        "terminated": terminated.tolist(),
    }


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


def evaluation_seed(seed: int, evaluation: int, episodes: int) -> int:
    """First episode seed of a run's n-th evaluation: fresh for every evaluation, never a training seed."""
    return 1_000_000 + seed * 10_000 + evaluation * episodes


def next_due(now: int, every: int) -> int | None:
    """The first multiple of `every` after `now` (None when `every` is 0: never)."""
    return (now // every + 1) * every if every else None


class Trainer:
    """Owns what only training needs: environments, replay, optimisers, the log and checkpoints."""

    def __init__(self, agent: Agent, run_dir: str | Path | None = None):
        self.agent = agent
        cfg = agent.config
        self.run_dir = Path(run_dir) if run_dir is not None else None
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
        self.rng = np.random.default_rng(cfg.seed)
        self.best_eval = -np.inf
        self.evaluations = 0
        self.resumes = 0
        self.nonfinite = {"total": 0, "in_a_row": 0}
        self.recent_returns: list[float] = []
        self.sums: dict[str, torch.Tensor | float] = defaultdict(float)
        self.sum_count = 0
        self.seconds_before = 0.0  # wall-clock of earlier sessions of a resumed run
        self.start_time = time.perf_counter()
        self.start_episodes(cfg.seed)
        if self.run_dir is not None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            for leftover in self.run_dir.rglob(f".*{TEMP_MARK}*"):  # temporary files of writes a crash interrupted
                leftover.unlink()
            atomic_write_text(self.run_dir / "config.json", cfg.to_json())
            self.replay.persist(self.run_dir / "replay")

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
        agent, cfg = self.agent, self.agent.config
        counters = agent.counters
        if counters["env_steps"] < cfg.train.prefill:
            action = self.random_action()
            # keep the policy state in step with the data, so acting after prefill starts cleanly
            self.state = agent.initial_state(cfg.train.envs)
        else:
            action, self.state = agent.policy_step(self.obs, self.state, self.is_first, deterministic=False)
        self.replay.add({
            "obs": self.obs, "action": action, "reward": self.reward,
            "is_first": self.is_first, "is_last": self.is_last, "is_terminal": self.is_terminal,
        })  # fmt: skip
        real = ~self.is_last  # a step after is_last only resets its sub-environment
        obs, reward, term, trunc, _ = self.env.step(envs.to_env_action(action, agent.discrete))
        counters["env_steps"] += int(real.sum())
        self.is_first = self.is_last.copy()
        self.obs, self.reward = obs, reward.astype(np.float32)
        self.is_last, self.is_terminal = term | trunc, term.copy()
        self.episode_return = np.where(self.is_first, 0.0, self.episode_return) + self.reward
        for i in np.flatnonzero(self.is_last):
            self.recent_returns = [*self.recent_returns[-9:], float(self.episode_return[i])]
            counters["episodes"] += 1

    def random_action(self) -> np.ndarray:
        n, a = self.agent.config.train.envs, self.agent.action_dim
        if self.agent.discrete:
            return np.eye(a, dtype=np.float32)[self.rng.integers(0, a, n)]
        return self.rng.uniform(-1, 1, (n, a)).astype(np.float32)

    # --- updates ------------------------------------------------------------------------------------

    def update(self) -> dict[str, torch.Tensor]:
        """One gradient step of the world model, then of the actor and the critic. An update whose
        losses or gradients are not finite is skipped (and counted)."""
        agent, cfg = self.agent, self.agent.config
        wm, ac, device = agent.world_model, agent.actor_critic, agent.device
        sample = self.replay.sample(cfg.train.batch, cfg.train.seq_len)
        batch = {k: torch.as_tensor(v, device=device) for k, v in sample.items()}

        wm.quantizer.anneal(agent.counters["env_steps"] / max(cfg.train.steps, 1))
        autocast = torch.autocast(device.type, torch.bfloat16, enabled=cfg.model.precision == "bfloat16")
        with autocast:
            wm_loss, terms, post = wm.loss(batch, agent.generator)
        self.optimizers["wm"].zero_grad(set_to_none=True)
        wm_loss.backward()
        wm_norm = torch.nn.utils.clip_grad_norm_(wm.parameters(), cfg.model.grad_clip)
        if not self.finite(wm_loss, wm_norm):
            return {}
        self.optimizers["wm"].step()

        start = Latent(post.deter.detach().flatten(0, 1), post.code.detach().flatten(0, 1))  # (N, ...)
        start_cont = 1.0 - batch["is_terminal"].flatten().float()
        if 0 < cfg.actor_critic.starts < len(start_cont):
            pick = torch.randperm(len(start_cont), generator=agent.generator, device=device)[: cfg.actor_critic.starts]
            start, start_cont = Latent(start.deter[pick], start.code[pick]), start_cont[pick]
        with autocast:
            feats, actions = ac.imagine(wm, start, agent.generator)
            actor_loss, critic_loss, metrics = ac.loss(wm, feats, actions, start_cont)
        actor_params, critic_params = list(ac.actor.parameters()), list(ac.critic.parameters())
        actor_grads = torch.autograd.grad(actor_loss, actor_params, retain_graph=True)
        critic_grads = torch.autograd.grad(critic_loss, critic_params)
        norms = []
        for params, grads in ((actor_params, actor_grads), (critic_params, critic_grads)):
            for p, g in zip(params, grads, strict=True):
                p.grad = g
            norms.append(torch.nn.utils.clip_grad_norm_(params, cfg.actor_critic.grad_clip))
        if not self.finite(actor_loss, critic_loss, *norms):
            return {}
        self.optimizers["actor"].step()
        self.optimizers["critic"].step()
        ac.update_slow_critic()
        agent.counters["updates"] += 1
        out = {f"loss/{k}": v.detach() for k, v in terms.items()}
        out.update({"loss/world_model": wm_loss.detach(), "loss/actor": actor_loss.detach(),
                    "loss/critic": critic_loss.detach(), "train/wm_grad_norm": wm_norm.detach()})  # fmt: skip
        out.update(metrics)
        return out

    def finite(self, *values: torch.Tensor) -> bool:
        """Whether every loss and gradient norm is finite; counts the updates that are not, and stops
        training when `max_nonfinite` of them come in a row."""
        if bool(torch.isfinite(torch.stack([v.detach().float() for v in values])).all()):
            self.nonfinite["in_a_row"] = 0
            return True
        self.nonfinite["total"] += 1
        self.nonfinite["in_a_row"] += 1
        for optimizer in self.optimizers.values():
            optimizer.zero_grad(set_to_none=True)
        limit = self.agent.config.train.max_nonfinite
        warnings.warn(
            f"skipped an update with non-finite losses or gradients ({self.nonfinite['in_a_row']} in a row)",
            RuntimeWarning,
            stacklevel=2,
        )
        if self.nonfinite["in_a_row"] >= limit:
            kept = f"; the last good checkpoint is {self.run_dir / 'checkpoints'}" if self.run_dir else ""
            raise TrainingError(f"training diverged: {limit} updates in a row had non-finite losses or gradients{kept}")
        return False

    # --- the loop -----------------------------------------------------------------------------------

    def learn(self, steps: int, on_log: Callable[[dict[str, Any]], None] | None = None) -> None:
        agent, cfg = self.agent, self.agent.config
        counters, t = agent.counters, cfg.train
        target = counters["env_steps"] + steps
        replayed = t.batch * t.seq_len
        next_log, next_eval, next_checkpoint = (
            next_due(counters["env_steps"], every) for every in (t.log_every, t.eval_every, t.checkpoint_every)
        )
        self.start_time = time.perf_counter()
        while counters["env_steps"] < target:
            self.collect()
            now = counters["env_steps"]
            if now >= t.prefill and self.replay.count >= t.seq_len:
                while counters["updates"] < now * t.train_ratio / replayed:
                    for key, value in self.update().items():
                        self.sums[key] = self.sums[key] + value  # tensors: one read per log line, not per update
                    self.sum_count += 1
            done = now >= target
            evaluation = None
            if next_eval is not None and (now >= next_eval or done):
                next_eval = next_due(now, t.eval_every)
                evaluation = self.evaluation()
            if evaluation is not None or now >= next_log or done:
                next_log = next_due(now, t.log_every)
                self.log(evaluation or {}, on_log)
            if evaluation is not None and evaluation["eval_new_best"]:
                self.save("best", evaluation)
            if done or (next_checkpoint is not None and now >= next_checkpoint):
                next_checkpoint = next_due(now, t.checkpoint_every)
                self.save("last", evaluation)
        # a later learn() call continues the clock from here (time between calls is not training)
        self.seconds_before, self.start_time = self.seconds(), time.perf_counter()

    def evaluation(self) -> dict[str, Any]:
        """Evaluate on fresh seeds (never those of training or of earlier evaluations). A policy that
        scores above the best so far is confirmed on `confirm_episodes` more episodes before it
        becomes the best: ten episodes alone often rank a lucky policy first."""
        cfg = self.agent.config
        self.evaluations += 1
        episodes, confirm = cfg.train.eval_episodes, cfg.train.confirm_episodes
        result = evaluate(self.agent, episodes, evaluation_seed(cfg.seed, self.evaluations, episodes))
        record = {
            "eval_return_mean": result["mean_return"],
            "eval_return_std": result["std_return"],
            "eval_length_mean": result["mean_length"],
        }
        score = result["mean_return"]
        if score > self.best_eval and confirm:
            more = evaluate(self.agent, confirm, 5_000_000 + cfg.seed * 100_000 + self.evaluations * confirm)
            score = (score * episodes + more["mean_return"] * confirm) / (episodes + confirm)
            record["eval_confirmed_mean"] = score
        record["eval_new_best"] = score > self.best_eval
        self.best_eval = max(self.best_eval, score)
        record["eval_return_best"] = self.best_eval
        return record

    def seconds(self) -> float:
        return self.seconds_before + time.perf_counter() - self.start_time

    def log(self, record: dict[str, Any], on_log: Callable[[dict[str, Any]], None] | None) -> None:
        counters = self.agent.counters
        elapsed = self.seconds()
        line = {"step": counters["env_steps"], "updates": counters["updates"], "episodes": counters["episodes"],
                "time/seconds": round(elapsed, 2), "time/sps": round(counters["env_steps"] / max(elapsed, 1e-9), 2),
                "train/nonfinite_updates": self.nonfinite["total"]}  # fmt: skip
        if self.recent_returns:
            line["train/episode_return"] = float(np.mean(self.recent_returns))
        if self.sum_count:
            line.update({k: float(v) / self.sum_count for k, v in self.sums.items()})
            self.sums.clear()
            self.sum_count = 0
        line.update(record)
        if self.run_dir is not None:
            with open(self.run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(line) + "\n")
        if on_log is not None:
            on_log(line)

    # --- checkpoints and resuming -------------------------------------------------------------------

    def save(self, name: str, evaluation: dict[str, Any] | None = None) -> None:
        """best: the weights of the best evaluated policy. last: weights and the whole training state,
        written after the replay buffer's pending steps, so that the two always agree."""
        if self.run_dir is None:
            return
        extra: dict[str, Any] = {"evaluation": evaluation} if evaluation else {}
        tensors: dict[str, torch.Tensor] = {}
        if name == "last":
            self.replay.flush()
            groups = {}
            for key, optimizer in self.optimizers.items():
                opt_tensors, groups[key] = optimizer_state(f"optimizer.{key}", optimizer)
                tensors.update(opt_tensors)
            tensors["rng.torch"] = self.agent.generator.get_state()
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
            }
        self.agent.save(self.run_dir / "checkpoints" / f"{name}.safetensors", extra, tensors)

    def restore(self, tensors: dict[str, torch.Tensor], training: dict[str, Any]) -> None:
        """Continue from a `last` checkpoint's training state (see `save`)."""
        for key, optimizer in self.optimizers.items():
            load_optimizer_state(f"optimizer.{key}", optimizer, tensors, training["optimizer_groups"][key])
        self.agent.generator.set_state(tensors["rng.torch"])
        self.rng.bit_generator.state = training["numpy_rng"]
        self.replay.rng.bit_generator.state = training["replay_rng"]
        self.replay.restore(self.run_dir / "replay", training["replay_total"])
        self.best_eval = training["best_eval"] if training["best_eval"] is not None else -np.inf
        self.evaluations = training["evaluations"]
        self.nonfinite["total"] = training["nonfinite_updates"]
        self.seconds_before = training["seconds"]
        self.resumes = training["resumes"] + 1
        # the metric log continues from the checkpoint: later lines are dropped (they are re-made)
        log = self.run_dir / "metrics.jsonl"
        if log.exists():
            kept = []
            for line in log.read_text().splitlines():
                try:
                    if json.loads(line)["step"] <= self.agent.counters["env_steps"]:
                        kept.append(line)
                except (ValueError, KeyError):
                    break  # a line cut short by the crash
            atomic_write_text(log, "".join(f"{line}\n" for line in kept))
        # new episodes, with seeds no earlier session used
        self.start_episodes(self.agent.config.seed + 100_003 * self.resumes)
