"""Learning benchmark: train N seeds of an env/quantizer/preset and record when each reaches a threshold.

Per seed: the evaluation curve (mean of `eval_episodes` deterministic episodes every `eval_every`
env steps), the env steps and wall-clock seconds at which the evaluation mean first reached the
threshold, the final evaluation, the mean of the last three, and a fresh evaluation of the checkpoint
that the run hands to `agent eval` (its best) on seeds that training never used.
Writes JSON and prints a rich summary. Runs the seeds one after another (2 cores: never in parallel).

    python benchmarks/learning.py                                   # CartPole-v1, categorical, 3 seeds
    python benchmarks/learning.py --quantizer round --seeds 3 --steps 15000
    python benchmarks/learning.py --env Pendulum-v1 --steps 30000 --threshold -300
    python benchmarks/learning.py --ppo          # and SB3 PPO side by side (pip install -e ".[bench]")
    python benchmarks/learning.py <same options> --resume runs/benchmarks/<run>  # go on with a stopped run

A run folder this script begins keeps a small record (benchmark.json): the commit the run began at and the peak
memory of every process that trained it, so that a run stopped and finished with --resume still names both
(each seed's commit_began and peak_rss_mib; the JSON's top-level commit is the last process's).

With --ppo, Stable-Baselines3's PPO with rl-baselines3-zoo's tuned CartPole-v1 settings runs on the
same seeds and the same evaluation protocol (10 deterministic episodes on fresh seeds every 1,000
env steps, counted in its wall-clock) until it first reaches the threshold or --ppo-steps.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import subprocess
import time
from pathlib import Path

from peers import last_fifth_mean, sb3_mean_return  # benchmarks/: shared with the SB3 peers
from rich.console import Console
from rich.table import Table

import envs
from agent import Agent, Trainer, evaluate
from agent.agent import make_env_config
from agent.checkpoint import CheckpointError, atomic_write_text
from agent.config import Config, ConfigError, parse_overrides
from agent.evaluate import evaluation_seed
from agent.runs import RunFolder, RunFolderError, read_metrics, safe_name
from agent.sweep import run_differences
from agent.trainer import set_threads

FRESH_SEED = 12345  # `agent eval`'s default seed: never used by training or its evaluations


def seed_config(args: argparse.Namespace, seed: int) -> Config:
    overrides = parse_overrides(args.set)
    overrides.update({"train.steps": args.steps, "train.eval_every": args.eval_every})
    return make_env_config(
        args.preset, overrides, env_id=args.env, quantizer=args.quantizer, seed=seed, threads=args.threads
    )


def resumable_seed(args: argparse.Namespace, run_dir: Path) -> int:
    """The seed of a run folder that this command began (a session that ended, a killed process).
    SystemExit if it is not a run, or was run with another config (another command or version)."""
    try:
        found = RunFolder.read_config_of(run_dir)
        seed = int(found["seed"])
        differences = run_differences(found, seed_config(args, seed).to_dict(), args.threads, "here")
    except (RunFolderError, ConfigError, KeyError, TypeError, ValueError) as error:
        raise SystemExit(f"--resume {run_dir}: not a run folder of this version ({error})") from None
    if differences:
        raise SystemExit(f"--resume {run_dir}: that run was not begun by this command ({'; '.join(differences)})")
    return seed


RECORD = "benchmark.json"  # in a run folder: the commit its first process began at, the peak memory of every process


def read_record(run_dir: Path) -> dict:
    """A run folder's benchmark record; {} for a run that this script did not begin (or began before it kept one)."""
    try:
        record = json.loads((run_dir / RECORD).read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def keep_peak(run_dir: Path) -> dict:
    """Fold this process's peak memory so far into the run folder's record (at every evaluation, so that a process
    stopped mid-run has left its peak there too); returns the record. Seeds run one after another in a process,
    so a later seed's peak includes the earlier ones'."""
    record = read_record(run_dir)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    record["peak_rss_mib"] = max(peak, record.get("peak_rss_mib", 0))
    atomic_write_text(run_dir / RECORD, json.dumps(record))
    return record


def run_seed(
    args: argparse.Namespace, seed: int, console: Console, resume: Path | None = None, commit: str | None = None
) -> dict:
    """Train one seed to args.steps (or go on with the run folder `resume` from its last checkpoint). commit: the
    code this process runs, kept in a new run's folder, so that a run finished by later processes still names
    the commit it began at."""
    curve: list[dict] = []
    update_ms: list[float] = []

    def on_log(line: dict, live: bool = True) -> None:
        if "time/update_ms" in line:
            update_ms.append(line["time/update_ms"])
        if "eval_return_mean" in line:
            curve.append({"step": line["step"], "seconds": line["time/seconds"], "return": line["eval_return_mean"]})
            step, value, seconds = line["step"], line["eval_return_mean"], line["time/seconds"]
            console.log(f"seed {seed}: step {step:>7,}  eval {value:8.1f}  {seconds:7.1f} s")
            if live:  # a resumed run's earlier lines, replayed below, add no peak of this process's
                keep_peak(run_dir)

    if resume is None:
        name = f"{safe_name(args.env)}-{args.quantizer}-{args.preset}-seed{seed}-{time.strftime('%Y%m%d-%H%M%S')}"
        run_dir = args.runs / name
        trainer = Trainer(Agent.from_config(seed_config(args, seed)), run_dir)
        atomic_write_text(run_dir / RECORD, json.dumps({"commit": commit}))
    else:
        run_dir = resume
        try:
            trainer = Trainer.resume(run_dir, {"threads": args.threads})
        except (RunFolderError, CheckpointError, ConfigError) as error:  # a run in use elsewhere, a corrupt checkpoint
            raise SystemExit(f"--resume {run_dir}: {error}") from None
        for line in read_metrics(run_dir):  # the evaluations before its checkpoint (resume cut the later ones)
            on_log(line, live=False)
    with trainer:
        trainer.learn(on_log=on_log)
    config = trainer.agent.config
    seconds = trainer.seconds_before  # the run's whole training time, over every process that trained it
    reached = next((point for point in curve if point["return"] >= args.threshold), None)
    fresh = evaluate(Agent.load(run_dir, which="best"), 10, FRESH_SEED)
    record = keep_peak(run_dir)
    return {
        "seed": seed,
        "run_dir": str(run_dir),
        "steps_to_threshold": reached["step"] if reached else None,
        "seconds_to_threshold": reached["seconds"] if reached else None,
        "final_return": curve[-1]["return"],
        "last3_mean": statistics.mean(p["return"] for p in curve[-3:]),
        "last_20_percent_mean": last_fifth_mean(curve, args.steps),
        "best_return": max(p["return"] for p in curve),
        "fresh_eval_of_best": fresh["mean_return"],
        "seconds": seconds,
        "env_steps": trainer.counters["env_steps"],
        "updates": trainer.counters["updates"],
        "env_steps_per_s": trainer.counters["env_steps"] / seconds,
        "update_ms_median": statistics.median(update_ms) if update_ms else None,  # of the metric lines' means
        "config": {"action_repeat": config.action_repeat, "train_ratio": config.train.train_ratio},
        "nonfinite_updates": trainer.nonfinite["total"],
        "resumes": trainer.resumes,  # processes that went on from a checkpoint (the curve is one run's all the same)
        "commit_began": record.get("commit"),  # None for a run begun before its folder kept the record
        "peak_rss_mib": record["peak_rss_mib"],
        "curve": curve,
    }


# rl-baselines3-zoo's tuned PPO settings for CartPole-v1 (hyperparams/ppo.yml); schedules over 1e5 steps
PPO_CARTPOLE = {"n_envs": 8, "n_steps": 32, "batch_size": 256, "gae_lambda": 0.8, "gamma": 0.98, "n_epochs": 20,
                "ent_coef": 0.0, "learning_rate": 1e-3, "clip_range": 0.2, "n_timesteps": 100_000}  # fmt: skip


def run_ppo(args: argparse.Namespace, seed: int, console: Console) -> dict:
    """SB3 PPO on one seed: evaluation curve and the steps/seconds to the threshold."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.logger import Logger

    hp = dict(PPO_CARTPOLE)
    total = hp.pop("n_timesteps")
    lr, clip = hp.pop("learning_rate"), hp.pop("clip_range")
    env = make_vec_env(args.env, n_envs=hp.pop("n_envs"), seed=seed)
    model = PPO("MlpPolicy", env, learning_rate=lambda p: p * lr, clip_range=lambda p: p * clip, seed=seed,
                device="cpu", verbose=0, **hp)  # fmt: skip
    model.set_logger(Logger(None, []))  # SB3's default logger leaves an empty folder in /tmp per run
    curve: list[dict] = []
    start = time.perf_counter()

    evaluation_env = envs.make_vector(args.env, 10)  # built once, as the agent's runs do

    def evaluate_ppo(evaluation: int) -> float:
        return sb3_mean_return(model, evaluation_env, evaluation_seed(seed, evaluation, 10))

    class Evaluate(BaseCallback):
        def _on_step(self) -> bool:
            while self.num_timesteps >= (len(curve) + 1) * args.eval_every:
                value = evaluate_ppo(len(curve) + 1)
                curve.append({"step": (len(curve) + 1) * args.eval_every, "seconds": time.perf_counter() - start,
                              "return": value})  # fmt: skip
                console.log(
                    f"PPO seed {seed}: step {curve[-1]['step']:>7,}  eval {value:8.1f}  {curve[-1]['seconds']:7.1f} s"
                )
                if value >= args.threshold:
                    return False
            return self.num_timesteps < args.ppo_steps

    model.learn(total_timesteps=total, callback=Evaluate())
    evaluation_env.close()
    reached = next((point for point in curve if point["return"] >= args.threshold), None)
    return {
        "seed": seed,
        "steps_to_threshold": reached["step"] if reached else None,
        "seconds_to_threshold": reached["seconds"] if reached else None,
        "curve": curve,
    }


def median_to_threshold(values: list[float | None]) -> float | None:
    """Median over every seed, a seed that never reached the threshold counting as never (None): the
    median is None when the median seed did not reach it, so failures are never averaged away."""
    median = statistics.median(math.inf if v is None else v for v in values)
    return None if math.isinf(median) else median


def summary_table(args: argparse.Namespace, results: list[dict]) -> Table:
    table = Table(title=f"{args.env} · {args.quantizer} · preset {args.preset} · threshold {args.threshold:g}")
    for column in ("seed", "steps to thr.", "s to thr.", "final", "last-3 mean", "best", "fresh eval (best)", "run s"):
        table.add_column(column, justify="right")
    for r in results:
        table.add_row(
            str(r["seed"]),
            f"{r['steps_to_threshold']:,}" if r["steps_to_threshold"] is not None else "not reached",
            f"{r['seconds_to_threshold']:.0f}" if r["seconds_to_threshold"] is not None else "—",
            f"{r['final_return']:.1f}", f"{r['last3_mean']:.1f}", f"{r['best_return']:.1f}",
            f"{r['fresh_eval_of_best']:.1f}", f"{r['seconds']:.0f}",
        )  # fmt: skip
    return table


def code_commit(checkout: Path | None = None) -> str | None:
    """The commit of the code that ran (with "+changes" when tracked files differ from it), or None outside
    a git checkout: a figure names the code that produced it. checkout: another checkout than this one's."""
    here = Path(checkout if checkout is not None else Path(__file__).parent).resolve()

    def git(*command: str) -> str:
        return subprocess.run(["git", *command], cwd=here, capture_output=True, text=True, check=True).stdout.strip()

    try:
        changed = git("status", "--porcelain", "--untracked-files=no")
        return git("rev-parse", "--short", "HEAD") + ("+changes" if changed else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="CartPole-v1")
    parser.add_argument("--quantizer", default="categorical")
    parser.add_argument("--preset", default="default")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds to run")
    parser.add_argument("--steps", type=int, default=15_000)
    parser.add_argument("--eval-every", type=int, default=1000)
    parser.add_argument("--threshold", type=float, default=475.0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    parser.add_argument("--set", action="append", default=[], help="config override key=value (repeatable)")
    parser.add_argument("--runs", type=Path, default=Path("runs/benchmarks"), help="where the runs are written")
    parser.add_argument("--out", type=Path, default=None, help="JSON file (default benchmarks/results/...)")
    parser.add_argument(
        "--resume",
        type=Path,
        nargs="+",
        default=None,
        help="run folders this same command began: go on from their last checkpoints (not --seeds)",
    )
    parser.add_argument("--ppo", action="store_true", help="also run SB3 PPO (tuned CartPole settings) side by side")
    parser.add_argument("--ppo-steps", type=int, default=100_000, help="PPO's budget if it never reaches the threshold")
    args = parser.parse_args()
    commit = code_commit()  # now, not when the JSON is written: the checkout may move during a run of an hour
    set_threads(args.threads)  # PPO's torch too
    out = args.out or Path("benchmarks/results") / f"learning-{safe_name(args.env)}-{args.quantizer}-{args.preset}.json"
    console = Console() if Console().is_terminal else Console(width=160)  # logs get the whole table
    if args.resume:
        jobs = [(resumable_seed(args, run_dir), run_dir) for run_dir in args.resume]
        args.seeds = [seed for seed, _ in jobs]
    else:
        jobs = [(seed, None) for seed in args.seeds]
    results = [run_seed(args, seed, console, run_dir, commit) for seed, run_dir in jobs]
    console.print(summary_table(args, results))
    reached = [r for r in results if r["steps_to_threshold"] is not None]
    summary = {
        "seeds_reaching_threshold": f"{len(reached)}/{len(results)}",
        "median_steps_to_threshold": median_to_threshold([r["steps_to_threshold"] for r in results]),
        "median_seconds_to_threshold": median_to_threshold([r["seconds_to_threshold"] for r in results]),
        "median_last3_mean": statistics.median(r["last3_mean"] for r in results),
        "mean_last_20_percent": statistics.mean(r["last_20_percent_mean"] for r in results),
        "median_run_seconds": statistics.median(r["seconds"] for r in results),
        "nonfinite_updates": sum(r["nonfinite_updates"] for r in results),
        "peak_rss_mib": max(r["peak_rss_mib"] for r in results),
    }
    console.print(summary)
    payload = {"args": vars(args), "commit": commit, "summary": summary, "seeds": results}
    if args.ppo:
        ppo = [run_ppo(args, seed, console) for seed in args.seeds]
        side = {
            "ppo_median_steps_to_threshold": median_to_threshold([r["steps_to_threshold"] for r in ppo]),
            "ppo_median_seconds_to_threshold": median_to_threshold([r["seconds_to_threshold"] for r in ppo]),
        }
        ours_steps, ours_seconds = summary["median_steps_to_threshold"], summary["median_seconds_to_threshold"]
        if ours_steps and side["ppo_median_steps_to_threshold"]:
            side["env_steps_ratio_ppo_over_ours"] = side["ppo_median_steps_to_threshold"] / ours_steps
            side["seconds_ratio_ours_over_ppo"] = ours_seconds / side["ppo_median_seconds_to_threshold"]
        table = Table(title=f"to {args.threshold:g}: this agent vs SB3 PPO (tuned), per seed")
        for column in ("seed", "ours: env steps", "ours: s", "PPO: env steps", "PPO: s"):
            table.add_column(column, justify="right")
        for r, p in zip(results, ppo, strict=True):
            cells = (
                r["steps_to_threshold"],
                r["seconds_to_threshold"],
                p["steps_to_threshold"],
                p["seconds_to_threshold"],
            )
            table.add_row(str(r["seed"]), *(f"{x:,.0f}" if x is not None else "not reached" for x in cells))
        console.print(table)
        console.print(side)
        payload["ppo"] = {"settings": PPO_CARTPOLE, "seeds": ppo, "summary": side}
    atomic_write_text(out, json.dumps(payload, indent=1, default=str))  # paths (--runs, --resume) as text
    console.print(f"wrote {out}")


if __name__ == "__main__":
    main()
