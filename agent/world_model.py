"""A recurrent world model whose stochastic state is a discrete code (DreamerV3's RSSM, any quantizer).

    h_t = GRU(h_{t-1}, c_{t-1}, a_{t-1})            deterministic recurrent state ("deter")
    c_t = f(post(h_t, enc(o_t)))                     posterior code, quantized straight-through
    p(c_t | h_t)                                     prior: a categorical per code unit
    heads on [h_t, c_t]: observation (symlog MSE), reward (symlog two-hot), continuation (Bernoulli)

Losses (DreamerV3): prediction (decoder + reward + continuation), dynamics KL(sg(post) || prior),
representation KL(post || sg(prior)), both clipped below at `free_bits` nats. Quantizers whose code
is a deterministic function of the input (round, fsq, binary, vq) have a point-mass posterior: the
dynamics loss is then the prior's cross-entropy of the posterior's index and there is no
representation loss (the quantizer's own auxiliary loss, e.g. VQ commitment, is added instead).

Shape legend: B batch, T time, N flattened states, U code units, K alphabet size (the largest unit's),
C code size, D deter, A action dims.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from agent.config import ModelConfig
from agent.nets import MLP, Bernoulli, GRUCell, TwoHot, batched_precision, layer, make_codec, symlog_bins
from agent.quantize import Quantizer


@dataclass
class Latent:
    """The model state: deter (..., D) and flattened code (..., C)."""

    deter: Tensor
    code: Tensor

    def features(self) -> Tensor:
        return torch.cat([self.deter, self.code], -1)


@dataclass
class Posterior:
    """The posterior along replayed sequences (B, T): latents, each unit's alphabet index (B, T, U), the
    posterior's log-probabilities (B, T, U, K) (None for quantizers with point-mass posteriors), the
    quantizer's inputs (B, T, C) (its statistics are updated from them once a step is known good),
    and the quantizer's auxiliary loss (scalar)."""

    latent: Latent
    index: Tensor
    log_probs: Tensor | None
    inputs: Tensor
    aux_loss: Tensor


class WorldModel(nn.Module):
    def __init__(
        self, obs_shape: tuple[int, ...], action_dim: int, cfg: ModelConfig, quantizer: Quantizer, bf16: bool = False
    ):
        super().__init__()
        self.cfg, self.quantizer = cfg, quantizer
        self.bf16 = bf16  # bfloat16 products in the batched parts (see nets.batched_precision)
        self.action_dim = action_dim
        units, classes = quantizer.units, max(quantizer.alphabet)
        code, hidden = quantizer.code_size, cfg.hidden
        feat = cfg.deter + code
        # vectors: symlog MLPs; images (C, H, W): convolutions
        self.encoder, self.decoder = make_codec(
            tuple(obs_shape), feat, hidden, cfg.layers, cfg.cnn_depth, cfg.image_likelihood
        )
        self.img_in = nn.Linear(code + action_dim, hidden, bias=False)
        self.img_in_norm = nn.LayerNorm(hidden)
        self.gru = GRUCell(hidden, cfg.deter)
        # posterior: Linear([h, embed]) written as two products so the embed part runs once per batch
        self.post_deter = nn.Linear(cfg.deter, hidden, bias=False)
        self.post_embed = nn.Linear(self.encoder.out_dim, hidden)
        self.post_norm = nn.LayerNorm(hidden)
        self.post_out = nn.Linear(hidden, code)
        self.prior = MLP(cfg.deter, units * classes, hidden, 1)
        self.reward = MLP(feat, cfg.reward_bins, hidden, cfg.layers, zero_out=True)
        self.cont = MLP(feat, 1, hidden, cfg.layers)
        self.register_buffer("reward_grid", symlog_bins(cfg.reward_bins), persistent=False)
        # Units may have alphabets of different sizes (fsq): pad to K and give padding zero mass.
        valid = torch.arange(classes)[None, :] < torch.tensor(quantizer.alphabet)[:, None]  # (U, K)
        self.register_buffer("valid", valid, persistent=False)
        self.register_buffer("uniform", valid / valid.sum(-1, keepdim=True), persistent=False)
        self.ragged = not bool(valid.all())

    # --- the recurrent model ------------------------------------------------------------------------

    def initial(self, batch: int) -> tuple[Latent, Tensor]:
        """The state before an episode's first step, and the 'previous action' (zeros)."""
        device = self.valid.device
        latent = Latent(
            torch.zeros(batch, self.cfg.deter, device=device),
            torch.zeros(batch, self.quantizer.code_size, device=device),
        )
        return latent, torch.zeros(batch, self.action_dim, device=device)

    def recur(self, latent: Latent, action: Tensor) -> Tensor:
        """h_t = GRU(h_{t-1}, [c_{t-1}, a_{t-1}])."""
        x = layer(torch.cat([latent.code, action], -1), self.img_in, self.img_in_norm)
        return self.gru(x, latent.deter)

    def posterior_input(self, deter: Tensor, embed_part: Tensor) -> Tensor:
        x = F.linear(deter, self.post_deter.weight) + embed_part
        x = F.silu(F.layer_norm(x, self.post_norm.normalized_shape, self.post_norm.weight, self.post_norm.bias))
        return F.linear(x, self.post_out.weight, self.post_out.bias)

    def quantize(self, x: Tensor, deterministic: bool, generator) -> tuple[Tensor, object]:
        q = self.quantizer(x.view(*x.shape[:-1], *self.quantizer.input_shape), deterministic=deterministic,
                           generator=generator)  # fmt: skip
        return q.code.flatten(-len(self.quantizer.input_shape)), q

    def prior_probs(self, deter: Tensor) -> Tensor:
        """p(c | h) per unit: (..., D) -> (..., U, K), with a uniform mixture over each unit's own
        alphabet; padding classes of uneven alphabets (fsq) get exactly zero."""
        # float32 even under bfloat16 autocast: codes are sampled from these, and bf16 cannot tell 1% mixes apart
        logits = self.prior(deter).float().view(*deter.shape[:-1], *self.valid.shape)
        if self.ragged:
            logits = logits.masked_fill(~self.valid, -1e9)
        return (1 - self.cfg.unimix) * logits.softmax(-1) + self.cfg.unimix * self.uniform

    def prior_log_probs(self, deter: Tensor) -> Tensor:
        """log p(c | h); padding classes get a large negative value (never -inf, whose gradients are NaN)."""
        probs = self.prior_probs(deter)
        if not self.ragged:
            return probs.log()
        return torch.where(self.valid, torch.where(self.valid, probs, 1.0).log(), -1e9)

    def observe(
        self,
        obs: Tensor,
        action: Tensor,
        is_first: Tensor,
        generator: torch.Generator | None = None,
    ) -> Posterior:
        """Posterior states along replayed sequences.

        obs (B, T, *obs_shape), action (B, T, A) taken after each observation, is_first (B, T).
        """
        batch, steps = is_first.shape
        with batched_precision(self.valid.device, self.bf16):
            embed_part = self.post_embed(self.encoder(obs)).float()  # (B, T, H)
        keep = (~is_first).to(embed_part.dtype).unsqueeze(-1)  # (B, T, 1): 0 resets the state
        latent, prev_action = self.initial(batch)
        deters, codes, indices, log_probs, inputs, aux = [], [], [], [], [], []
        for t in range(steps):
            mask = keep[:, t]
            latent = Latent(latent.deter * mask, latent.code * mask)
            deter = self.recur(latent, prev_action * mask)
            x = self.posterior_input(deter, embed_part[:, t])
            code, q = self.quantize(x, False, generator)
            latent = Latent(deter, code)
            deters.append(deter), codes.append(code), indices.append(q.index), aux.append(q.loss)
            log_probs.append(q.log_probs), inputs.append(x)
            prev_action = action[:, t]
        return Posterior(
            latent=Latent(torch.stack(deters, 1), torch.stack(codes, 1)),
            index=torch.stack(indices, 1),
            log_probs=None if log_probs[0] is None else torch.stack(log_probs, 1),
            inputs=torch.stack(inputs, 1),
            aux_loss=torch.stack(aux).mean(),
        )

    def observe_step(
        self,
        latent: Latent,
        prev_action: Tensor,
        obs: Tensor,
        is_first: Tensor,
        deterministic: bool = False,
        generator: torch.Generator | None = None,
    ) -> Latent:
        """One posterior step while acting: (N, ...) states, obs (N, *obs_shape), is_first (N,)."""
        mask = (~is_first).to(latent.deter.dtype).unsqueeze(-1)
        latent = Latent(latent.deter * mask, latent.code * mask)
        deter = self.recur(latent, prev_action * mask)
        embed_part = self.post_embed(self.encoder(obs))
        code, _ = self.quantize(self.posterior_input(deter, embed_part), deterministic, generator)
        return Latent(deter, code)

    def imagine_step(
        self, latent: Latent, action: Tensor, generator: torch.Generator | None = None, deterministic: bool = False
    ) -> Latent:
        """One prior step: the next code is sampled from p(c | h) with a straight-through gradient
        (deterministic: its most likely code)."""
        deter = self.recur(latent, action)
        probs = self.prior_probs(deter)
        code, _ = self.quantizer.sample_codes(probs, deterministic=deterministic, generator=generator)
        return Latent(deter, code.flatten(-len(self.quantizer.input_shape)))

    @torch.no_grad()
    def open_loop(self, obs: Tensor, action: Tensor, context: int) -> dict[str, Tensor]:
        """What the model imagines after seeing `context` real steps: the posterior over those, then the
        prior's most likely codes under the actions actually taken (open loop, no observations).

        obs (B, T, *obs_shape) with T > context, action (B, T, A). Returns the predicted observations
        (B, T, *obs_shape) (reconstructions for the context, predictions after it), rewards and
        continuation probabilities (B, T).
        """
        steps = obs.shape[1]
        is_first = torch.zeros(obs.shape[:2], dtype=torch.bool, device=obs.device)
        is_first[:, 0] = True
        post = self.observe(obs[:, :context], action[:, :context], is_first[:, :context]).latent
        latents = [Latent(post.deter[:, t], post.code[:, t]) for t in range(context)]
        for t in range(context, steps):
            latents.append(self.imagine_step(latents[-1], action[:, t - 1], deterministic=True))
        feat = torch.stack([latent.features() for latent in latents], 1)
        return {
            "obs": self.decoder(feat).mean(),
            "reward": self.reward_dist(feat).mean(),
            "cont": self.cont_dist(feat).mean(),
        }

    # --- heads and losses ---------------------------------------------------------------------------

    def reward_dist(self, feat: Tensor) -> TwoHot:
        return TwoHot(self.reward(feat), self.reward_grid)

    def cont_dist(self, feat: Tensor) -> Bernoulli:
        return Bernoulli(self.cont(feat).squeeze(-1))

    def loss(
        self, batch: dict[str, Tensor], generator: torch.Generator | None = None
    ) -> tuple[Tensor, dict[str, Tensor], Posterior]:
        """The world-model loss on a batch of sequences.

        batch: obs (B, T, *obs_shape), action (B, T, A), reward, is_first, is_terminal (B, T).
        Returns (total loss, named loss terms, the posterior: its latents start imagination).
        """
        post = self.observe(batch["obs"], batch["action"], batch["is_first"], generator)
        feat = post.latent.features()
        with batched_precision(feat.device, self.bf16):
            prior_logp = self.prior_log_probs(post.latent.deter)  # (B, T, U, K)
            decoded, reward, cont = self.decoder(feat), self.reward_dist(feat), self.cont_dist(feat)
        dyn, rep = self.kl_terms(post.log_probs, post.index, prior_logp)
        cfg = self.cfg
        terms = {
            "decoder": -decoded.log_prob(batch["obs"]).mean(),
            "reward": -reward.log_prob(batch["reward"]).mean(),
            "cont": -cont.log_prob(1.0 - batch["is_terminal"].to(feat.dtype)).mean(),
            "dyn": dyn.clamp_min(cfg.free_bits).mean(),
            "rep": rep.clamp_min(cfg.free_bits).mean(),
            "quantizer": post.aux_loss,
        }
        scales = {"decoder": 1.0, "reward": cfg.reward_scale, "cont": cfg.cont_scale, "dyn": cfg.dyn_scale,
                  "rep": cfg.rep_scale, "quantizer": 1.0}  # fmt: skip
        total = sum(scales[k] * v for k, v in terms.items())
        terms["kl"] = dyn.mean().detach()  # unclipped, for monitoring
        return total, terms, post

    @staticmethod
    def kl_terms(post_logp: Tensor | None, index: Tensor, prior_logp: Tensor) -> tuple[Tensor, Tensor]:
        """(dynamics, representation) losses per step, summed over units: (B, T) each."""
        if post_logp is None:  # point-mass posterior: KL(post || prior) = -log p_prior(index)
            dyn = -prior_logp.gather(-1, index.unsqueeze(-1)).squeeze(-1).sum(-1)
            return dyn, torch.zeros_like(dyn)
        post = post_logp.exp()
        dyn = (post.detach() * (post_logp.detach() - prior_logp)).sum((-2, -1))
        rep = (post * (post_logp - prior_logp.detach())).sum((-2, -1))
        return dyn, rep
