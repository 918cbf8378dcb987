"""The training loop: collect -> world-model update -> imagine -> actor-critic update -> log/checkpoint.

Updates follow the train ratio: after n env steps, n * train_ratio / (batch * seq_len) updates have
been made, so every env step is replayed about train_ratio times. The first `prefill` env steps use
random actions. Evaluation runs deterministic episodes in separate environments every `eval_every`
env steps; the run keeps its last checkpoint and its best evaluated one.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

import envs
from agent.checkpoint import atomic_write_text
from agent.replay import Replay
from agent.world_model import Latent

if TYPE_CHECKING:
    from agent.agent import Agent


def evaluate(agent: Agent, episodes: int, seed: int) -> dict[str, Any]:
    """`episodes` deterministic episodes, run as one batch of environments."""
    env = envs.make_vector(agent.config.env_id, episodes)
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


class Trainer:
    """Owns what only training needs: environments, replay, optimisers, the log and checkpoints."""

    def __init__(self, agent: Agent, run_dir: str | Path | None = None):
        self.agent = agent
        cfg = agent.config
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.env = envs.make_vector(cfg.env_id, cfg.train.envs)
        self.replay = Replay(
            cfg.train.replay_capacity, cfg.train.envs, agent.obs_shape, agent.action_dim,
            recency=cfg.train.recency, seed=cfg.seed,
        )  # fmt: skip
        wm, ac = agent.world_model, agent.actor_critic
        self.wm_opt = torch.optim.Adam(wm.parameters(), lr=cfg.model.lr, eps=cfg.model.eps)
        self.actor_opt = torch.optim.Adam(ac.actor.parameters(), lr=cfg.actor_critic.actor_lr, eps=cfg.actor_critic.eps)
        self.critic_opt = torch.optim.Adam(
            ac.critic.parameters(), lr=cfg.actor_critic.critic_lr, eps=cfg.actor_critic.eps
        )
        self.rng = np.random.default_rng(cfg.seed)
        # the step each sub-environment is on
        n = cfg.train.envs
        self.obs, _ = self.env.reset(seed=cfg.seed)
        self.reward = np.zeros(n, np.float32)
        self.is_first, self.is_last, self.is_terminal = np.ones(n, bool), np.zeros(n, bool), np.zeros(n, bool)
        self.state = agent.initial_state(n)
        self.episode_return, self.episode_length = np.zeros(n), np.zeros(n, int)
        self.recent_returns: list[float] = []
        self.best_eval = -np.inf
        self.sums: dict[str, float] = defaultdict(float)
        self.sum_count = 0
        self.start_time = time.perf_counter()
        # env steps at which the next log line / evaluation is due
        self.next_log, self.next_eval = cfg.train.log_every, cfg.train.eval_every
        self.evaluations, self.evaluated_at = 0, -1
        if self.run_dir is not None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.run_dir / "config.json", cfg.to_json())

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
        self.episode_length = np.where(self.is_first, 0, self.episode_length) + 1
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
        """One gradient step of the world model, then of the actor and the critic."""
        agent, cfg = self.agent, self.agent.config
        wm, ac, device = agent.world_model, agent.actor_critic, agent.device
        sample = self.replay.sample(cfg.train.batch, cfg.train.seq_len)
        batch = {k: torch.as_tensor(v, device=device) for k, v in sample.items()}
        batch["obs"] = batch["obs"].float()

        wm.quantizer.anneal(agent.counters["env_steps"] / max(cfg.train.steps, 1))
        wm_loss, terms, post = wm.loss(batch, agent.generator)
        self.wm_opt.zero_grad(set_to_none=True)
        wm_loss.backward()
        wm_norm = torch.nn.utils.clip_grad_norm_(wm.parameters(), cfg.model.grad_clip)
        self.wm_opt.step()

        start = Latent(post.deter.detach().flatten(0, 1), post.code.detach().flatten(0, 1))  # (N, ...)
        start_cont = 1.0 - batch["is_terminal"].flatten().float()
        if 0 < cfg.actor_critic.starts < len(start_cont):
            pick = torch.randperm(len(start_cont), generator=agent.generator, device=device)[: cfg.actor_critic.starts]
            start, start_cont = Latent(start.deter[pick], start.code[pick]), start_cont[pick]
        feats, actions = ac.imagine(wm, start, agent.generator)
        actor_loss, critic_loss, metrics = ac.loss(wm, feats, actions, start_cont)
        actor_params, critic_params = list(ac.actor.parameters()), list(ac.critic.parameters())
        actor_grads = torch.autograd.grad(actor_loss, actor_params, retain_graph=True)
        critic_grads = torch.autograd.grad(critic_loss, critic_params)
        for params, grads, opt, clip in (
            (actor_params, actor_grads, self.actor_opt, cfg.actor_critic.grad_clip),
            (critic_params, critic_grads, self.critic_opt, cfg.actor_critic.grad_clip),
        ):
            for p, g in zip(params, grads, strict=True):
                p.grad = g
            torch.nn.utils.clip_grad_norm_(params, clip)
            opt.step()
        ac.update_slow_critic()
        agent.counters["updates"] += 1
        out = {f"loss/{k}": v.detach() for k, v in terms.items()}
        out.update({"loss/world_model": wm_loss.detach(), "loss/actor": actor_loss.detach(),
                    "loss/critic": critic_loss.detach(), "train/wm_grad_norm": wm_norm.detach()})  # fmt: skip
        out.update(metrics)
        return out

    # --- the loop -----------------------------------------------------------------------------------

    def learn(self, steps: int, on_log: Callable[[dict[str, Any]], None] | None = None) -> None:
        agent, cfg = self.agent, self.agent.config
        counters = agent.counters
        target = counters["env_steps"] + steps
        replayed = cfg.train.batch * cfg.train.seq_len
        while counters["env_steps"] < target:
            self.collect()
            now = counters["env_steps"]
            if now >= cfg.train.prefill and self.replay.count >= cfg.train.seq_len:
                while counters["updates"] < now * cfg.train.train_ratio / replayed:
                    for key, value in self.update().items():
                        self.sums[key] += float(value)
                    self.sum_count += 1
            if cfg.train.eval_every and now >= self.next_eval:
                self.next_eval = (now // cfg.train.eval_every + 1) * cfg.train.eval_every
                self.log(self.evaluation(), on_log)
            elif now >= self.next_log:
                self.log({}, on_log)
        if cfg.train.eval_every and self.evaluated_at != counters["env_steps"]:
            self.log(self.evaluation(), on_log)
        self.save_checkpoint("last")

    def evaluation(self) -> dict[str, Any]:
        """Evaluate, keep the best checkpoint; fresh seeds each time, never those of training."""
        cfg, counters = self.agent.config, self.agent.counters
        self.evaluations += 1
        self.evaluated_at = counters["env_steps"]
        seed = 1_000_000 + cfg.seed * 10_000 + self.evaluations * cfg.train.eval_episodes
        result = evaluate(self.agent, cfg.train.eval_episodes, seed)
        record = {
            "eval_return_mean": result["mean_return"],
            "eval_return_std": result["std_return"],
            "eval_length_mean": result["mean_length"],
        }
        self.save_checkpoint("last", record)
        if result["mean_return"] > self.best_eval:
            self.best_eval = result["mean_return"]
            self.save_checkpoint("best", record)
        record["eval_return_best"] = self.best_eval
        return record

    def save_checkpoint(self, name: str, evaluation: dict[str, Any] | None = None) -> None:
        if self.run_dir is None:
            return
        extra = {"evaluation": evaluation} if evaluation else {}
        self.agent.save(self.run_dir / "checkpoints" / f"{name}.safetensors", extra)

    def log(self, record: dict[str, Any], on_log: Callable[[dict[str, Any]], None] | None) -> None:
        counters = self.agent.counters
        elapsed = time.perf_counter() - self.start_time
        line = {"step": counters["env_steps"], "updates": counters["updates"], "episodes": counters["episodes"],
                "time/seconds": round(elapsed, 2)}  # fmt: skip
        line["time/sps"] = round(counters["env_steps"] / max(elapsed, 1e-9), 2)
        if self.recent_returns:
            line["train/episode_return"] = float(np.mean(self.recent_returns))
        if self.sum_count:
            line.update({k: v / self.sum_count for k, v in self.sums.items()})
            self.sums.clear()
            self.sum_count = 0
        line.update(record)
        every = self.agent.config.train.log_every
        self.next_log = (counters["env_steps"] // every + 1) * every
        if self.run_dir is not None:
            with open(self.run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(line) + "\n")
        if on_log is not None:
            on_log(line)
