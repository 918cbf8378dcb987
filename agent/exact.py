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


def expected_estimate(logits: Tensor, f: Objective, estimator: SampleEstimator) -> Tensor:
    """E_z[ĝ(z)] of an estimator that is deterministic given the sample z, by enumeration: (N, K)."""
    n, k = logits.shape
    outcomes = all_outcomes(n, k)
    weights = outcome_probs(logits.detach(), outcomes)
    theta = logits.detach().clone().requires_grad_()
    codes = estimator(theta.expand(len(outcomes), n, k), outcomes)
    (grad,) = torch.autograd.grad((weights * f(codes)).sum(), theta)
    return grad


def sampled_estimates(
    logits: Tensor, f: Objective, estimator: NoisyEstimator, samples: int, generator: torch.Generator
) -> Tensor:
    """`samples` independent single-sample gradient estimates: (samples, N, K)."""
    theta = logits.detach().expand(samples, *logits.shape).clone().requires_grad_()
    (grad,) = torch.autograd.grad(f(estimator(theta, generator)).sum(), theta)
    return grad


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


def decoder_objective(
    n: int, k: int, generator: torch.Generator, hidden: int = 32, dtype=torch.float64
) -> Objective:
    """Squared error of a fixed random tanh-MLP decoder against a random target: a small stand-in for
    a world model's reconstruction loss."""
    w1 = torch.randn(n * k, hidden, generator=generator, dtype=dtype) / n**0.5
    w2 = torch.randn(hidden, 8, generator=generator, dtype=dtype) / hidden**0.5
    target = torch.randn(8, generator=generator, dtype=dtype)

    def f(z: Tensor) -> Tensor:
        out = torch.tanh(z.reshape(*z.shape[:-2], n * k) @ w1) @ w2
        return ((out - target) ** 2).sum(-1)

    return f
