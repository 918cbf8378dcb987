"""Statistics for comparing groups of runs without crowning a lucky seed (Agarwal et al. 2021,
"Deep RL at the Edge of the Statistical Precipice", arxiv.org/abs/2108.13264; the methods of rliable).

Scores are matrices (runs, tasks): one row per seed, one column per environment. Aggregates:
the mean, and the interquartile mean (IQM: the mean of the middle 50% of all runs x tasks scores,
robust to outliers, more efficient than the median). Uncertainty: 95% stratified bootstrap
confidence intervals (runs resampled with replacement within each task, percentile interval).
Probability of improvement P(X > Y): over tasks, the mean of the Mann-Whitney statistic
P(x > y) + P(x = y) / 2 for a random run x of X and y of Y, with an independent stratified bootstrap.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Aggregate = Callable[[np.ndarray], float]


def as_matrix(scores: np.ndarray) -> np.ndarray:
    """Scores as (runs, tasks) float64: a vector is the runs of a single task."""
    scores = np.asarray(scores, np.float64)
    return scores[:, None] if scores.ndim == 1 else scores


def iqm(scores: np.ndarray) -> float:
    """Interquartile mean of all scores: a quarter of them cut from each end (as scipy's trim_mean, 0.25)."""
    flat = np.sort(np.asarray(scores, np.float64).reshape(-1))
    cut = int(0.25 * len(flat))
    return float(flat[cut : len(flat) - cut].mean())


def mean(scores: np.ndarray) -> float:
    return float(np.mean(scores))


def bootstrap_ci(
    scores: np.ndarray, aggregate: Aggregate, reps: int = 2000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile interval of `aggregate` over `reps` stratified bootstrap resamples of scores (runs, tasks):
    each task's runs resampled with replacement, independently of the other tasks."""
    scores = as_matrix(scores)
    runs, tasks = scores.shape
    rng = np.random.default_rng(seed)
    index = rng.integers(0, runs, (reps, runs, tasks))  # (R, runs, tasks): a run of each task
    resampled = np.take_along_axis(scores[None], index, axis=1)
    values = np.array([aggregate(sample) for sample in resampled])
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def probability_of_improvement(x: np.ndarray, y: np.ndarray) -> float:
    """P(X > Y): over tasks, the average probability that a run of X scores above a run of Y (ties count
    half). x (runs_x, tasks), y (runs_y, tasks)."""
    x, y = as_matrix(x), as_matrix(y)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y need the same tasks (columns), got {x.shape} and {y.shape}")
    above = (x[:, None, :] > y[None, :, :]).mean((0, 1))
    ties = (x[:, None, :] == y[None, :, :]).mean((0, 1))
    return float((above + 0.5 * ties).mean())


def probability_of_improvement_ci(
    x: np.ndarray, y: np.ndarray, reps: int = 2000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile interval of P(X > Y), x's and y's runs resampled independently within each task."""
    x, y = as_matrix(x), as_matrix(y)
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(reps):
        xs = np.take_along_axis(x, rng.integers(0, len(x), x.shape), axis=0)
        ys = np.take_along_axis(y, rng.integers(0, len(y), y.shape), axis=0)
        values.append(probability_of_improvement(xs, ys))
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def area_under_curve(steps: np.ndarray, values: np.ndarray) -> float:
    """The mean of a learning curve over its env steps (trapezoids), in the curve's own units: a run that
    learns early scores higher than one that gets to the same final value late."""
    steps, values = np.asarray(steps, np.float64), np.asarray(values, np.float64)
    if len(steps) < 2:
        return float(values[0]) if len(values) else float("nan")
    return float(np.trapezoid(values, steps) / (steps[-1] - steps[0]))


def first_step_reaching(steps: np.ndarray, values: np.ndarray, threshold: float) -> int | None:
    """The first env step at which the curve reaches `threshold`, or None."""
    reached = np.flatnonzero(np.asarray(values) >= threshold)
    return int(np.asarray(steps)[reached[0]]) if len(reached) else None


def aggregate_curves(
    curves: list[tuple[np.ndarray, np.ndarray]], aggregate: Aggregate, reps: int = 1000
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Runs' learning curves (steps, values) -> (steps, aggregate, CI low, CI high) at every step any run
    evaluated, each run interpolated onto those steps within its own range (and left out beyond it)."""
    steps = np.unique(np.concatenate([s for s, _ in curves]))
    matrix = np.stack([np.interp(steps, s, v, left=np.nan, right=np.nan) for s, v in curves])  # (runs, steps)
    center, low, high = (np.full(len(steps), np.nan) for _ in range(3))
    for j in range(len(steps)):
        column = matrix[:, j][np.isfinite(matrix[:, j])]
        if len(column):
            center[j] = aggregate(column)
            low[j], high[j] = bootstrap_ci(column, aggregate, reps, seed=j)
    return steps, center, low, high
