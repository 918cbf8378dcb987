"""Export a sweep's runs as one JSON file: a record per run (quantizer, seed, state, the evaluation curve,
final and best evaluation) and `agent compare`'s report over the finished ones.

    agent sweep CartPole-v1 -q round,fsq,binary,categorical,gumbel,reinmax,gumbel_rao,vq --seeds 5 \\
        --steps 15000 --dir runs/ablation-CartPole-v1
    python benchmarks/ablation.py runs/ablation-CartPole-v1 --threshold 475
    agent plot runs/ablation-CartPole-v1 --out benchmarks/results/ablation-CartPole-v1.png

Beside the JSON it writes the comparison as a Markdown table (ablation-<env>.md), for docs/results.md.
Runs that have not finished are exported with their curve so far, so that a grid spread over several
sessions adds up; the report covers finished runs only.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from agent.analysis import compare, with_interval
from agent.checkpoint import atomic_write_text
from agent.runs import read_runs, safe_name


def markdown(report: dict) -> str:
    """One table per env: each group's final value and area under the curve (IQM, 95% CI), threshold."""
    lines = []
    threshold = report["threshold"]
    for env_id, result in report["envs"].items():
        header = ["quantizer", "seeds", "final, IQM [95% CI]", "area under curve, IQM [95% CI]"]
        if threshold is not None:
            header += [f"reached {threshold:g}", "median env steps to it"]
        lines += [f"**{env_id}**", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        rows = sorted(result["groups"].items(), key=lambda item: -item[1]["auc_iqm"])
        for name, row in rows:
            cells = [name, str(row["seeds"]), with_interval(row, "final_iqm"), with_interval(row, "auc_iqm")]
            if threshold is not None:
                steps = row["median_steps_of_those_reaching"]
                cells += [f"{row['reached']}/{row['seeds']}", "-" if steps is None else f"{steps:,.0f}"]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep", type=Path)
    parser.add_argument("--threshold", type=float, default=None)
    parser.add_argument("--out", type=Path, default=None, help="default benchmarks/results/ablation-<env>.json")
    args = parser.parse_args()
    infos, unreadable = read_runs([args.sweep])
    records = []
    for info in infos:
        steps, values = info.curve()
        summary = info.summary()  # best_eval: the best confirmed evaluation (10 + 20 episodes)
        records.append({**summary, "run": info.path.name, "final": float(values[-1]) if len(values) else None,
                        "seconds": info.metrics[-1]["time/seconds"] if info.metrics else None,
                        "curve": [[int(s), float(v)] for s, v in zip(steps, values, strict=True)]})  # fmt: skip
    finished = [info for info in infos if info.status == "finished"]
    report = compare(finished, threshold=args.threshold) if finished else None
    for path, why in unreadable:
        print(f"left out {path}: {why}")
    env = safe_name(infos[0].config["env_id"]) if infos else "none"
    out = args.out or Path("benchmarks/results") / f"ablation-{env}.json"
    atomic_write_text(out, json.dumps({"sweep": str(args.sweep), "runs": records, "compare": report}, indent=1))
    if report is not None:
        atomic_write_text(out.with_suffix(".md"), markdown(report))
    print(f"{len(finished)}/{len(records)} runs finished; wrote {out}")


if __name__ == "__main__":
    main()
