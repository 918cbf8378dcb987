"""Update time of two checkouts side by side: milliseconds per gradient update (world model + actor-critic),
default preset, on CartPole-v1, MinAtar Breakout and pixel CartPole (64x64 frames).

Each measurement runs in a process of its own with one torch thread: a fresh agent collects random
steps, then `trainer.update()` runs `--warmup` times untimed and `--repeats` times timed (median).
Checkouts alternate (A B A B ...) for `--rounds` rounds, so that drift of a shared machine hits both
alike; the ratio is taken per round. The child uses only what every version of the project has had
(make_config, Agent.from_config, Trainer(agent), collect(), update()), so an old commit can be
measured by this script too; where a checkout has make_env_config (the defaults that the env's
observations and actions choose), the child uses it, as `agent train` does:

    git worktree add /tmp/before 11ea4f6
    python benchmarks/update_speed.py --checkouts /tmp/before .

`--set-before` / `--set-after KEY=VALUE` (repeatable) override one side's config, e.g. to time the same
computation on both where the env-chosen defaults changed in between (MinAtar's since 3945b9c:
`--set-after actor_critic.repeats=1 --set-after model.image_likelihood=mse --set-after model.reward_scale=1
--set-after model.cont_scale=1`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

SETTINGS = {  # name -> (env id, observation mode)
    "cartpole": ("CartPole-v1", "state"),
    "breakout": ("MinAtar/Breakout-v1", "state"),
    "pixel-cartpole": ("CartPole-v1", "pixels"),
}


def update_times(trainer, repeats: int, warmup: int) -> list[float]:
    """Milliseconds of each of `repeats` calls of `trainer.update()`, after `warmup` untimed ones."""
    times = []
    for i in range(warmup + repeats):
        start = time.perf_counter()
        trainer.update()
        if i >= warmup:
            times.append((time.perf_counter() - start) * 1000)
    return times


def child(env_id: str, obs: str, repeats: int, warmup: int, overrides: dict[str, str]) -> None:
    import torch

    torch.set_num_threads(1)
    from agent.agent import Agent
    from agent.trainer import Trainer

    try:  # the config `agent train` resolves: with the defaults the env's spaces choose, where a checkout has them
        from agent.agent import make_env_config as make_config
    except ImportError:
        from agent.config import make_config
    config = make_config("default", {"obs": obs, "train.eval_every": 0, **overrides}, env_id=env_id)
    agent = Agent.from_config(config)
    trainer = Trainer(agent)
    for _ in range(max(config.train.seq_len * 2, 300)):
        trainer.collect()
    times = update_times(trainer, repeats, warmup)
    parameters = sum(p.numel() for p in agent.world_model.parameters())  # says which network each side timed
    result = {"median_ms": statistics.median(times), "min_ms": min(times), "world_model_parameters": parameters}
    print(json.dumps(result))


def measure(checkout: Path, setting: str, args: argparse.Namespace, overrides: dict[str, str]) -> dict:
    env_id, obs = SETTINGS[setting]
    env = {**os.environ, "PYTHONPATH": str(checkout.resolve()), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, __file__, "--child", env_id, obs, "--repeats", str(args.repeats),
               "--warmup", str(args.warmup), "--overrides", json.dumps(overrides)]  # fmt: skip
    result = subprocess.run(command, cwd=checkout, env=env, capture_output=True, text=True)
    if result.returncode != 0:  # e.g. an override that this checkout's config does not know
        last = (result.stderr.strip().splitlines() or [f"exit status {result.returncode}"])[-1]  # none if killed
        raise SystemExit(f"error: {checkout} {setting}: {last}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkouts", type=Path, nargs=2, default=[Path("."), Path(".")], help="A (before) B (after)")
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/update-speed.json"))
    for side in ("before", "after"):
        parser.add_argument(f"--set-{side}", action="append", default=[], metavar="KEY=VALUE",
                            help=f"a config override for the {side} checkout (repeatable)")  # fmt: skip
    parser.add_argument("--child", nargs=2, metavar=("ENV_ID", "OBS"), help=argparse.SUPPRESS)
    parser.add_argument("--overrides", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child, args.repeats, args.warmup, json.loads(args.overrides))
        return
    from learning import code_commit  # benchmarks/; imported here, as the rest: the children need none of it
    from rich.console import Console
    from rich.table import Table

    from agent.checkpoint import atomic_write_text
    from agent.config import ConfigError, parse_overrides

    before, after = args.checkouts
    try:
        sets_before, sets_after = parse_overrides(args.set_before), parse_overrides(args.set_after)
    except ConfigError as error:
        raise SystemExit(f"error: {error}") from None
    rows = []
    for setting in args.settings:
        rounds = []
        for _ in range(args.rounds):
            a, b = measure(before, setting, args, sets_before), measure(after, setting, args, sets_after)
            ratio = a["median_ms"] / b["median_ms"]
            rounds.append({"before_ms": a["median_ms"], "after_ms": b["median_ms"], "ratio": ratio,
                           "before_world_model_parameters": a.get("world_model_parameters"),
                           "after_world_model_parameters": b.get("world_model_parameters")})  # fmt: skip
            print(setting, rounds[-1], flush=True)
        rows.append({"setting": setting, "env_id": SETTINGS[setting][0], "obs": SETTINGS[setting][1], "rounds": rounds,
                     "before_ms": statistics.median(r["before_ms"] for r in rounds),
                     "after_ms": statistics.median(r["after_ms"] for r in rounds),
                     "speedup": statistics.median(r["ratio"] for r in rounds)})  # fmt: skip
    table = Table(title=f"ms per update (world model + actor-critic), default preset, 1 thread: {before} vs {after}")
    for column in ("setting", "before ms", "after ms", "speed-up (median of rounds)"):
        table.add_column(column, justify="right")
    for r in rows:
        table.add_row(r["setting"], f"{r['before_ms']:.1f}", f"{r['after_ms']:.1f}", f"{r['speedup']:.2f}x")
    Console().print(table)
    commits = {"before": code_commit(before), "after": code_commit(after)}
    payload = {"args": {k: str(v) for k, v in vars(args).items()}, "commits": commits, "results": rows}
    atomic_write_text(args.out, json.dumps(payload, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
