"""Categorical straight-through gradient estimators against exact gradients, on enumerable toy problems.

Problem: N categorical variables of K classes with logits θ ~ σ·N(0, 1) and an objective f of their
one-hot codes (`decoder`: squared error of a fixed random tanh-MLP, the main one; `quadratic`). With
K^N ≤ 4096 the exact gradient g* = ∇θ E_{z~p_θ}[f(z)] is found by enumeration (`benchmarks/exact.py`, float64).

Estimators (no unimix): straight-through categorical (`st`), ReinMax at τ = 1, ST-Gumbel-Softmax and
Gumbel-Rao (8 conditional samples) at τ ∈ {0.5, 1}. Per problem, with ĝ one single-sample estimate:

  cos      cosine of the mean gradient E[ĝ] with g*
  bias²    ‖E[ĝ] − g*‖² / ‖g*‖²
  var      E‖ĝ − E[ĝ]‖² / ‖g*‖²
  mse@B    ‖ḡ_B − g*‖² / ‖g*‖² of a batch mean of B samples, = bias² + var / B
  s.cos    E[cos(ĝ, g*)], the mean single-sample cosine
  gap      E_θ[f] − min_z f(z) (exact) after minimising E[f] with Adam from θ₀, batch-mean estimates

st and ReinMax are deterministic given the sample z, so their moments are exact (every outcome's
gradient weighted by p(z)); the Gumbel estimators' are Monte Carlo, with bias² corrected for the
Monte Carlo error of the mean (so it can come out slightly negative when the bias is tiny).
Each figure is the median over the problem seeds; the full grid, per seed, goes to the JSON file.

Run (from the repository root):
    python benchmarks/estimators.py            # full grid, about 2½ minutes on one core
    python benchmarks/estimators.py --quick    # smoke run, a few seconds
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table
from torch import Tensor

import exact as X
from agent.checkpoint import atomic_write_text

OBJECTIVES: dict[str, Callable[[int, int, torch.Generator], X.Objective]] = {
    "decoder": X.decoder_objective,
    "quadratic": X.quadratic_objective,
}
HEADLINE_SIGMA = 1.0
SAMPLING_SEED = 1_000_000  # offset: the estimators' randomness never reuses a problem's generator state
METRICS = ("cos", "bias²", "var", "mse@1", "mse@64", "s.cos", "gap")
GradientFn = Callable[[Tensor, torch.Generator], Tensor]  # θ (N, K), generator -> gradient (N, K)


@dataclass(frozen=True)
class Config:
    shapes: tuple[tuple[int, int], ...] = ((4, 8), (2, 16))  # (N, K)
    sigmas: tuple[float, ...] = (0.5, 1.0, 2.0)
    objectives: tuple[str, ...] = ("decoder", "quadratic")
    seeds: int = 10
    mc_samples: int = 10_000  # Monte Carlo samples for the Gumbel estimators' moments
    rao_samples: int = 8
    opt_steps: int = 200
    opt_batch: int = 8
    lr: float = 0.1  # exact-gradient Adam gets within ~0.02 of min f in 200 steps; 0.05 within ~0.07


QUICK = Config(shapes=((4, 8),), sigmas=(HEADLINE_SIGMA,), objectives=("decoder",), seeds=3, mc_samples=500)


@dataclass(frozen=True)
class Estimator:
    """`sample` draws its own randomness; `given_sample` is set for estimators that are deterministic
    given the sample z, whose moments are then computed exactly by enumeration."""

    name: str
    sample: X.NoisyEstimator
    given_sample: X.SampleEstimator | None = None


def make_estimators(config: Config) -> list[Estimator]:
    taus = (0.5, 1.0)
    return [
        Estimator("st", X.sampled(X.straight_through), X.straight_through),
        Estimator("reinmax", X.sampled(X.reinmax), X.reinmax),
        *(Estimator(f"gumbel τ={tau}", X.st_gumbel(tau)) for tau in taus),
        *(Estimator(f"gumbel-rao τ={tau}", X.gumbel_rao(tau, config.rao_samples)) for tau in taus),
    ]


def make_problem(objective: str, n: int, k: int, sigma: float, seed: int) -> tuple[Tensor, X.Objective]:
    """Logits θ₀ and objective f; θ₀ is drawn first, so a seed has the same f and the same direction
    of θ₀ at every σ."""
    generator = torch.Generator().manual_seed(seed)
    theta = sigma * torch.randn(n, k, generator=generator, dtype=torch.float64)
    return theta, OBJECTIVES[objective](n, k, generator)


def gradient_metrics(grads: Tensor, weights: Tensor, exact: Tensor, monte_carlo: bool) -> dict[str, float]:
    """Moments of the single-sample estimates `grads` (M, N, K) drawn with probabilities `weights` (M,),
    relative to the exact gradient (N, K). `monte_carlo`: the M estimates are iid samples (weights 1/M),
    so the variance gets Bessel's correction and bias² loses the mean's Monte Carlo error var / M."""
    scale = exact.pow(2).sum()
    mean = torch.einsum("m,mnk->nk", weights, grads)
    variance = float((weights * (grads - mean).pow(2).sum((1, 2))).sum() / scale)
    bias2 = float((mean - exact).pow(2).sum() / scale)
    if monte_carlo:
        variance *= len(grads) / (len(grads) - 1)
        bias2 -= variance / len(grads)
    sample_cosines = F.cosine_similarity(grads.flatten(1), exact.flatten().unsqueeze(0), dim=1)
    return {
        "cos": float(F.cosine_similarity(mean.flatten(), exact.flatten(), dim=0)),
        "bias²": bias2,
        "var": variance,
        "mse@1": bias2 + variance,
        "mse@64": bias2 + variance / 64,
        "s.cos": float((weights * sample_cosines).sum()),
    }


def estimator_moments(
    theta: Tensor,
    f: X.Objective,
    exact: Tensor,
    estimator: Estimator,
    samples: int,
    generator: torch.Generator,
) -> dict[str, float]:
    """`gradient_metrics` of one estimator: exact by enumeration where possible, else Monte Carlo."""
    if estimator.given_sample is not None:
        grads, probs = X.outcome_estimates(theta, f, estimator.given_sample)
        return gradient_metrics(grads, probs, exact, monte_carlo=False)
    grads = X.sampled_estimates(theta, f, estimator.sample, samples, generator)
    uniform = torch.full((samples,), 1.0 / samples, dtype=grads.dtype)
    return gradient_metrics(grads, uniform, exact, monte_carlo=True)


def batch_gradient(f: X.Objective, estimator: X.NoisyEstimator, batch: int) -> GradientFn:
    def gradient(theta: Tensor, generator: torch.Generator) -> Tensor:
        return X.sampled_estimates(theta, f, estimator, batch, generator).mean(0)

    return gradient


def optimise(theta: Tensor, gradient: GradientFn, config: Config, generator: torch.Generator) -> Tensor:
    """θ after `opt_steps` Adam steps on the given gradient, from `theta`."""
    theta = theta.clone().requires_grad_()
    optimiser = torch.optim.Adam([theta], lr=config.lr)
    for _ in range(config.opt_steps):
        theta.grad = gradient(theta.detach(), generator)
        optimiser.step()
    return theta.detach()


def optimality_gap(theta: Tensor, outcomes: Tensor, values: Tensor) -> float:
    """E_{z~p_θ}[f(z)] − min_z f(z), exactly; `values` is f at every outcome."""
    return float(X.outcome_probs(theta, outcomes) @ values - values.min())


def run_problem(
    config: Config, estimators: list[Estimator], objective: str, n: int, k: int, sigma: float, seed: int
) -> dict[str, dict[str, float]]:
    """Every estimator's metrics on one problem, plus the gap at θ₀ ("initial θ") and after optimising
    with the exact gradient ("exact gradient")."""
    theta, f = make_problem(objective, n, k, sigma, seed)
    exact = X.exact_gradient(theta, f)
    outcomes = X.all_outcomes(n, k)
    values = f(F.one_hot(outcomes, k).to(theta.dtype))

    def noise() -> torch.Generator:  # the same random numbers for every estimator: a fairer comparison
        return torch.Generator().manual_seed(SAMPLING_SEED + seed)

    def true_gradient(point: Tensor, _: torch.Generator) -> Tensor:
        return X.exact_gradient(point, f)

    results = {
        "initial θ": {"gap": optimality_gap(theta, outcomes, values)},
        "exact gradient": {"gap": optimality_gap(optimise(theta, true_gradient, config, noise()), outcomes, values)},
    }
    for estimator in estimators:
        metrics = estimator_moments(theta, f, exact, estimator, config.mc_samples, noise())
        final = optimise(theta, batch_gradient(f, estimator.sample, config.opt_batch), config, noise())
        results[estimator.name] = {**metrics, "gap": optimality_gap(final, outcomes, values)}
    return results


def run_setting(
    config: Config, estimators: list[Estimator], objective: str, n: int, k: int, sigma: float
) -> dict[str, object]:
    """One (objective, N, K, σ) cell of the grid: per-seed metrics and their medians."""
    per_seed: dict[str, dict[str, list[float]]] = {}
    for seed in range(config.seeds):
        for name, metrics in run_problem(config, estimators, objective, n, k, sigma, seed).items():
            for metric, value in metrics.items():
                per_seed.setdefault(name, {}).setdefault(metric, []).append(value)
    medians = {
        name: {metric: statistics.median(values) for metric, values in metrics.items()}
        for name, metrics in per_seed.items()
    }
    return {"objective": objective, "n": n, "k": k, "sigma": sigma, "median": medians, "per_seed": per_seed}


def format_value(metric: str, value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.3f}" if metric in ("cos", "s.cos") else f"{value:.3g}"


def headline_table(setting: dict, config: Config, estimators: list[Estimator]) -> Table:
    table = Table(
        title=f"{setting['objective']} objective, N={setting['n']} K={setting['k']}, σ={setting['sigma']}: "
        f"medians over {config.seeds} problems",
        caption=f"moments: exact (enumerated) for st and reinmax, Monte Carlo ({config.mc_samples} samples) "
        f"for the Gumbel ones. gap: after {config.opt_steps} Adam steps (lr {config.lr}), batch "
        f"{config.opt_batch}",
    )
    table.add_column("estimator")
    for metric in METRICS:
        table.add_column(metric, justify="right")
    moment_free = ("initial θ", "exact gradient")
    for name in [*(e.name for e in estimators), *moment_free]:
        metrics = setting["median"][name]
        table.add_row(name, *(format_value(metric, metrics.get(metric)) for metric in METRICS))
    return table


def grid_table(settings: list[dict], metric: str, estimators: list[Estimator]) -> Table:
    table = Table(title=f"{metric} by setting (median over problems)")
    for column in ("objective", "N×K", "σ"):
        table.add_column(column)
    for estimator in estimators:
        table.add_column(estimator.name, justify="right")
    for setting in settings:
        cells = (format_value(metric, setting["median"][e.name][metric]) for e in estimators)
        table.add_row(setting["objective"], f"{setting['n']}×{setting['k']}", f"{setting['sigma']:g}", *cells)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/estimators.json"))
    parser.add_argument("--seeds", type=int, default=None, help="problem seeds per setting (default 10; 3 quick)")
    parser.add_argument("--quick", action="store_true", help="one setting, fewer seeds and samples: a smoke run")
    args = parser.parse_args()
    config = QUICK if args.quick else Config()
    if args.seeds is not None:
        if args.seeds < 1:
            parser.error("--seeds must be at least 1")
        config = dataclasses.replace(config, seeds=args.seeds)
    torch.set_num_threads(1)
    estimators = make_estimators(config)
    console = Console()
    if not console.is_terminal:  # a log file: wide enough for the grid table, instead of the default 80
        console = Console(width=120)

    start = time.perf_counter()
    settings = []
    for objective in config.objectives:
        for n, k in config.shapes:
            for sigma in config.sigmas:
                settings.append(run_setting(config, estimators, objective, n, k, sigma))
                console.log(f"{objective} N={n} K={k} σ={sigma}: done")
    runtime = time.perf_counter() - start

    for setting in settings:
        if setting["objective"] == config.objectives[0] and setting["sigma"] == HEADLINE_SIGMA:
            console.print(headline_table(setting, config, estimators))
    console.print(grid_table(settings, "bias²", estimators))
    payload = {
        "description": __doc__,
        "config": dataclasses.asdict(config),
        "runtime_s": runtime,
        "settings": settings,
    }
    atomic_write_text(args.out, json.dumps(payload, indent=1, ensure_ascii=False))
    console.print(f"{len(settings)} settings in {runtime:.0f} s; wrote {args.out}")


if __name__ == "__main__":
    main()
