"""The suite tables: this agent beside the peers measured here and the published scores, per task, at the
same env steps. Reads the runs' JSON files in benchmarks/results/suite/:

- `learning-<env>-seed<N>.json` from benchmarks/learning.py (this agent), e.g.
  python benchmarks/learning.py --env dm_control/walker-walk-v0 --steps 100000 --eval-every 5000 \\
      --seeds 0 --out benchmarks/results/suite/learning-dm_control_walker-walk-v0-seed0.json
- `peer-<algo>-<env>-seed<N>.json` from benchmarks/peers.py (SB3 SAC or DQN), e.g.
  python benchmarks/peers.py sac dm_control/walker-walk-v0 --action-repeat 2 --seeds 0 --out benchmarks/results/suite
- benchmarks/results/published-dmc_proprio-100k.json from benchmarks/published.py (DreamerV3, D4PG).

Per task: seeds, the score (mean evaluation over the last 20% of the run, DreamerV3's published
measure), the final and best evaluations, a fresh evaluation of the checkpoint the run hands to
`agent eval`, env steps/s, ms per update, updates, peak memory; the peers' scores; whether the score
is at or above each reference. Writes <out>.md, <out>.json and <out>.png (curves: mean of the seeds
with a 95% bootstrap band; the published 100k scores as horizontal lines).

    python benchmarks/suite.py dm_control     # -> benchmarks/results/suite-dm_control.{md,json,png}
    python benchmarks/suite.py MinAtar
    python benchmarks/suite.py dm_control --runs <folder of one commit's runs> --peers benchmarks/results/suite \
        --out benchmarks/results/<name>   # this agent's runs of another commit beside the same peers
    python benchmarks/suite.py MinAtar --runs benchmarks/results/minatar-bernoulli \
        --match "learning-*-full-seed*.json" --peers benchmarks/results/suite \
        --out benchmarks/results/suite-MinAtar-defaults   # the runs of MinAtar's own defaults, beside the same peers
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from peers import last_fifth_mean  # benchmarks/

from agent.analysis import aggregate_groups
from agent.checkpoint import atomic_write_text
from agent.plots import curves_figure, save_figure

RESULTS = Path("benchmarks/results")


def published_key(env_id: str) -> str:
    """dm_control/walker-walk-v0 -> dmc_walker_walk (the key in DreamerV3's scores files)."""
    return "dmc_" + env_id.split("/")[-1].rsplit("-v", 1)[0].replace("-", "_")


def load(
    folders: list[Path], prefix: str, peers: Path | None = None, match: str = "*.json"
) -> dict[str, dict[str, list[dict]]]:
    """{env id: {who: [one record per seed]}}; who is "agent" or the peer's algorithm. Where `peers` is
    given, the peers' files are read from it and this agent's from `folders` only (runs of other
    commits beside peers that were run once). Of `folders`, only the files whose names fit the glob
    `match` are read. SystemExit if the records of one env were not run on one protocol (budget,
    evaluation spacing, action repeat) or hold a seed twice: the table would compare unlike runs."""
    out: dict[str, dict[str, list[dict]]] = {}
    protocols: dict[str, dict[tuple, list[str]]] = {}
    files: dict[tuple[str, str, int], list[str]] = {}  # (env id, who, seed) -> the files holding it
    sources = [(folder, match, ("agent",) if peers else ("agent", "peer")) for folder in folders]
    sources += [(peers, "*.json", ("peer",))] if peers else []
    paths = [(path, kinds) for source, pattern, kinds in sources for path in sorted(source.glob(pattern))]
    for path, kinds in paths:
        data = json.loads(path.read_text())
        if ("agent" if "seeds" in data else "peer") not in kinds:
            continue
        if "seeds" in data:  # benchmarks/learning.py: args + summary + a record per seed
            env_id, who, records, args = data["args"]["env"], "agent", data["seeds"], data["args"]
            protocol = (args["steps"], args["eval_every"], action_repeat(data, path))
        else:  # benchmarks/peers.py: one seed per file
            env_id, who, records = data["env"], data["algo"].upper(), [data]
            protocol = (data["steps"], data["eval_every"], data["action_repeat"])
        if env_id.startswith(prefix):
            out.setdefault(env_id, {}).setdefault(who, []).extend(records)
            protocols.setdefault(env_id, {}).setdefault(protocol, []).append(path.name)
            for record in records:
                files.setdefault((env_id, who, record["seed"]), []).append(str(path))
    for env_id, seen in protocols.items():
        if len(seen) > 1:
            kinds = "; ".join(f"{', '.join(names)}: steps/eval_every/action_repeat {p}" for p, names in seen.items())
            raise SystemExit(f"error: {env_id} was run on different protocols ({kinds})")
    for (env_id, who, seed), holders in files.items():
        if len(holders) > 1:
            raise SystemExit(f"error: {env_id}: {who} has seed {seed} twice ({', '.join(holders)})")
    for by_who in out.values():
        for records in by_who.values():
            records.sort(key=lambda record: record["seed"])  # per-seed columns in seed order, whatever the folders
    return out


def action_repeat(data: dict, path: Path) -> int:
    """A learning.py file's action repeat: its records' config, or (files before that field) its --set."""
    if "config" in data["seeds"][0]:
        return data["seeds"][0]["config"]["action_repeat"]
    given = [int(item.split("=")[1]) for item in data["args"]["set"] if item.startswith("action_repeat=")]
    if not given:
        raise SystemExit(f"error: {path}: cannot tell the action repeat its runs used")
    return given[-1]


def score(record: dict) -> float:
    """The mean evaluation over the last 20% of env steps; records written before the field existed end
    their curve at the run's budget."""
    if "last_20_percent_mean" in record:
        return record["last_20_percent_mean"]
    return last_fifth_mean(record["curve"], record["curve"][-1]["step"])


def mean_of(records: list[dict], key: str) -> float | None:
    values = [r[key] for r in records if r.get(key) is not None]
    return statistics.mean(values) if values else None


def summarise(runs: dict[str, dict[str, list[dict]]], published: dict[str, Any]) -> dict[str, Any]:
    rows = {}
    for env_id, groups in sorted(runs.items()):
        agent = groups.get("agent", [])
        row: dict[str, Any] = {"seeds": len(agent)}
        if agent:
            scores = [score(r) for r in agent]
            row.update({
                "score_mean": statistics.mean(scores), "score_per_seed": scores,
                "final_mean": mean_of(agent, "final_return"), "best_mean": mean_of(agent, "best_return"),
                "fresh_eval_of_best_mean": mean_of(agent, "fresh_eval_of_best"),
                "env_steps_per_s": statistics.mean(r["env_steps"] / r["seconds"] for r in agent),
                "update_ms": mean_of(agent, "update_ms_median"), "updates": mean_of(agent, "updates"),
                "peak_rss_mib": max(r["peak_rss_mib"] for r in agent),
                "run_minutes": [r["seconds"] / 60 for r in agent],
                "env_steps": [r["env_steps"] for r in agent],
            })  # fmt: skip
        for peer, records in groups.items():
            if peer != "agent":
                row[f"{peer}_score_mean"] = statistics.mean(r["last_20_percent_mean"] for r in records)
                row[f"{peer}_seeds"] = len(records)
        for source, tasks in published.get("scores", {}).items():
            if published_key(env_id) in tasks:
                row[f"{source}_published"] = tasks[published_key(env_id)]["mean"]
        rows[env_id] = row
    return rows


def markdown(rows: dict[str, Any]) -> str:
    keys = {k for row in rows.values() for k in row if k.endswith(("_published", "_score_mean"))}
    refs = sorted(keys - {"score_mean"})
    header = ["task", "seeds", "score (last 20%)", "per seed", "final", "best", "fresh eval of best"]
    header += [ref.replace("_score_mean", " (here)").replace("_published", " (published)") for ref in refs]
    header += ["env steps/s", "ms/update", "updates", "peak MiB", "minutes per run"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]

    def cell(value: Any) -> str:
        return "—" if value is None else f"{value:,.1f}" if isinstance(value, float) else str(value)

    for env_id, row in rows.items():
        if not row["seeds"]:
            continue
        per_seed = " / ".join(cell(float(s)) for s in row["score_per_seed"])
        minutes = " / ".join(f"{m:.0f}" for m in row["run_minutes"])
        cells = [env_id, row["seeds"], cell(row["score_mean"]), per_seed, cell(row["final_mean"]),
                 cell(row["best_mean"]), cell(row["fresh_eval_of_best_mean"])]  # fmt: skip
        for ref in refs:
            value = row.get(ref)
            mark = "" if value is None else " ✓" if row["score_mean"] >= value else " ✗"
            cells.append(cell(value) + mark)
        cells += [cell(row["env_steps_per_s"]), cell(row["update_ms"]), cell(row["updates"]),
                  f"{row['peak_rss_mib']:.0f}", minutes]  # fmt: skip
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    lines.append("")
    lines.append("✓: this agent's score (mean over seeds) is at or above the reference; ✗: below it.")
    return "\n".join(lines) + "\n"


def figure(runs: dict[str, dict[str, list[dict]]], rows: dict[str, Any], title: str):
    import numpy as np

    def curve(record: dict) -> tuple:
        return np.array([p["step"] for p in record["curve"]]), np.array([p["return"] for p in record["curve"]])

    curves = {env_id: {who: [curve(r) for r in records] for who, records in groups.items()}
              for env_id, groups in runs.items()}  # fmt: skip
    aggregated = aggregate_groups(curves, "mean")
    fig = curves_figure(aggregated, "evaluation return", title)
    styles = iter(["--", ":", "-."])
    style = {key: next(styles) for key in sorted({k for row in rows.values() for k in row if k.endswith("_published")})}
    for ax, env_id in zip(fig.axes, aggregated, strict=True):
        for key, value in rows[env_id].items():
            if key in style:
                label = f"{key.removesuffix('_published')}, published, at 100k"
                ax.axhline(value, linestyle=style[key], linewidth=1.2, color="0.35", label=label)
        ax.legend(fontsize="small")
    return fig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suite", help="env id prefix: dm_control, MinAtar")
    parser.add_argument("--runs", type=Path, nargs="+", default=[RESULTS / "suite"], help="folders of the runs' JSON")
    parser.add_argument("--peers", type=Path, default=None, help="the peers' JSON files from this folder instead")
    parser.add_argument("--match", default="*.json", help="glob of the run files read from --runs (default: all)")
    parser.add_argument("--published", type=Path, default=RESULTS / "published-dmc_proprio-100k.json")
    parser.add_argument("--out", type=Path, default=None, help="path without suffix (default results/suite-<suite>)")
    args = parser.parse_args()
    runs = load(args.runs, args.suite, args.peers, args.match)
    if not runs:
        raise SystemExit(f"error: no runs of {args.suite!r} in {', '.join(map(str, args.runs))}")
    published = json.loads(args.published.read_text()) if args.published.is_file() else {}
    rows = summarise(runs, published)
    out = args.out or RESULTS / f"suite-{args.suite}"
    table = markdown(rows)
    atomic_write_text(out.with_suffix(".md"), table)
    atomic_write_text(out.with_suffix(".json"), json.dumps(rows, indent=1))
    title = f"{args.suite}: evaluation return (mean of seeds, 95% band)"
    save_figure(figure(runs, rows, title), out.with_suffix(".png"))
    print(table)
    print(f"wrote {out}.md, .json, .png")


if __name__ == "__main__":
    main()
