"""Comparing groups of runs: their learning curves, aggregated across seeds, and rliable's statistics of
their final values and areas under the curve (agent plot, agent compare). Each env is compared on its
own: returns of different envs are on different scales."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from agent import stats
from agent.runs import RunFolderError, RunInfo

Curve = tuple[np.ndarray, np.ndarray]  # (env steps, values)


def curves_by_group(infos: list[RunInfo], group: str, metric: str) -> dict[str, dict[str, list[Curve]]]:
    """{env id: {group value: [curve of each run]}}; runs without any `metric` are left out."""
    out: dict[str, dict[str, list[Curve]]] = {}
    for info in infos:
        try:
            name = str(info.setting(group))
        except KeyError:
            raise RunFolderError(f"{info.path}: its config has no {group!r} to group by") from None
        steps, values = info.curve(metric)
        if len(steps):
            out.setdefault(info.config["env_id"], {}).setdefault(name, []).append((steps, values))
    return out


def aggregate_groups(
    curves: dict[str, dict[str, list[Curve]]], stat: str, reps: int = 1000
) -> dict[str, dict[str, dict[str, Any]]]:
    """Each group's curve aggregated across its runs: {env: {group: {steps, center, low, high, runs}}}, the
    IQM or mean (stat) at every evaluated step with a 95% bootstrap interval."""
    aggregate = getattr(stats, stat)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for env_id, groups in curves.items():
        for name, runs in groups.items():
            steps, center, low, high = stats.aggregate_curves(runs, aggregate, reps)
            out.setdefault(env_id, {})[name] = {"steps": steps, "center": center, "low": low, "high": high,
                                                "runs": len(runs)}  # fmt: skip
    return out


def compare(
    infos: list[RunInfo],
    group: str = "quantizer",
    metric: str = "eval_return_mean",
    threshold: float | None = None,
    reps: int = 2000,
) -> dict[str, Any]:
    """Per env and group, over finished runs only (an unfinished run's last value is not a final one):
    seeds, the IQM and mean of the final value and of the area under the curve (the curve's mean over env
    steps) with 95% bootstrap intervals (stratified over tasks: with one env per comparison, over seeds),
    env steps to `threshold` among the runs that reached it, and the probability that a run of one group
    ends above a run of another, P(A > B), of the final value (p, ci) and of the area under the curve
    (auc_p, auc_ci), for every pair in order (P(B > A) is 1 minus it)."""
    finished = [info for info in infos if info.status == "finished"]
    unfinished = [str(info.path) for info in infos if info.status != "finished"]
    report: dict[str, Any] = {"group": group, "metric": metric, "threshold": threshold, "envs": {},
                              "left_out_unfinished": unfinished}  # fmt: skip
    for env_id, groups in curves_by_group(finished, group, metric).items():
        finals = {name: np.array([values[-1] for _, values in runs]) for name, runs in groups.items()}
        areas = {name: np.array([stats.area_under_curve(*run) for run in runs]) for name, runs in groups.items()}
        rows = {}
        for name, runs in groups.items():
            row: dict[str, Any] = {"seeds": len(runs)}
            for label, scores in (("final", finals[name]), ("auc", areas[name])):
                for aggregate in ("iqm", "mean"):
                    function = getattr(stats, aggregate)
                    row[f"{label}_{aggregate}"] = function(scores)
                    row[f"{label}_{aggregate}_ci"] = stats.bootstrap_ci(scores, function, reps)
            if threshold is not None:
                reached = [s for s in (stats.first_step_reaching(*run, threshold) for run in runs) if s is not None]
                row["reached"] = len(reached)
                row["median_steps_of_those_reaching"] = float(np.median(reached)) if reached else None
            rows[name] = row
        improvement = {
            f"{a} > {b}": {
                "p": stats.probability_of_improvement(finals[a], finals[b]),
                "ci": stats.probability_of_improvement_ci(finals[a], finals[b], reps),
                "auc_p": stats.probability_of_improvement(areas[a], areas[b]),
                "auc_ci": stats.probability_of_improvement_ci(areas[a], areas[b], reps),
            }
            for a, b in itertools.combinations(groups, 2)
        }
        report["envs"][env_id] = {"groups": rows, "probability_of_improvement": improvement}
    return report


def with_interval(row: dict[str, Any], key: str) -> str:
    """A compare row's value and its 95% interval as text: "461.0 [390.9, 500.0]"."""
    low, high = row[f"{key}_ci"]
    return f"{row[key]:.1f} [{low:.1f}, {high:.1f}]"
