"""Quantizers: discrete codes c = f(e_θ(o)) with straight-through gradients.

Every quantizer's forward value is exactly discrete; its backward pass is a named surrogate gradient.
All share one interface (`Quantizer`) and one output type (`Quantized`), so the world model can use
any of them: the prior predicts, for every discrete *unit* of the code, a categorical distribution
over that unit's alphabet (K classes, L levels or codebook entries).

Shape legend: `...` leading batch dims, G groups, K classes, D dims, U units, R samples.

  name         input -> code            units U   alphabet per unit      paper
  round        (..., D) -> (..., D)     D         2B+1 integer levels    Bengio et al. 2013
  fsq          (..., D) -> (..., D)     D         levels[d]              Mentzer et al. 2023
  binary       (..., D) -> (..., D)     D         2 (-1, +1)             Hubara et al. 2016
  categorical  (..., G, K) -> same      G         K one-hots             Hafner et al. 2023 (DreamerV3)
  gumbel       (..., G, K) -> same      G         K one-hots             Jang et al. 2017
  reinmax      (..., G, K) -> same      G         K one-hots             Liu et al. 2023
  gumbel_rao   (..., G, K) -> same      G         K one-hots             Paulus et al. 2021
  vq           (..., G, D) -> same      G         codebook entries       van den Oord et al. 2017

Each estimator is also a pure function of its inputs and its randomness (`categorical_st`,
`gumbel_st`, `reinmax_st`, `gumbel_rao_st`, ...), so tests and benchmarks can fix the sample.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def straight_through(hard: Tensor, soft: Tensor) -> Tensor:
    """Forward value `hard`, gradient of `soft` (Bengio et al. 2013, arxiv.org/abs/1308.3432).

    The canonical y = x + sg(round(x) - x), written as sg(hard) + (soft - sg(soft)): the same value and
    the same gradient, but the forward value is bit-exact even when soft is far larger than hard.
    """
    return hard.detach() + (soft - soft.detach())


@dataclass
class Quantized:
    """What every quantizer returns.

    code:      float tensor the networks consume; exactly discrete values, shaped like the input.
    index:     int64 (..., U): each unit's position in its alphabet, what the prior predicts.
    alphabet:  size of each unit's alphabet, length U.
    loss:      scalar auxiliary loss (VQ codebook + commitment); zero for the others.
    log_probs: (..., U, K) posterior log-probabilities for the stochastic (categorical-family)
               quantizers, None where the code is a deterministic function of the input.
    """

    code: Tensor
    index: Tensor
    alphabet: tuple[int, ...]
    loss: Tensor
    log_probs: Tensor | None = None


def code_usage(index: Tensor, alphabet: tuple[int, ...]) -> dict[str, float]:
    """usage: fraction of all (unit, symbol) pairs seen in `index` (..., U);
    perplexity: exp of the entropy of each unit's empirical symbol frequencies, averaged over units."""
    units, classes = len(alphabet), max(alphabet)
    flat = index.detach().reshape(-1, units) + torch.arange(units, device=index.device) * classes
    counts = torch.bincount(flat.reshape(-1), minlength=units * classes).view(units, classes).double()
    freq = counts / counts.sum(-1, keepdim=True).clamp_min(1)
    entropy = -(freq * freq.clamp_min(1e-30).log()).sum(-1)
    return {
        "usage": float((counts > 0).sum() / sum(alphabet)),
        "perplexity": float(entropy.exp().mean()),
    }


class Quantizer(nn.Module):
    """The interface every quantizer implements.

    input_shape: the trailing shape forward() takes (the encoder produces prod(input_shape) numbers).
    alphabet:    size of each unit's alphabet (length U).
    """

    input_shape: tuple[int, ...]
    alphabet: tuple[int, ...]

    def forward(self, x: Tensor, *, deterministic: bool = False, generator: torch.Generator | None = None) -> Quantized:
        raise NotImplementedError

    def codes(self, index: Tensor) -> Tensor:
        """The code for alphabet indices (..., U) -> (..., *input_shape). Inverse of `index`."""
        raise NotImplementedError

    def expected_code(self, probs: Tensor) -> Tensor:
        """E_p[code] for per-unit distributions probs (..., U, K): the soft code whose gradient a
        straight-through sample from the prior uses (see `sample_codes`)."""
        raise NotImplementedError

    def anneal(self, progress: float) -> None:
        """Update schedules (e.g. a temperature); progress runs from 0 to 1 over training."""

    def update(self, x: Tensor, index: Tensor, generator: torch.Generator | None = None) -> None:
        """Update the quantizer's own statistics (VQ's codebook averages, usage, dead-code restarts) from a
        whole gradient step's inputs x (..., *input_shape) and their indices (..., U). The trainer calls it
        once per step, after the step is known to be finite; forward() itself never changes state."""

    def sample_codes(
        self, probs: Tensor, *, deterministic: bool = False, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Sample a code from per-unit categorical probabilities (..., U, K), e.g. the world model's prior.

        Returns (code, index). The code is exact; its gradient is that of the expected code
        E_p[code] (for one-hot codes this is DreamerV3's one_hot + p - sg(p)).
        """
        index = probs.argmax(-1) if deterministic else self.draw_index(probs, generator)
        code = self.codes(index).to(probs.dtype)
        if not torch.is_grad_enabled():  # no gradient wanted: skip the surrogate
            return code, index
        return straight_through(code, self.expected_code(probs)), index

    def draw_index(self, probs: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """A sample of each unit's index from probs (..., U, K)."""
        return sample_index(probs, generator)

    @property
    def units(self) -> int:
        return len(self.alphabet)

    @property
    def code_size(self) -> int:
        return math.prod(self.input_shape)


def sample_index(probs: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Categorical sample by inverse CDF: (..., K) -> (...), the number of CDF values below a uniform.

    Much faster than torch.multinomial on CPU (whose exponential_ dominated a training step here)."""
    u = torch.rand((*probs.shape[:-1], 1), generator=generator, device=probs.device, dtype=probs.dtype)
    return (probs.cumsum(-1) < u).sum(-1).clamp_max(probs.shape[-1] - 1)


def one_hot(index: Tensor, classes: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """(...) int64 -> (..., classes) one-hot vectors. A scatter: F.one_hot also checks the indices'
    range, which costs two reductions and two host syncs per call."""
    return torch.zeros((*index.shape, classes), dtype=dtype, device=index.device).scatter_(-1, index.unsqueeze(-1), 1)


# ---------------------------------------------------------------------------------------------------
# Scalar codes


class Round(Quantizer):
    """Straight-through rounding, y = x + sg(round(x) - x), on [-bound, bound].

    Forward: round(clamp(x, -B, B)), half to even as torch.round does (0.5 -> 0, 1.5 -> 2).
    Backward: the upstream gradient unchanged inside [-B, B]; zero outside, where the clamp is flat.
    Alphabet: the 2B+1 integers -B..B, index = code + B.
    """

    def __init__(self, dims: int = 32, bound: int = 2):
        super().__init__()
        if dims < 1 or bound < 1:
            raise ValueError(f"round needs dims >= 1 and bound >= 1, got dims={dims}, bound={bound}")
        self.bound = bound
        self.input_shape = (dims,)
        self.alphabet = (2 * bound + 1,) * dims

    def forward(self, x, *, deterministic=False, generator=None) -> Quantized:
        x = x.clamp(-self.bound, self.bound)
        hard = torch.round(x)
        return Quantized(
            code=straight_through(hard, x),
            index=(hard + self.bound).long(),
            alphabet=self.alphabet,
            loss=x.new_zeros(()),
        )

    def levels(self, dtype=torch.float32, device=None) -> Tensor:
        return torch.arange(-self.bound, self.bound + 1, dtype=dtype, device=device)

    def codes(self, index):
        return (index - self.bound).float()

    def expected_code(self, probs):
        return probs @ self.levels(probs.dtype, probs.device)


class FSQ(Quantizer):
    """Finite scalar quantization (Mentzer et al. 2023, arxiv.org/abs/2309.15505).

    Each dim d is bounded to L_d levels by tanh, then rounded straight-through:
        bound(z) = tanh(z + shift) * h - offset,   h = (L - 1)(1 + eps) / 2,
    with offset = 1/2 and shift = atanh(offset / h) for even L (so that z = 0 maps to 0; a tan in place
    of the atanh would not), offset = shift = 0 for odd L.
    Codes are round(bound(z)) / (L // 2), in [-1, 1]; index = round(bound(z)) + L // 2 in [0, L).
    The implied codebook has prod(L) entries; `flat_index`/`unflat_index` convert both ways.
    """

    def __init__(self, levels: tuple[int, ...] | list[int] = (8, 5, 5, 5), eps: float = 1e-3):
        super().__init__()
        levels = tuple(int(n) for n in levels)
        if not levels or min(levels) < 2:
            raise ValueError(f"fsq levels must all be >= 2, got {levels}")
        self.input_shape = (len(levels),)
        self.alphabet = levels
        L = torch.tensor(levels, dtype=torch.float64)
        half_l = (L - 1) * (1 + eps) / 2
        offset = torch.where(L % 2 == 0, 0.5, 0.0)
        self.register_buffer("half_l", half_l.float(), persistent=False)
        self.register_buffer("offset", offset.float(), persistent=False)
        self.register_buffer("shift", torch.atanh(offset / half_l).float(), persistent=False)
        self.register_buffer("half_width", (L // 2).float(), persistent=False)
        self.register_buffer("last_index", torch.tensor(levels) - 1, persistent=False)
        basis = torch.cumprod(torch.tensor((1, *levels[:-1])), 0)
        self.register_buffer("basis", basis, persistent=False)
        self.codebook_size = math.prod(levels)

    def bound(self, z: Tensor) -> Tensor:
        return torch.tanh(z + self.shift) * self.half_l - self.offset

    def forward(self, z, *, deterministic=False, generator=None) -> Quantized:
        bounded = self.bound(z)
        hard = torch.round(bounded)
        return Quantized(
            code=straight_through(hard / self.half_width, bounded / self.half_width),
            index=(hard + self.half_width).long(),
            alphabet=self.alphabet,
            loss=z.new_zeros(()),
        )

    def codes(self, index):
        return (index - self.half_width) / self.half_width

    def draw_index(self, probs, generator=None):
        # Where a unit's float32 CDF ends a few ulp short of 1, inverse-CDF sampling can land past its last
        # level (about once in 1e7 draws) on a padding class of zero mass: that is the last level.
        return torch.minimum(sample_index(probs, generator), self.last_index)

    def indices(self, code: Tensor) -> Tensor:
        """Per-dim indices (..., D) of codes on the level grid: the inverse of `codes`."""
        return torch.round(code * self.half_width + self.half_width).long()

    def flat_index(self, index: Tensor) -> Tensor:
        """(..., D) per-dim indices -> (...) index into the implied codebook of prod(L) entries."""
        return (index * self.basis).sum(-1)

    def unflat_index(self, flat: Tensor) -> Tensor:
        """(...) codebook index -> (..., D) per-dim indices."""
        levels = torch.tensor(self.alphabet, device=flat.device)
        return (flat.unsqueeze(-1) // self.basis) % levels

    def expected_code(self, probs):
        # probs (..., D, Lmax): dims with fewer levels than Lmax give the padding classes zero mass.
        grid = torch.arange(probs.shape[-1], device=probs.device, dtype=probs.dtype)  # (Lmax,)
        values = (grid - self.half_width[:, None]) / self.half_width[:, None]  # (D, Lmax)
        return (probs * values).sum(-1)


class Binary(Quantizer):
    """Sign with a straight-through gradient (Bengio et al. 2013; clipped: Hubara et al. 2016).

    Forward: +1 where x >= 0 (also at exactly 0, unlike torch.sign), -1 elsewhere; index 1 / 0.
    Backward: the upstream gradient (clip=False), or the gradient of clamp(x, -1, 1), which passes it
    where |x| <= 1 and zeroes it outside (clip=True, the binary-network variant).
    """

    def __init__(self, dims: int = 32, clip: bool = False):
        super().__init__()
        if dims < 1:
            raise ValueError(f"binary needs dims >= 1, got {dims}")
        self.clip = clip
        self.input_shape = (dims,)
        self.alphabet = (2,) * dims

    def forward(self, x, *, deterministic=False, generator=None) -> Quantized:
        positive = x >= 0
        hard = torch.where(positive, 1.0, -1.0).to(x.dtype)
        soft = x.clamp(-1, 1) if self.clip else x
        return Quantized(
            code=straight_through(hard, soft),
            index=positive.long(),
            alphabet=self.alphabet,
            loss=x.new_zeros(()),
        )

    def codes(self, index):
        return index.float() * 2 - 1

    def expected_code(self, probs):
        return probs[..., 1] - probs[..., 0]


# ---------------------------------------------------------------------------------------------------
# Categorical codes: G groups of K classes, one-hot codes


def unimix_probs(logits: Tensor, unimix: float) -> tuple[Tensor, Tensor]:
    """(p, log p) of p = (1 - u) softmax(logits) + u / K: DreamerV3's 1% uniform mixture keeps every
    class possible, which bounds KL terms and log-probabilities."""
    if unimix == 0:
        logp = logits.log_softmax(-1)
        return logp.exp(), logp
    probs = (1 - unimix) * logits.softmax(-1) + unimix / logits.shape[-1]
    return probs, probs.log()


def categorical_st(probs: Tensor, index: Tensor) -> Tensor:
    """Straight-through categorical: one_hot(index) forward, gradient of probs (DreamerV3)."""
    return straight_through(one_hot(index, probs.shape[-1], probs.dtype), probs)


def gumbel_noise(shape, generator=None, device=None, dtype=torch.float32) -> Tensor:
    """Standard Gumbel samples -log(-log(u)), u clamped away from 0 so they stay finite."""
    u = torch.rand(shape, generator=generator, device=device, dtype=dtype)
    return -torch.log(-torch.log(u.clamp_min(torch.finfo(dtype).tiny)))


def gumbel_st(logits: Tensor, noise: Tensor, tau: float) -> tuple[Tensor, Tensor]:
    """Straight-through Gumbel-Softmax (Jang et al. 2017, arxiv.org/abs/1611.01144).

    Forward: one_hot(argmax(logits + g)); backward: gradient of softmax((logits + g) / tau).
    Returns (code, index)."""
    perturbed = logits + noise
    index = perturbed.argmax(-1)
    soft = (perturbed / tau).softmax(-1)
    return straight_through(one_hot(index, logits.shape[-1], soft.dtype), soft), index


def reinmax_st(logits: Tensor, index: Tensor, tau: float) -> Tensor:
    """ReinMax (Liu et al. 2023, arxiv.org/abs/2304.08612): second-order straight-through.

    With D = one_hot(index), p0 = softmax(logits), p1 = (D + softmax(logits / tau)) / 2, the
    gradient is 2 J(p1) g - 1/2 J(p0) g with J(p) = diag(p) - p p^T (Heun's method where plain
    straight-through is Euler's). The forward value is D.
    """
    sample = one_hot(index, logits.shape[-1], logits.dtype)
    p0 = logits.softmax(-1)
    p1 = 0.5 * (sample + (logits / tau).softmax(-1))
    # softmax(sg(log p1 - logits) + logits) equals p1 and has the Jacobian J(p1) w.r.t. logits.
    p1 = (torch.log(p1) - logits).detach().add(logits).softmax(-1)
    return straight_through(sample, 2 * p1 - 0.5 * p0)


@torch.no_grad()
def conditional_gumbel(logits: Tensor, index: Tensor, samples: int, generator: torch.Generator | None = None) -> Tensor:
    """R samples of logits + Gumbel noise conditioned on argmax == index: (..., K) -> (R, ..., K).

    Top-down construction (Maddison et al. 2014): the maximum is -log E_k + log Z, every other class
    -log(E_i exp(-logits_i) + E_k / Z), with E iid Exp(1); computed in log space to stay finite.
    """
    shape = (samples, *logits.shape)
    exp_noise = -torch.log(
        torch.rand(shape, generator=generator, device=logits.device, dtype=logits.dtype).clamp_min(
            torch.finfo(logits.dtype).tiny
        )
    )
    log_e = exp_noise.log()
    log_z = logits.logsumexp(-1, keepdim=True)
    log_e_top = log_e.gather(-1, index.unsqueeze(-1).expand(samples, *index.shape, 1))
    top = log_z - log_e_top
    others = -torch.logaddexp(log_e - logits, log_e_top - log_z)
    chosen = F.one_hot(index, logits.shape[-1]).bool()
    return torch.where(chosen, top, others)


def gumbel_rao_st(logits: Tensor, index: Tensor, perturbed: Tensor, tau: float) -> Tensor:
    """Gumbel-Rao (Paulus et al. 2021, arxiv.org/abs/2010.04838): ST-Gumbel's gradient averaged over
    R conditional Gumbel draws given the sample, E[grad softmax((logits + g) / tau) | argmax = index].

    `perturbed` (R, ..., K) comes from `conditional_gumbel`. Its noise is held fixed (no gradient
    through the conditional sampling), which keeps the expectation equal to ST-Gumbel's.
    """
    noise = (perturbed - logits).detach()
    soft = ((logits + noise) / tau).softmax(-1).mean(0)
    return straight_through(one_hot(index, logits.shape[-1], soft.dtype), soft)


class Categorical(Quantizer):
    """Straight-through categorical (DreamerV3): logits (..., G, K) -> one-hot codes (..., G, K).

    A one-hot is sampled from the unimix probabilities p and the gradient is that of p:
    one_hot + p - sg(p). deterministic=True takes the argmax (evaluation).
    The subclasses change only the surrogate gradient; the forward value is always a one-hot.
    """

    def __init__(self, groups: int = 16, classes: int = 16, unimix: float = 0.01):
        super().__init__()
        if groups < 1 or classes < 2:
            raise ValueError(f"needs groups >= 1 and classes >= 2, got groups={groups}, classes={classes}")
        if not 0 <= unimix < 1:
            raise ValueError(f"unimix must be in [0, 1), got {unimix}")
        self.unimix = unimix
        self.input_shape = (groups, classes)
        self.alphabet = (classes,) * groups

    def forward(self, logits, *, deterministic=False, generator=None) -> Quantized:
        # float32 even under bfloat16 autocast: bf16 probabilities would sample rare classes at the wrong rate
        probs, logp = unimix_probs(logits.float(), self.unimix)
        code, index = self.estimate(probs, logp, deterministic, generator)
        return Quantized(code=code, index=index, alphabet=self.alphabet, loss=logp.new_zeros(()), log_probs=logp)

    def estimate(self, probs: Tensor, logp: Tensor, deterministic: bool, generator) -> tuple[Tensor, Tensor]:
        index = probs.argmax(-1) if deterministic else sample_index(probs, generator)
        return categorical_st(probs, index), index

    def codes(self, index):
        return one_hot(index, self.input_shape[-1])

    def expected_code(self, probs):
        return probs


class Gumbel(Categorical):
    """Straight-through Gumbel-Softmax with temperature tau, optionally annealed exponentially
    from `tau` to `tau_final` over training (Jang et al. 2017). deterministic=True: no noise."""

    def __init__(self, groups=16, classes=16, unimix=0.01, tau: float = 1.0, tau_final: float | None = None):
        super().__init__(groups, classes, unimix)
        if tau <= 0 or (tau_final is not None and tau_final <= 0):
            raise ValueError(f"gumbel temperatures must be > 0, got tau={tau}, tau_final={tau_final}")
        self.tau_start = self.tau = tau
        self.tau_final = tau_final

    def anneal(self, progress: float) -> None:
        if self.tau_final is not None:
            self.tau = self.tau_start * (self.tau_final / self.tau_start) ** min(max(progress, 0.0), 1.0)

    def estimate(self, probs, logp, deterministic, generator):
        noise = (
            torch.zeros_like(logp) if deterministic else gumbel_noise(logp.shape, generator, logp.device, logp.dtype)
        )
        return gumbel_st(logp, noise, self.tau)


class ReinMax(Categorical):
    """ReinMax (Liu et al. 2023): second-order accurate straight-through; tau >= 1 as in the paper."""

    def __init__(self, groups=16, classes=16, unimix=0.01, tau: float = 1.0):
        super().__init__(groups, classes, unimix)
        if tau < 1:
            raise ValueError(f"reinmax needs tau >= 1, got {tau}")
        self.tau = tau

    def estimate(self, probs, logp, deterministic, generator):
        index = probs.argmax(-1) if deterministic else sample_index(probs, generator)
        return reinmax_st(logp, index, self.tau), index


class GumbelRao(Gumbel):
    """Gumbel-Rao (Paulus et al. 2021): ST-Gumbel averaged over `samples` conditional Gumbel draws."""

    def __init__(self, groups=16, classes=16, unimix=0.01, tau=1.0, tau_final=None, samples: int = 8):
        super().__init__(groups, classes, unimix, tau, tau_final)
        if samples < 1:
            raise ValueError(f"gumbel_rao needs samples >= 1, got {samples}")
        self.samples = samples

    def estimate(self, probs, logp, deterministic, generator):
        if deterministic:
            index = probs.argmax(-1)
            perturbed = logp.detach().unsqueeze(0)
        else:
            index = sample_index(probs, generator)
            perturbed = conditional_gumbel(logp, index, self.samples, generator)
        return gumbel_rao_st(logp, index, perturbed, self.tau), index


# ---------------------------------------------------------------------------------------------------
# Vector codes


def rotate_to(e: Tensor, q: Tensor, eps: float = 1e-8) -> Tensor:
    """The rotation trick (Fifty et al. 2024, arxiv.org/abs/2410.06424): λ R e with λ = |q| / |e| and
    R the rotation taking e's direction to q's, both held constant. Its value is q; its gradient
    w.r.t. e is λ R^T g, which keeps the angle between the gradient and the code."""
    e_norm = e.norm(dim=-1, keepdim=True).clamp_min(eps)
    q_norm = q.norm(dim=-1, keepdim=True).clamp_min(eps)
    e_hat, q_hat = (e / e_norm).detach(), (q / q_norm).detach()
    r = e_hat + q_hat
    r = (r / r.norm(dim=-1, keepdim=True).clamp_min(eps)).detach()
    rotated = e - 2 * r * (r * e).sum(-1, keepdim=True) + 2 * q_hat * (e_hat * e).sum(-1, keepdim=True)
    return (q_norm / e_norm).detach() * rotated


class VectorQuantizer(Quantizer):
    """Vector quantization (van den Oord et al. 2017, arxiv.org/abs/1711.00937): (..., G, D) inputs,
    each group replaced by its nearest entry of a shared codebook of `codebook_size` rows.

    Gradient: straight-through (identity) or the rotation trick (`rotation=True`).
    Codebook: learned by the codebook loss |sg(e) - q|^2 (`ema=False`) or by exponential moving
    averages of assigned inputs (`ema=True`); `beta` weighs the commitment loss |e - sg(q)|^2.
    Dead codes: `usage` tracks an EMA of assignments per entry; in training, entries whose usage falls
    below `dead_threshold` are restarted at random inputs of the batch.
    """

    def __init__(
        self,
        groups: int = 8,
        dims: int = 16,
        codebook_size: int = 64,
        beta: float = 0.25,
        rotation: bool = False,
        ema: bool = False,
        decay: float = 0.99,
        dead_threshold: float = 1e-3,
    ):
        super().__init__()
        if groups < 1 or dims < 1 or codebook_size < 2:
            raise ValueError(
                f"vq needs groups >= 1, dims >= 1, codebook_size >= 2; got {groups}, {dims}, {codebook_size}"
            )
        if not 0 < decay < 1:
            raise ValueError(f"vq decay must be in (0, 1), got {decay}")
        self.input_shape = (groups, dims)
        self.alphabet = (codebook_size,) * groups
        self.beta, self.rotation, self.ema = beta, rotation, ema
        self.decay, self.dead_threshold = decay, dead_threshold
        self.codebook = nn.Parameter(torch.randn(codebook_size, dims), requires_grad=not ema)
        self.register_buffer("usage", torch.full((codebook_size,), 1.0 / codebook_size))
        self.register_buffer("ema_sum", self.codebook.detach().clone())
        self.register_buffer("ema_count", torch.ones(codebook_size))

    def nearest(self, e: Tensor) -> Tensor:
        """Index of the nearest codebook row (squared Euclidean distance): (..., D) -> (...)."""
        book = self.codebook.detach()
        dist = (e.detach() ** 2).sum(-1, keepdim=True) - 2 * e.detach() @ book.T + (book**2).sum(-1)
        return dist.argmin(-1)

    def forward(self, e, *, deterministic=False, generator=None) -> Quantized:
        e = e.to(self.codebook.dtype)  # quantisation stays in the codebook's precision under autocast
        index = self.nearest(e)
        q = F.embedding(index, self.codebook)  # (..., G, D), carries gradient to the codebook rows
        loss = self.beta * F.mse_loss(e, q.detach())
        if not self.ema:
            loss = loss + F.mse_loss(q, e.detach())
        soft = rotate_to(e, q.detach()) if self.rotation else e
        return Quantized(code=straight_through(q, soft), index=index, alphabet=self.alphabet, loss=loss)

    @torch.no_grad()
    def update(self, x: Tensor, index: Tensor, generator: torch.Generator | None = None) -> None:
        """One step of the usage EMA (and, with ema=True, of the codebook's averages) from all of a gradient
        step's assignments; entries whose usage fell below `dead_threshold` restart at random inputs."""
        flat, index = x.detach().float().reshape(-1, self.input_shape[-1]), index.reshape(-1)  # (N, D), (N,)
        onehot = one_hot(index, self.alphabet[0], flat.dtype)  # (N, C)
        counts = onehot.sum(0)
        self.usage.lerp_(counts / counts.sum(), 1 - self.decay)
        if self.ema:
            self.ema_count.lerp_(counts, 1 - self.decay)
            self.ema_sum.lerp_(onehot.T @ flat, 1 - self.decay)
            self.codebook.copy_(self.ema_sum / self.ema_count.clamp_min(1e-5).unsqueeze(-1))
        # restarts as masked writes: no host sync on a GPU (a random input is drawn for every entry)
        dead = self.usage < self.dead_threshold  # (C,)
        restart = flat[torch.randint(len(flat), dead.shape, generator=generator, device=flat.device)]  # (C, D)
        self.codebook.copy_(torch.where(dead[:, None], restart, self.codebook))
        self.ema_sum.copy_(torch.where(dead[:, None], restart, self.ema_sum))
        self.ema_count.copy_(torch.where(dead, 1.0, self.ema_count))
        self.usage.copy_(torch.where(dead, 1.0 / self.alphabet[0], self.usage))

    def dead_codes(self) -> int:
        return int((self.usage < self.dead_threshold).sum())

    def codes(self, index):
        return F.embedding(index, self.codebook)

    def expected_code(self, probs):
        # The codebook learns from its own losses only, not from gradients through imagined codes.
        return probs @ self.codebook.detach()


# ---------------------------------------------------------------------------------------------------

QUANTIZERS: dict[str, type[Quantizer]] = {
    "round": Round,
    "fsq": FSQ,
    "binary": Binary,
    "categorical": Categorical,
    "gumbel": Gumbel,
    "reinmax": ReinMax,
    "gumbel_rao": GumbelRao,
    "vq": VectorQuantizer,
}


MAX_SIZE = 2**20  # numbers in a code (or symbols in an alphabet) that a quantizer may be built with


def options_of(name: str) -> dict[str, object]:
    """The options a quantizer takes, with their defaults."""
    params = inspect.signature(QUANTIZERS[name].__init__).parameters
    return {k: p.default for k, p in params.items() if k != "self"}


def make(name: str, **options) -> Quantizer:
    """A quantizer by name, e.g. make("fsq", levels=(8, 5, 5, 5)); every option has a default."""
    if name not in QUANTIZERS:
        raise ValueError(f"unknown quantizer {name!r}; choose one of: {', '.join(QUANTIZERS)}")
    unknown = set(options) - set(options_of(name))
    if unknown:
        raise ValueError(
            f"quantizer {name!r} has no option {', '.join(sorted(unknown))}; "
            f"its options are: {', '.join(options_of(name))}"
        )
    size_options = ("groups", "classes", "dims", "codebook_size")
    sizes = [v for k, v in options.items() if k in size_options and isinstance(v, int)]
    levels = options.get("levels", ())
    if math.prod(sizes) > MAX_SIZE or (isinstance(levels, tuple | list) and len(levels) > MAX_SIZE):
        raise ValueError(f"quantizer {name!r}: the code would hold more than {MAX_SIZE:,} numbers")
    return QUANTIZERS[name](**options)
