"""Sweeps: grids of ordinary run folders, trained in parallel on Ray.

A grid is the product of env ids, quantizers, seeds and swept `--set key=v1,v2` values, with the same
preset and fixed overrides for every run. Each run is a run folder `<sweep>/<name>` that `agent eval`,
`watch`, `dream` and `train --resume` work on; `<sweep>/sweep.json` records the grid, so that running
the same command again continues what is unfinished (from its checkpoints) and skips what is done,
while a different grid in the same folder is refused.

Runs execute as Ray tasks (`ray.init()` on this machine by default, an existing cluster with
`address`), `cpus_per_run` CPUs and as many torch threads each. Ray retries a task whose worker
died (a SIGKILL, a lost node); the retry resumes the run from its last checkpoint, and the run
folder's lock keeps two attempts from ever training it at once. Stopping: `request_stop()` writes
`<sweep>/.stop`, which every run sees at its next log line; it then writes a checkpoint and ends.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from agent.checkpoint import atomic_write_text
from agent.config import Config, ConfigError, from_dict, make_config
from agent.runs import RunFolderError, check_writable, read_run, safe_name

SWEEP_FILE = "sweep.json"
STOP_FILE = ".stop"


class SweepError(ValueError):
    """A sweep that cannot run as asked (Ray missing, a different grid in the folder, ...)."""


@dataclass(frozen=True)
class RunSpec:
    """One cell of the grid."""

    name: str
    env_id: str
    quantizer: str
    seed: int
    values: tuple[tuple[str, str], ...] = ()  # the swept --set values of this run


@dataclass
class Grid:
    """What a sweep runs: env_ids x quantizers x seeds x every combination of the swept values."""

    env_ids: list[str]
    quantizers: list[str]
    seeds: list[int]
    sets: dict[str, list[str]] = field(default_factory=dict)  # swept key -> its values
    preset: str = "default"
    overrides: dict[str, str] = field(default_factory=dict)  # the same for every run, e.g. train.steps

    def runs(self) -> list[RunSpec]:
        keys = list(self.sets)
        out = []
        # seed-major: a sweep stopped half way has the first seeds of every cell, not every seed of a few
        for env_id, seed, quantizer, combination in itertools.product(
            self.env_ids, self.seeds, self.quantizers, itertools.product(*(self.sets[k] for k in keys))
        ):
            values = tuple(zip(keys, combination, strict=True))
            suffix = "".join(f"-{key}={value}" for key, value in values)
            name = safe_name(f"{env_id}-{quantizer}-seed{seed}{suffix}")
            out.append(RunSpec(name, env_id, quantizer, seed, values))
        return out

    def config(self, run: RunSpec) -> Config:
        overrides = {**self.overrides, **dict(run.values)}
        return make_config(self.preset, overrides, env_id=run.env_id, quantizer=run.quantizer, seed=run.seed)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def open_sweep(folder: Path, grid: Grid) -> list[RunSpec]:
    """Check every run's config, then record the grid in `folder` (or check that it is the one recorded
    there); returns the runs. Nothing is written if any config is bad or the grid differs."""
    runs = grid.runs()
    if not runs:
        raise SweepError("the grid is empty: give at least one env id, quantizer and seed")
    names = [run.name for run in runs]
    if len(set(names)) != len(names):
        raise SweepError("two runs of the grid would share a folder name; give distinct values")
    for run in runs:
        try:
            grid.config(run)
        except ConfigError as error:
            raise ConfigError(f"run {run.name}: {error}") from None
    record = folder / SWEEP_FILE
    if record.exists():
        try:
            recorded = json.loads(record.read_text())
        except (OSError, ValueError) as error:
            raise SweepError(f"{record}: unreadable ({error})") from None
        if recorded != grid.to_dict():
            changed = sorted(k for k in grid.to_dict() if recorded.get(k) != grid.to_dict()[k])
            raise SweepError(
                f"{folder} holds a different sweep (it differs in {', '.join(changed)}); run it with its own "
                f"options (see {record}) or choose another --dir"
            )
    else:
        check_writable(folder)
        atomic_write_text(record, json.dumps(grid.to_dict(), indent=1))
    return runs


def read_grid(folder: Path) -> Grid:
    """The grid a sweep folder records."""
    try:
        return Grid(**json.loads((folder / SWEEP_FILE).read_text()))
    except (OSError, ValueError, TypeError) as error:
        raise SweepError(f"{folder / SWEEP_FILE}: not a sweep's record ({error})") from None


def status(folder: Path, run: RunSpec) -> str:
    """new | running | finished | interrupted, from the run's folder."""
    path = folder / run.name
    if not (path / "config.json").exists():
        return "new"
    try:
        return read_run(path).status
    except RunFolderError:
        return "new"


def train_run(run_dir: str, config: dict[str, Any], threads: int, stop_file: str) -> dict[str, Any]:
    """A Ray task: train one run of a sweep to its budget with `threads` torch threads, resuming it if it
    has begun. A run stops early, with a checkpoint, once `stop_file` exists."""
    from agent import Agent, Trainer, TrainingError, TrainingInterrupted

    path, stop = Path(run_dir), Path(stop_file)
    if stop.exists():
        return {"status": "stopped"}
    if (path / "config.json").exists():
        trainer = Trainer.resume(path, {"threads": threads})
    else:
        trainer = Trainer(Agent.from_config(from_dict({**config, "threads": threads})), path)
    with trainer:

        def watch_for_stop(line: dict[str, Any]) -> None:
            if stop.exists():
                trainer.stop_requested = True  # the loop checkpoints at its next safe point

        try:
            trainer.learn(on_log=watch_for_stop)
        except TrainingInterrupted:
            return {"status": "stopped", "env_steps": trainer.counters["env_steps"]}
        except TrainingError as error:
            return {"status": "failed", "error": str(error)}
    return {"status": "finished", "env_steps": trainer.counters["env_steps"], "seconds": trainer.seconds()}


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise SweepError('agent sweep runs on Ray, which is not installed: pip install -e ".[sweep]"') from None
    return ray


def run_sweep(
    folder: Path,
    grid: Grid,
    address: str | None = None,
    cpus_per_run: int = 1,
    on_update: Callable[[dict[str, str]], None] | None = None,
    poll_seconds: float = 1.0,
) -> dict[str, dict[str, Any]]:
    """Train every unfinished run of the grid on Ray; returns each run's result by name (finished runs
    found in the folder are not started again). on_update(states) is called about every poll_seconds
    with each run's state: queued, running, finished, stopped or failed. A KeyboardInterrupt asks every
    run to stop with a checkpoint and waits for them; a second one cancels them at once."""
    ray = import_ray()
    folder = Path(folder)
    runs = open_sweep(folder, grid)
    (folder / STOP_FILE).unlink(missing_ok=True)
    results: dict[str, dict[str, Any]] = {}
    todo = []
    for run in runs:
        if status(folder, run) == "finished":
            results[run.name] = {"status": "finished"}
        else:
            todo.append(run)
    if not todo:
        return results
    if address is None:
        # a cluster of this machine alone, its servers on loopback
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
                 _node_ip_address="127.0.0.1")  # fmt: skip
    else:
        ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR)
    try:
        task = ray.remote(train_run).options(num_cpus=cpus_per_run, max_retries=3)
        stop_file = str(folder / STOP_FILE)
        refs = {task.remote(str(folder / run.name), grid.config(run).to_dict(), cpus_per_run, stop_file): run
                for run in todo}  # fmt: skip
        pending = list(refs)
        stopping = False
        while pending:
            try:
                done, pending = ray.wait(pending, num_returns=1, timeout=poll_seconds)
                for ref in done:
                    results[refs[ref].name] = collect(ray, ref)
                if on_update is not None:
                    on_update(states(folder, runs, results))
            except KeyboardInterrupt:
                if stopping:  # a second Ctrl-C: cancel at once; runs keep their last checkpoints
                    for ref in pending:
                        ray.cancel(ref, force=True)
                    raise
                stopping = True
                request_stop(folder)
    finally:
        (folder / STOP_FILE).unlink(missing_ok=True)
        ray.shutdown()
    return results


def collect(ray: Any, ref: Any) -> dict[str, Any]:
    """A finished task's result; a task that raised becomes a failed run with the error's first line."""
    try:
        return ray.get(ref)
    except Exception as error:
        cause = getattr(error, "cause", None) or error
        text = str(cause).strip().splitlines()
        return {"status": "failed", "error": text[-1] if text else type(cause).__name__}


def request_stop(folder: Path) -> None:
    """Ask every run of the sweep to stop at its next log line, with a checkpoint."""
    (Path(folder) / STOP_FILE).write_text("")


def states(folder: Path, runs: list[RunSpec], results: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Each run's state for a live view."""
    out = {}
    for run in runs:
        if run.name in results:
            out[run.name] = results[run.name]["status"]
        else:
            out[run.name] = "running" if status(folder, run) == "running" else "queued"
    return out
