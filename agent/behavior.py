"""Actor-critic learned purely from rollouts imagined by the world model (DreamerV3).

From every replayed posterior state the actor acts for `horizon` steps inside the model. The critic
(a symlog two-hot distribution, regularised towards a slow EMA copy of itself) learns lambda-returns;
the actor maximises returns normalised by the EMAs of their 5th and 95th percentiles (their range and,
by default, their size: see ReturnNorm), with an entropy bonus (fixed, or adapted towards a target
entropy: see EntropyCoefficient); its output layer starts at zero, so the policy starts at its largest
entropy. Gradients for the actor: REINFORCE (discrete actions; the rollout itself needs no graph), or
backpropagation through the imagined dynamics, i.e. through the straight-through codes, for the mean of
a continuous policy, with REINFORCE for its std. The critic also learns lambda-returns of the real
rewards along the replayed sequences (`replay_value_loss`).

Shape legend: H horizon, N start states, F features, A action dims.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor, nn

from agent.config import ActorCriticConfig, ConfigError, check_action_kind
from agent.nets import MLP, BoundedNormal, OneHotPolicy, TwoHot, batched_precision, symlog_bins
from agent.world_model import Latent, WorldModel


def lambda_return(reward: Tensor, cont: Tensor, value: Tensor, gamma: float, lam: float | Tensor) -> Tensor:
    """TD(lambda) returns of imagined (or replayed) trajectories.

    reward, cont: (H, N) for the states reached by each step (s_1..s_H); value: (H + 1, N) for s_0..s_H.
    R_t = r_{t+1} + gamma c_{t+1} ((1 - lam) v_{t+1} + lam R_{t+1}), bootstrapped with R_H = v_H.
    A terminal state (c = 0) ends the sum; the end of the horizon bootstraps, as a time limit does.
    lam may be a tensor (H, N) of per-step lambdas (0 bootstraps at that step). Returns (H, N) for s_0..s_{H-1}.
    """
    assert reward.shape == cont.shape and value.shape[0] == reward.shape[0] + 1, (reward.shape, cont.shape, value.shape)
    ret = value[-1]
    out = []
    for t in reversed(range(reward.shape[0])):
        lam_t = lam[t] if isinstance(lam, Tensor) else lam  # a float stays a float: no tensor per imagined batch
        ret = reward[t] + gamma * cont[t] * ((1 - lam_t) * value[t + 1] + lam_t * ret)
        out.append(ret)
    return torch.stack(out[::-1])


def replay_lambda_return(
    reward: Tensor, is_last: Tensor, is_terminal: Tensor, value: Tensor, gamma: float, lam: float
) -> Tensor:
    """TD(lambda) returns along replayed sequences, which may hold the end of one episode and the start of
    the next: all (T, B) as stored (reward, is_last, is_terminal arrive with each step). A step after an
    episode's last is the next episode's first, so the last step bootstraps (lambda 0 there), with
    value 0 if it is terminal. Returns (T - 1, B) for steps 0..T-2."""
    last, term = is_last.float(), is_terminal.float()
    return lambda_return(reward[1:], 1 - term[1:], value, gamma, lam * (1 - last[1:]))


def trajectory_weights(start_cont: Tensor, cont: Tensor, gamma: float) -> Tensor:
    """Weight of each imagined state s_0..s_{H-1} in the losses: the discounted probability that its
    trajectory is still running there, gamma^t * c_start * c_1 * ... * c_t (no gradient).
    start_cont (N,): 1 - is_terminal of the real start states; cont (H, N): for s_1..s_H."""
    alive = torch.cat([start_cont.unsqueeze(0), cont[:-1]], 0)
    return (torch.cumprod(gamma * alive, 0) / gamma).detach()


class ReturnNorm(nn.Module):
    """Scale = max(1, EMA(P95) - EMA(P5)) of the returns: advantages are divided by it, so one entropy
    coefficient suits sparse and dense rewards alike, while small returns are not blown up. With
    magnitude=True the scale is also at least max(|EMA(P5)|, |EMA(P95)|): where returns hardly vary
    but are large (a cost on every step), the model's errors, relative to what it predicts, would
    otherwise outweigh the entropy bonus and collapse the policy.

    `statistics` computes the EMAs that a batch of returns would give without storing them; the trainer
    `commit`s them once the update they belong to is known to be finite, so a bad batch changes nothing.
    """

    def __init__(self, decay: float, magnitude: bool = False):
        super().__init__()
        self.decay, self.magnitude = decay, magnitude
        self.register_buffer("low", torch.zeros(()))
        self.register_buffer("high", torch.zeros(()))
        self.register_buffer("started", torch.zeros((), dtype=torch.bool))
        self.register_buffer("quantiles", torch.tensor([0.05, 0.95]), persistent=False)

    def statistics(self, returns: Tensor) -> Tensor:
        """(low, high) after this batch of returns: (2,). The first batch sets them; later ones are averaged in."""
        batch = torch.quantile(returns.detach().flatten().float(), self.quantiles)
        averaged = torch.stack([self.low, self.high]).lerp(batch, 1 - self.decay)
        return torch.where(self.started, averaged, batch)  # no host sync on the started flag

    def scale(self, stats: Tensor) -> Tensor:
        spread = stats[1] - stats[0]
        return (torch.maximum(spread, stats.abs().max()) if self.magnitude else spread).clamp_min(1.0)

    @torch.no_grad()
    def commit(self, stats: Tensor) -> None:
        self.low.copy_(stats[0])
        self.high.copy_(stats[1])
        self.started.fill_(True)


class EntropyCoefficient(nn.Module):
    """The weight of the actor's entropy bonus: fixed at `initial` (target 0), or adapted towards a target
    entropy, a fraction of the policy's largest (SAC's temperature). A fixed bonus that keeps one game
    exploring keeps another's policy uniform: where the advantages are small (sparse rewards, returns
    under the scale's floor of 1) the bonus outweighs them and the policy never commits (docs/results.md: MinAtar).

    After each actor step its log moves by RATE * (target - entropy / largest entropy), within
    [LOWEST, HIGHEST]; like ReturnNorm, `next` computes the value and the trainer `commit`s it once the step
    is known to be finite."""

    RATE = 0.01  # a gap of 10% of the largest entropy changes the bonus e-fold in 1,000 actor steps
    LOWEST, HIGHEST = 1e-5, 1.0  # at 1 the bonus outweighs the normalised advantages, mostly within [-1, 1]

    def __init__(self, initial: float, target: float, largest_entropy: float):
        super().__init__()
        self.target, self.largest_entropy = target, largest_entropy
        # only an adapted value is state (and in the checkpoint); a fixed one comes from the config
        self.register_buffer("value", torch.tensor(float(initial)), persistent=target > 0)

    def next(self, entropy: Tensor) -> Tensor:
        """The value after an actor step whose policy had this mean entropy (nats) over the imagined states,
        unweighted, as `actor/entropy` logs it: the target is what the logs show."""
        if self.target == 0:
            return self.value
        gap = self.target - entropy.detach().float() / self.largest_entropy
        return (self.value * torch.exp(self.RATE * gap)).clamp(self.LOWEST, self.HIGHEST)

    @torch.no_grad()
    def commit(self, value: Tensor) -> None:
        self.value.copy_(value)


class ActorCritic(nn.Module):
    def __init__(
        self,
        feat_dim: int,
        action_dim: int,
        discrete: bool,
        cfg: ActorCriticConfig,
        hidden: int,
        layers: int,
        bf16: bool = False,
    ):
        super().__init__()
        self.cfg, self.discrete = cfg, discrete
        self.bf16 = bf16  # bfloat16 products in the heads over all imagined states (nets.batched_precision)
        # output layer at zero: the policy starts at its largest entropy, preferring nothing (DreamerV3: 0.01x)
        self.actor = MLP(feat_dim, action_dim if discrete else 2 * action_dim, hidden, layers, zero_out=True)
        self.critic = MLP(feat_dim, cfg.critic_bins, hidden, layers, zero_out=True)
        self.slow_critic = copy.deepcopy(self.critic).requires_grad_(False)
        self.register_buffer("critic_grid", symlog_bins(cfg.critic_bins), persistent=False)
        self.return_norm = ReturnNorm(cfg.return_norm_decay, magnitude=cfg.return_scale == "magnitude")
        check_action_kind(cfg, discrete)
        if cfg.entropy_target > 0 and action_dim < 2:
            raise ConfigError("actor_critic.entropy_target needs at least two actions to choose between; set it to 0")
        self.entropy_coef = EntropyCoefficient(cfg.entropy, cfg.entropy_target, math.log(action_dim))
        mode = cfg.actor_grad if cfg.actor_grad != "auto" else ("reinforce" if discrete else "dynamics")
        self.backprop = mode == "dynamics"
        # The imagined states in bf16 too (rollout products, one shared cast for the heads) only where no actor
        # gradient flows back through them: paired DMC runs of the dynamics-backprop actor scored lower so
        # (docs/results.md: DMC), and its heads' gradients would be summed in bf16.
        self.imagined_bf16 = bf16 and not self.backprop

    def policy(self, feat: Tensor) -> OneHotPolicy | BoundedNormal:
        out = self.actor(feat)
        return OneHotPolicy(out) if self.discrete else BoundedNormal(out)

    def value(self, feat: Tensor, slow: bool = False) -> TwoHot:
        return TwoHot((self.slow_critic if slow else self.critic)(feat), self.critic_grid)

    def imagine(
        self, world_model: WorldModel, start: Latent, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Roll the policy out in the model: start (N, ...) -> features (H + 1, N, F), actions (H, N, A).
        Only a dynamics-backprop actor needs the rollout's graph. The rollout's products are batched over the N
        starts, so they run in bfloat16 where `imagined_bf16` (the state itself stays float32: see
        nets.batched_precision)."""
        with (
            torch.set_grad_enabled(self.backprop and torch.is_grad_enabled()),
            batched_precision(start.deter.device, self.imagined_bf16),
        ):
            latent = start
            feats, actions = [latent.features()], []
            for _ in range(self.cfg.horizon):
                policy = self.policy(feats[-1].detach() if not self.backprop else feats[-1])
                if self.backprop:  # the std learns from the score-function term alone (see loss)
                    policy = policy.detached(std=True)
                action = policy.sample(generator)
                latent = world_model.imagine_step(latent, action, generator)
                feats.append(latent.features())
                actions.append(action)
        return torch.stack(feats), torch.stack(actions)

    def loss(
        self, world_model: WorldModel, feats: Tensor, actions: Tensor, start_cont: Tensor
    ) -> tuple[Tensor, Tensor, dict[str, Tensor], dict[str, Tensor]]:
        """(actor loss, critic loss, metrics, pending state) for an imagined batch; start_cont (N,) is
        1 - is_terminal of the real start states, whose trajectories carry no weight when they are terminal.
        The pending state (the return statistics, the next entropy coefficient) is for `commit` once the
        update is known to be finite."""
        cfg = self.cfg
        with batched_precision(feats.device, self.bf16):  # the heads over every imagined state
            # cast once for all five heads (autocast would cast the same values for each of them)
            feats = feats.to(torch.bfloat16) if self.imagined_bf16 else feats
            with torch.set_grad_enabled(self.backprop and torch.is_grad_enabled()):  # REINFORCE needs no graph
                reward = world_model.reward_dist(feats[1:]).mean()  # (H, N)
                cont = world_model.cont_dist(feats[1:]).mean()  # (H, N)
            critic_logits = self.critic(feats).float()  # (H + 1, N, bins): one pass for returns and critic loss
            policy = self.policy(feats[:-1] if self.backprop else feats[:-1].detach())
            with torch.no_grad():  # detached too: FLOP counting's module hooks reject graph inputs under no_grad
                slow_target = self.value(feats[:-1].detach(), slow=True).mean()
        value = TwoHot(critic_logits, self.critic_grid).mean()  # (H + 1, N)
        returns = lambda_return(reward, cont, value, cfg.gamma, cfg.lam)  # (H, N)
        weight = trajectory_weights(start_cont, cont, cfg.gamma)  # (H, N)

        return_stats = self.return_norm.statistics(returns)
        scale = self.return_norm.scale(return_stats)
        entropy = policy.entropy()
        advantage = ((returns - value[:-1]) / scale).detach()
        if self.backprop:
            # The mean follows the returns' gradient through the model; the std follows REINFORCE's
            # score-function term. Through the straight-through codes the returns' gradient is biased,
            # and its bias narrowed the std to its floor even where rewards say nothing (docs/results.md: Exploration).
            objective = returns / scale + policy.detached(loc=True).log_prob(actions.detach()) * advantage
        else:
            objective = policy.log_prob(actions.detach()) * advantage
        actor_loss = -(weight * (objective + self.entropy_coef.value * entropy)).mean()

        # The critic's own loss: only the critic's parameters are updated with it (see trainer).
        dist = TwoHot(critic_logits[:-1], self.critic_grid)
        critic_loss = -(
            weight * (dist.log_prob(returns.detach()) + cfg.slow_critic_reg * dist.log_prob(slow_target))
        ).mean()
        metrics = {
            "actor/entropy": entropy.mean().detach(),
            "actor/entropy_coef": self.entropy_coef.value.clone(),
            "actor/return_scale": scale.detach(),
            "actor/imag_return": returns.mean().detach(),
            "actor/imag_reward": reward.mean().detach(),
            "actor/value": value.mean().detach(),
        }
        pending = {"return_stats": return_stats, "entropy_coef": self.entropy_coef.next(entropy.mean())}
        return actor_loss, critic_loss, metrics, pending

    def commit(self, pending: dict[str, Tensor]) -> None:
        """Store the state that a finite actor-critic step computed (see `loss`)."""
        self.return_norm.commit(pending["return_stats"])
        self.entropy_coef.commit(pending["entropy_coef"])

    def replay_value_loss(self, feats: Tensor, reward: Tensor, is_last: Tensor, is_terminal: Tensor) -> Tensor:
        """The critic's loss on the replayed sequences themselves (DreamerV3's replay value loss): lambda-returns
        of the real rewards and terminations, bootstrapped with the slow critic. A rare reward that the
        reward head does not predict yet (a goal reached once in hundreds of steps) still reaches the
        critic, and through its values the imagined returns.

        feats (B, T, F): posterior features (no gradient); reward, is_last, is_terminal (B, T) as replayed
        (each arrives with its step's observation)."""
        cfg = self.cfg
        feats = feats.detach().transpose(0, 1)  # (T, B, F)
        reward, last, term = (x.transpose(0, 1).float() for x in (reward, is_last, is_terminal))
        with batched_precision(feats.device, self.bf16):
            logits = self.critic(feats[:-1]).float()
            with torch.no_grad():
                slow = self.value(feats, slow=True).mean()  # (T, B)
        returns = replay_lambda_return(reward, last, term, slow, cfg.gamma, cfg.lam)
        weight = 1 - last[:-1]  # a last step's own value: terminal (0) or unknown (truncated), never a target
        dist = TwoHot(logits, self.critic_grid)
        return -(weight * (dist.log_prob(returns) + cfg.slow_critic_reg * dist.log_prob(slow[:-1]))).mean()

    @torch.no_grad()
    def update_slow_critic(self) -> None:
        for slow, fast in zip(self.slow_critic.parameters(), self.critic.parameters(), strict=True):
            slow.lerp_(fast, 1 - self.cfg.slow_critic_decay)
