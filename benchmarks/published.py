"""Published scores at a budget of env steps, from the score files of danijar/dreamerv3 (scores/*.json.gz:
a list of runs, each with task, method, seed, xs (env steps) and ys (returns)).

    git clone https://github.com/danijar/dreamerv3 && python benchmarks/published.py \\
        dreamerv3/scores/dmc_proprio-dreamerv3.json.gz dreamerv3/scores/dmc_proprio-d4pg.json.gz

Per task and method: the mean over seeds of each run's mean return over the last 20% of the budget
(xs in (0.8 budget, budget]), as the "Real benchmarks" issue compares at 100k env steps.
"""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path

import numpy as np

from agent.checkpoint import atomic_write_text

DMC_TASKS = ["dmc_cartpole_swingup", "dmc_walker_walk", "dmc_cheetah_run", "dmc_reacher_easy"]


def scores_at(runs: list[dict], task: str, budget: float) -> dict:
    per_seed = []
    for run in runs:
        if run["task"] != task:
            continue
        xs, ys = np.asarray(run["xs"], float), np.asarray(run["ys"], float)
        window = (xs > 0.8 * budget) & (xs <= budget)
        if window.any():
            per_seed.append(float(ys[window].mean()))
    return {"seeds": len(per_seed), "mean": float(np.mean(per_seed)) if per_seed else None, "per_seed": per_seed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", type=Path, nargs="+")
    parser.add_argument("--budget", type=float, default=100_000)
    parser.add_argument("--tasks", nargs="+", default=DMC_TASKS)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/published-dmc_proprio-100k.json"))
    args = parser.parse_args()
    table: dict[str, dict] = {}
    for path in args.files:
        with gzip.open(path) as file:
            runs = json.load(file)
        method = runs[0]["method"]
        table[method] = {task: scores_at(runs, task, args.budget) for task in args.tasks}
        print(method, {task: round(row["mean"], 1) for task, row in table[method].items() if row["mean"] is not None})
    payload = {"source": "github.com/danijar/dreamerv3 scores/ (commit e3f0224)", "budget": args.budget,
               "window": "mean return over env steps in (0.8 budget, budget], then mean over seeds",
               "scores": table}  # fmt: skip
    atomic_write_text(args.out, json.dumps(payload, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
