"""Networks and output distributions (after DreamerV3, Hafner et al. 2023, arxiv.org/abs/2301.04104).

On a 2-core CPU the cost of a small model is per-op overhead, not arithmetic, so the forward passes
call torch.nn.functional directly on the modules' parameters instead of going through each
submodule's __call__.
"""

from __future__ import annotations

import copy
import itertools
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from agent.quantize import one_hot, sample_index, unimix_probs


def batched_precision(device: torch.device, bf16: bool):
    """bfloat16 matrix products and convolutions (torch.autocast) for the batched parts of an update: the
    encoder, the decoder, the heads over every replayed or imagined state, and the imagined rollouts
    (batched over their start states) where the actor does not learn through them (REINFORCE: discrete actions).
    Their outputs go to the output distributions, which compute in
    float32. The recurrent state stays float32 (GRUCell adds its bf16 update to the float32 state, so
    rounding does not compound along a rollout); the replayed posterior loop, at batch 16, runs in
    float32, where bf16 measured slower."""
    return torch.autocast(device.type, torch.bfloat16, enabled=bf16)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 matrices in hardware (AMX or AVX512-BF16, Linux's flags)."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def use_bf16(precision: str, device: torch.device) -> bool:
    """model.precision resolved for a device: auto is bfloat16 where the hardware has it natively."""
    if precision != "auto":
        return precision == "bfloat16"
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_native_bf16()


def symlog(x: Tensor) -> Tensor:
    """sign(x) log(1 + |x|): compresses large magnitudes, identity-like near 0 (DreamerV3)."""
    return torch.sign(x) * torch.log1p(x.abs())


def symexp(x: Tensor) -> Tensor:
    """The inverse of symlog."""
    return torch.sign(x) * torch.expm1(x.abs())


def layer(x: Tensor, linear: nn.Linear, norm: nn.LayerNorm) -> Tensor:
    """Linear -> LayerNorm -> SiLU, DreamerV3's hidden layer."""
    x = F.linear(x, linear.weight, linear.bias)
    return F.silu(F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps))


class MLP(nn.Module):
    """`layers` hidden layers of Linear -> LayerNorm -> SiLU, then a linear output of size `out`.

    zero_out=True initialises the output layer at zero, so a head starts by predicting exactly 0
    (DreamerV3 does this for the reward and critic heads to avoid large early predictions).
    """

    def __init__(self, inp: int, out: int, hidden: int, layers: int, zero_out: bool = False):
        super().__init__()
        sizes = [inp] + [hidden] * layers
        self.hidden = nn.ModuleList(nn.Linear(a, b, bias=False) for a, b in itertools.pairwise(sizes))
        self.norms = nn.ModuleList(nn.LayerNorm(b) for b in sizes[1:])
        self.out = nn.Linear(sizes[-1], out)
        if zero_out:
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor) -> Tensor:
        for linear, norm in zip(self.hidden, self.norms, strict=True):
            x = layer(x, linear, norm)
        return F.linear(x, self.out.weight, self.out.bias)


class GRUCell(nn.Module):
    """Layer-normalised GRU (DreamerV3): [r, c, u] = LN(W [x, h]),
    h' = σ(u - 1) ⊙ tanh(σ(r) ⊙ c) + (1 - σ(u - 1)) ⊙ h. The -1 bias keeps the state at init."""

    def __init__(self, inp: int, size: int):
        super().__init__()
        self.linear = nn.Linear(inp + size, 3 * size, bias=False)
        self.norm = nn.LayerNorm(3 * size)

    def forward(self, x: Tensor, h: Tensor) -> Tensor:
        parts = F.layer_norm(
            F.linear(torch.cat([x, h], -1), self.linear.weight),
            self.norm.normalized_shape,
            self.norm.weight,
            self.norm.bias,
            self.norm.eps,
        )
        reset, cand, update = parts.chunk(3, -1)
        cand = torch.tanh(torch.sigmoid(reset) * cand)
        update = torch.sigmoid(update - 1)
        return h + update * (cand - h)


# ---------------------------------------------------------------------------------------------------
# Output distributions: each has mean() (a prediction) and log_prob(target) (the loss is its negative).


def twohot_weights(x: Tensor, bins: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The two nearest bins of x (...,) among sorted bins (K,) and the weight of the upper one:
    (lower, upper, w_upper), chosen so that the weighted bin value is exactly x (inside the range)."""
    x = x.clamp(bins[0], bins[-1])
    upper = torch.searchsorted(bins, x.detach().contiguous().unsqueeze(-1)).squeeze(-1).clamp(1, len(bins) - 1)
    lower = upper - 1
    low, high = bins[lower], bins[upper]
    return lower, upper, (x - low) / (high - low)


class TwoHot:
    """A categorical over fixed bins in symlog space, trained with two-hot targets (DreamerV3's
    reward and critic heads): robust to the scale of rewards and returns."""

    def __init__(self, logits: Tensor, bins: Tensor):
        self.logits, self.bins = logits.float(), bins

    def mean(self) -> Tensor:
        return symexp(self.logits.softmax(-1) @ self.bins)

    def log_prob(self, target: Tensor) -> Tensor:
        """log p of the two-hot encoding of symlog(target): the two bins' log-probabilities, weighted."""
        lower, upper, w_upper = twohot_weights(symlog(target), self.bins)
        logp = self.logits.log_softmax(-1)
        at = torch.stack([lower, upper], -1)  # (..., 2)
        pair = logp.gather(-1, at)
        return pair[..., 0] * (1 - w_upper) + pair[..., 1] * w_upper


def symlog_bins(count: int, limit: float = 20.0) -> Tensor:
    return torch.linspace(-limit, limit, count)


class Bernoulli:
    """Binary outcome from a logit, e.g. continuation (1 - terminal)."""

    def __init__(self, logits: Tensor):
        self.logits = logits.float()

    def mean(self) -> Tensor:
        return torch.sigmoid(self.logits)

    def log_prob(self, target: Tensor) -> Tensor:
        return -F.binary_cross_entropy_with_logits(self.logits, target, reduction="none")


class SymlogMSE:
    """Vector prediction in symlog space: log_prob is minus the squared error summed over dims."""

    def __init__(self, pred: Tensor):
        self.pred = pred.float()

    def mean(self) -> Tensor:
        return symexp(self.pred)

    def log_prob(self, target: Tensor) -> Tensor:
        return -((self.pred - symlog(target)) ** 2).sum(-1)


def gumbel_from_normal(z: Tensor) -> Tensor:
    """Standard-normal values -> standard-Gumbel ones of the same ranks: -log(-log U) for U = Phi(z).
    log_ndtr in float64 stays finite for any |z| < 38 (far beyond what a normal draws), and on the CPU,
    since some devices (Apple's mps) have no float64; the result is float32 (ample) on the CPU."""
    return (-torch.log(-torch.special.log_ndtr(z.detach().to("cpu", torch.float64)))).float()


class OneHotPolicy:
    """Discrete actions as one-hot vectors: a categorical with a 1% uniform mixture (DreamerV3)."""

    def __init__(self, logits: Tensor, unimix: float = 0.01):
        self.probs, self.logp = unimix_probs(logits.float(), unimix)  # float32 under autocast: see quantize

    def sample(self, generator: torch.Generator | None = None, noise: Tensor | None = None) -> Tensor:
        """noise (..., K): one standard-normal value per action (e.g. colored along an episode; agent.noise),
        turned into Gumbel noise with the same ranks. argmax(log p + Gumbel) is a sample of p (Gumbel-max):
        over the noise's own randomness each step keeps the policy's distribution, while noise correlated
        along an episode keeps choosing alike where the policy is unsure (runs of one action)."""
        if noise is None:
            index = sample_index(self.probs, generator)
        else:
            index = (self.logp + gumbel_from_normal(noise).to(self.logp.device)).argmax(-1)
        return one_hot(index, self.probs.shape[-1], self.probs.dtype)

    def mode(self) -> Tensor:
        return one_hot(self.probs.argmax(-1), self.probs.shape[-1], self.probs.dtype)

    def log_prob(self, action: Tensor) -> Tensor:
        return (action * self.logp).sum(-1)

    def entropy(self) -> Tensor:
        return -(self.probs * self.logp).sum(-1)


class BoundedNormal:
    """Continuous actions in [-1, 1]: a normal with tanh-squashed mean and a std kept in
    [min_std, max_std]; samples are clipped to the box (DreamerV3's bounded normal). sample() is
    reparameterised, so an actor can backpropagate through it."""

    def __init__(self, out: Tensor, min_std: float = 0.1, max_std: float = 1.0):
        mean, std = out.float().chunk(2, -1)
        self.loc = torch.tanh(mean)
        self.std = (max_std - min_std) * torch.sigmoid(std + 2.0) + min_std

    def sample(self, generator: torch.Generator | None = None, noise: Tensor | None = None) -> Tensor:
        """noise: standard-normal values to use (e.g. colored along an episode; agent.noise), else drawn."""
        if noise is None:
            noise = torch.randn(self.loc.shape, generator=generator, device=self.loc.device, dtype=self.loc.dtype)
        else:  # given noise (acting) arrives on the CPU; imagination's own draws need no move
            noise = noise.to(self.loc.device, self.loc.dtype)
        return (self.loc + self.std * noise).clamp(-1, 1)

    def mode(self) -> Tensor:
        return self.loc

    def log_prob(self, action: Tensor) -> Tensor:
        """Log-likelihood of clipped actions: the normal's density inside the box, and at a bound the log of the
        mass clipped onto it (a censored normal). A score-function gradient needs the likelihood of what was
        sampled: the density at a bound would take every clipped sample for one just at the bound, and the
        std's score would then have a negative mean (about -0.4 / std at the initial policy, 26% of whose
        samples are clipped), narrowing the std wherever advantages are positive on average."""
        z = (action - self.loc) / self.std
        density = -0.5 * z**2 - self.std.log() - 0.5 * math.log(2 * math.pi)
        above = torch.special.log_ndtr((self.loc - 1) / self.std)  # log P(sample >= 1)
        below = torch.special.log_ndtr((-1 - self.loc) / self.std)  # log P(sample <= -1)
        return torch.where(action >= 1, above, torch.where(action <= -1, below, density)).sum(-1)

    def entropy(self) -> Tensor:
        return (0.5 + 0.5 * math.log(2 * math.pi) + self.std.log()).sum(-1)

    def detached(self, loc: bool = False, std: bool = False) -> BoundedNormal:
        """The same distribution with gradients stopped at its mean and/or its std."""
        out = copy.copy(self)
        out.loc, out.std = (self.loc.detach() if loc else self.loc), (self.std.detach() if std else self.std)
        return out


# ---------------------------------------------------------------------------------------------------
# Observation encoders and decoders, chosen from the observation's shape: vectors (O,) or images (C, H, W).


class VectorEncoder(nn.Module):
    """symlog(obs) -> MLP -> embedding (DreamerV3's vector encoder)."""

    def __init__(self, obs_dim: int, hidden: int, layers: int):
        super().__init__()
        self.mlp = MLP(obs_dim, hidden, hidden, layers)
        self.out_dim = hidden

    def forward(self, obs: Tensor) -> Tensor:
        return self.mlp(symlog(obs.float()))


class VectorDecoder(nn.Module):
    def __init__(self, feat_dim: int, obs_dim: int, hidden: int, layers: int):
        super().__init__()
        self.mlp = MLP(feat_dim, obs_dim, hidden, layers)

    def forward(self, feat: Tensor) -> SymlogMSE:
        return SymlogMSE(self.mlp(feat))


def channels_last(x: Tensor) -> Tensor:
    """Images stored channels-last (NHWC), the layout oneDNN's (and cuDNN's bf16) convolutions run in natively:
    with weights and inputs in it, no layout conversion runs around each convolution. Values are unchanged;
    the pixel CartPole update measured 1.04x faster on the CPU, MinAtar's (10x10 frames) the same."""
    return x.contiguous(memory_format=torch.channels_last)


def conv_stages(size: int) -> int:
    """Stride-2 stages that bring an image side down to at most 6 pixels."""
    stages = 0
    while size > 6:
        size = (size + 1) // 2
        stages += 1
    return stages


class ConvEncoder(nn.Module):
    """uint8 images (..., C, H, W) -> embedding: stride-2 4x4 convolutions (GroupNorm, SiLU) that halve the
    side until it is at most 6 pixels, doubling the channels; a stride-1 3x3 convolution first for
    small images (MinAtar's 10x10), which would otherwise get a single stage."""

    def __init__(self, obs_shape: tuple[int, int, int], depth: int):
        super().__init__()
        channels, height, width = obs_shape
        stages = conv_stages(min(height, width))
        convs: list[nn.Module] = []
        if stages < 2:
            convs += [nn.Conv2d(channels, depth, 3, 1, 1), nn.GroupNorm(1, depth), nn.SiLU()]
            channels = depth
        for i in range(stages):
            out = depth * 2**i
            convs += [nn.Conv2d(channels, out, 4, 2, 1), nn.GroupNorm(1, out), nn.SiLU()]
            channels = out
        self.convs = nn.Sequential(*convs)
        with torch.no_grad():
            self.out_shape = tuple(self.convs(torch.zeros(1, *obs_shape)).shape[1:])
        self.out_dim = int(torch.tensor(self.out_shape).prod())
        self.to(memory_format=torch.channels_last)  # see channels_last

    def forward(self, obs: Tensor) -> Tensor:
        lead = obs.shape[:-3]
        x = obs.reshape(-1, *obs.shape[-3:]).float() / 255.0 - 0.5
        return self.convs(channels_last(x)).reshape(*lead, self.out_dim)


class ImageMSE:
    """Image prediction in [-0.5, 0.5]: log_prob is minus the squared error summed over pixels."""

    def __init__(self, pred: Tensor):
        self.pred = pred.float()

    def mean(self) -> Tensor:
        return ((self.pred + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)

    def log_prob(self, target: Tensor) -> Tensor:
        return -((self.pred - (target.float() / 255.0 - 0.5)) ** 2).sum((-3, -2, -1))


class ImageBernoulli:
    """Binary images (MinAtar's cells, 0 or 255): an independent Bernoulli per pixel, from logits. Its log_prob
    is a log-likelihood in nats, as the KL terms are: a lit cell predicted at p = 0.01 costs 4.6 nats, where
    ImageMSE charges a dark guess of a lit cell 1 and a half-lit one 0.25, so a one-cell object placed only
    roughly costs little there. On images that are not binary it is a cross-entropy, not a likelihood."""

    def __init__(self, logits: Tensor):
        self.logits = logits.float()

    def mean(self) -> Tensor:
        return (torch.sigmoid(self.logits) * 255).round().to(torch.uint8)

    def log_prob(self, target: Tensor) -> Tensor:
        cells = F.binary_cross_entropy_with_logits(self.logits, target.float() / 255.0, reduction="none")
        return -cells.sum((-3, -2, -1))


IMAGE_LIKELIHOODS = {"mse": ImageMSE, "bernoulli": ImageBernoulli}  # model.image_likelihood


class ConvDecoder(nn.Module):
    """features -> image: a linear layer to the encoder's last feature map, then transposed
    convolutions that mirror the encoder's stages."""

    def __init__(self, feat_dim: int, obs_shape: tuple[int, int, int], encoder: ConvEncoder, likelihood: str = "mse"):
        super().__init__()
        self.obs_shape = obs_shape
        if likelihood not in IMAGE_LIKELIHOODS:
            raise ValueError(f"image likelihood must be one of {', '.join(IMAGE_LIKELIHOODS)}, got {likelihood!r}")
        self.likelihood = IMAGE_LIKELIHOODS[likelihood]
        self.start_shape = encoder.out_shape
        self.linear = nn.Linear(feat_dim, encoder.out_dim)
        layers: list[nn.Module] = []
        convs = [m for m in encoder.convs if isinstance(m, nn.Conv2d)]
        for i, conv in enumerate(reversed(convs)):
            last = i == len(convs) - 1
            out = obs_shape[0] if last else conv.in_channels
            if conv.stride[0] == 2:
                layers.append(nn.ConvTranspose2d(conv.out_channels, out, 4, 2, 1))
            else:
                layers.append(nn.Conv2d(conv.out_channels, out, 3, 1, 1))
            if not last:
                layers += [nn.GroupNorm(1, out), nn.SiLU()]
        self.deconvs = nn.Sequential(*layers)
        self.to(memory_format=torch.channels_last)  # see channels_last (only 4-d weights change)

    def forward(self, feat: Tensor) -> ImageMSE | ImageBernoulli:
        lead = feat.shape[:-1]
        x = self.linear(feat).reshape(-1, *self.start_shape)
        image = self.deconvs(channels_last(x))
        if image.shape[-2:] != self.obs_shape[1:]:  # odd sides do not halve exactly (7 -> 3 -> 6)
            image = F.interpolate(image, size=self.obs_shape[1:], mode="nearest")
        return self.likelihood(image.reshape(*lead, *self.obs_shape))


def make_codec(
    obs_shape: tuple[int, ...], feat_dim: int, hidden: int, layers: int, depth: int, image_likelihood: str = "mse"
) -> tuple[nn.Module, nn.Module]:
    """(encoder, decoder) for an observation shape: MLPs for vectors, convolutions for images (their decoder's
    likelihood: mse or bernoulli)."""
    if len(obs_shape) == 1:
        return VectorEncoder(obs_shape[0], hidden, layers), VectorDecoder(feat_dim, obs_shape[0], hidden, layers)
    encoder = ConvEncoder(tuple(obs_shape), depth)
    return encoder, ConvDecoder(feat_dim, tuple(obs_shape), encoder, image_likelihood)
