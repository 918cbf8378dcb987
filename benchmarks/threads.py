"""Threads: what torch's intra-op thread count does on an idle machine and on a busy one.

For each thread count (1 and 2): the default preset's update (world model + actor-critic, ms, median
of `--repeats` after warm-up, measured by benchmarks/speed.py in a process of its own) and the wall
clock of a short run (`agent train --preset tiny --steps 300`). With `--busy N`, N other processes
spin (`while True: pass`) while everything is measured, as other work on a shared machine would.
`--suite DIR` also times `pytest -m "not slow"` in DIR with OMP_NUM_THREADS=1 and =2 (for a checkout
whose tests do not set the thread count themselves, e.g. an older commit).

    python benchmarks/threads.py                  # idle machine
    python benchmarks/threads.py --busy 2         # two busy loops on this 2-core machine
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from agent.checkpoint import atomic_write_text

REPO = Path(__file__).resolve().parents[1]


def update_ms(threads: int, repeats: int) -> float:
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "speed.json"
        subprocess.run([sys.executable, "benchmarks/speed.py", "--presets", "default", "--e2e-steps", "0",
                        "--collect-steps", "0", "--repeats", str(repeats), "--threads", str(threads),
                        "--out", str(out)], cwd=REPO, check=True, capture_output=True)  # fmt: skip
        preset = json.loads(out.read_text())["presets"][0]
    return preset["world_model_ms"] + preset["actor_critic_ms"]


def timed(command: list[str], cwd: Path, env: dict | None = None, timeout: float = 3600) -> float | None:
    """Wall-clock seconds of a command; None if it ran past `timeout` (killed) or failed."""
    start = time.perf_counter()
    try:
        subprocess.run(command, cwd=cwd, env=env, check=True, capture_output=True, timeout=timeout)
    except (subprocess.TimeoutExpired, subprocess.CalledProcessError):
        return None
    return time.perf_counter() - start


def tiny_run_seconds(threads: int, timeout: float) -> float | None:
    with tempfile.TemporaryDirectory() as folder:
        command = ["agent", "train", "--preset", "tiny", "--steps", "300", "--threads", str(threads),
                   "--run-dir", str(Path(folder) / "run"), "--quiet"]  # fmt: skip
        return timed(command, REPO, timeout=timeout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--busy", type=int, default=0, help="busy-loop processes running meanwhile")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--timeout", type=float, default=900, help="seconds after which a run is given up")
    parser.add_argument("--suite", type=Path, default=None, help="a checkout whose test suite to time")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    out = args.out or REPO / "benchmarks" / "results" / f"threads-busy{args.busy}.json"
    loops = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
    results = []
    try:
        for threads in args.threads:
            record = {"threads": threads, "busy_loops": args.busy, "update_ms": update_ms(threads, args.repeats),
                      "tiny_run_s": tiny_run_seconds(threads, args.timeout)}  # fmt: skip
            if args.suite is not None:
                env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(args.suite)}
                command = [sys.executable, "-m", "pytest", "-q", "-m", "not slow", "-p", "no:cacheprovider"]
                record["suite_s"] = timed(command, args.suite, env, args.timeout)
            results.append(record)
            print(record, flush=True)
    finally:
        for loop in loops:
            loop.kill()
    table = Table(title=f"torch threads, {args.busy} busy loops (timeouts: {args.timeout:.0f} s)")
    for column in ("threads", "update ms (default)", "tiny run s", "suite s"):
        table.add_column(column, justify="right")
    for r in results:
        cells = [r["update_ms"], r["tiny_run_s"], r.get("suite_s")]
        table.add_row(str(r["threads"]), *("—" if c is None else f"{c:.1f}" for c in cells))
    Console().print(table)
    atomic_write_text(out, json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results}))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
