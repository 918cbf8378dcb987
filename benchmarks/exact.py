"""Exact gradients by enumeration, for judging straight-through estimators on small problems.

Problem: N independent categorical variables with logits θ (N, K) and an objective f of their
one-hot codes; the true gradient of E_{z ~ p_θ}[f(z)] is found by summing over all K^N outcomes.
An estimator that is deterministic given the sample (straight-through categorical, ReinMax) has an
expected gradient that can be enumerated the same way; Gumbel-based ones are sampled.

Shape legend: M outcomes or samples, N variables, K classes.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from agent import quantize as Q

Objective = Callable[[Tensor], Tensor]  # codes (M, N, K) -> values (M,)
SampleEstimator = Callable[[Tensor, Tensor], Tensor]  # logits (M, N, K), index (M, N) -> codes (M, N, K)
NoisyEstimator = Callable[[Tensor, torch.Generator], Tensor]  # logits (M, N, K), generator -> codes


def all_outcomes(n: int, k: int) -> Tensor:
    """Every joint outcome of n variables with k classes: (k**n, n) int64."""
    grids = torch.meshgrid(*[torch.arange(k)] * n, indexing="ij")
    return torch.stack([g.reshape(-1) for g in grids], -1)


def outcome_probs(logits: Tensor, outcomes: Tensor) -> Tensor:
    """p_θ(z) for each outcome z (M, N): product over variables of softmax(θ_n)[z_n] -> (M,)."""
    logp = logits.log_softmax(-1)  # (N, K)
    return logp.gather(-1, outcomes.T).sum(0).exp()


def exact_gradient(logits: Tensor, f: Objective) -> Tensor:
    """∇θ E_{z ~ p_θ}[f(z)] by enumerating all K^N outcomes: (N, K)."""
    theta = logits.detach().clone().requires_grad_()
    n, k = theta.shape
    outcomes = all_outcomes(n, k)
    codes = F.one_hot(outcomes, k).to(theta.dtype)
    (grad,) = torch.autograd.grad((outcome_probs(theta, outcomes) * f(codes)).sum(), theta)
    return grad


def outcome_estimates(logits: Tensor, f: Objective, estimator: SampleEstimator) -> tuple[Tensor, Tensor]:
    """The estimate ĝ(z) for every outcome z, and p_θ(z): ((K^N, N, K), (K^N,)).

    For an estimator that is deterministic given the sample these are its whole distribution, so its
    exact mean is Σ_z p(z) ĝ(z) and its exact variance Σ_z p(z) ‖ĝ(z) - mean‖².
    """
    n, k = logits.shape
    outcomes = all_outcomes(n, k)
    theta = logits.detach().expand(len(outcomes), n, k).clone().requires_grad_()
    (grads,) = torch.autograd.grad(f(estimator(theta, outcomes)).sum(), theta)
    return grads, outcome_probs(logits.detach(), outcomes)


def expected_estimate(logits: Tensor, f: Objective, estimator: SampleEstimator) -> Tensor:
    """E_z[ĝ(z)] of an estimator that is deterministic given the sample z, by enumeration: (N, K)."""
    grads, probs = outcome_estimates(logits, f, estimator)
    return torch.einsum("m,mnk->nk", probs, grads)


def sampled_estimates(
    logits: Tensor, f: Objective, estimator: NoisyEstimator, samples: int, generator: torch.Generator
) -> Tensor:
    """`samples` independent single-sample gradient estimates: (samples, N, K)."""
    theta = logits.detach().expand(samples, *logits.shape).clone().requires_grad_()
    (grad,) = torch.autograd.grad(f(estimator(theta, generator)).sum(), theta)
    return grad


# Estimators in this module's calling conventions.


def straight_through(logits: Tensor, index: Tensor) -> Tensor:
    """Straight-through categorical given the sample (no unimix)."""
    return Q.categorical_st(logits.softmax(-1), index)


def reinmax(logits: Tensor, index: Tensor, tau: float = 1.0) -> Tensor:
    """ReinMax given the sample."""
    return Q.reinmax_st(logits, index, tau)


def sampled(estimator: SampleEstimator) -> NoisyEstimator:
    """A sample-given estimator applied to a fresh sample z ~ p_θ."""

    def noisy(logits: Tensor, generator: torch.Generator) -> Tensor:
        return estimator(logits, Q.sample_index(logits.detach().softmax(-1), generator))

    return noisy


def st_gumbel(tau: float) -> NoisyEstimator:
    """Straight-through Gumbel-Softmax at temperature tau."""

    def noisy(logits: Tensor, generator: torch.Generator) -> Tensor:
        return Q.gumbel_st(logits, Q.gumbel_noise(logits.shape, generator, dtype=logits.dtype), tau)[0]

    return noisy


def gumbel_rao(tau: float, samples: int) -> NoisyEstimator:
    """Gumbel-Rao with `samples` conditional draws at temperature tau."""

    def noisy(logits: Tensor, generator: torch.Generator) -> Tensor:
        logp = logits.log_softmax(-1)
        index = Q.sample_index(logp.detach().exp(), generator)
        return Q.gumbel_rao_st(logp, index, Q.conditional_gumbel(logp, index, samples, generator), tau)

    return noisy


# Objectives: each returns f(codes) for codes (M, N, K) -> (M,), fixed by a generator.


def linear_objective(n: int, k: int, generator: torch.Generator, dtype=torch.float64) -> Objective:
    c = torch.randn(n, k, generator=generator, dtype=dtype)
    return lambda z: (z * c).sum((-2, -1))


def quadratic_objective(n: int, k: int, generator: torch.Generator, dtype=torch.float64) -> Objective:
    a = torch.randn(n * k, n * k, generator=generator, dtype=dtype)
    b = torch.randn(n * k, generator=generator, dtype=dtype)

    def f(z: Tensor) -> Tensor:
        flat = z.reshape(*z.shape[:-2], n * k)
        return ((flat @ a) * flat).sum(-1) + flat @ b

    return f


def decoder_objective(n: int, k: int, generator: torch.Generator, hidden: int = 32, dtype=torch.float64) -> Objective:
    """Squared error of a fixed random tanh-MLP decoder against a random target: a small stand-in for
    a world model's reconstruction loss."""
    w1 = torch.randn(n * k, hidden, generator=generator, dtype=dtype) / n**0.5
    w2 = torch.randn(hidden, 8, generator=generator, dtype=dtype) / hidden**0.5
    target = torch.randn(8, generator=generator, dtype=dtype)

    def f(z: Tensor) -> Tensor:
        out = torch.tanh(z.reshape(*z.shape[:-2], n * k) @ w1) @ w2
        return ((out - target) ** 2).sum(-1)

    return f
