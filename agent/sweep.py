"""Sweeps: grids of ordinary run folders, trained in parallel on Ray.

A grid is the product of env ids, quantizers, seeds and swept `--set key=v1,v2` values, with the same
preset and fixed overrides for every run. Each run is a run folder `<sweep>/<name>` that `agent eval`,
`watch`, `dream` and `train --resume` work on; `<sweep>/sweep.json` records the grid and every run's
config, so that running the same command again continues what is unfinished (from its checkpoints) and
skips what is done, while a different grid in the same folder is refused. Runs not yet begun train with
their recorded configs too: a sweep continued by a later version, whose defaults changed, stays one
experiment (the changed defaults are reported).

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

import envs
from agent.agent import make_env_config
from agent.checkpoint import atomic_write_text
from agent.config import Config, ConfigError, flatten, from_dict
from agent.runs import RunFolder, RunFolderError, check_writable, read_run, safe_name

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
    """What a sweep runs: seeds x env_ids x quantizers x every combination of the swept values."""

    env_ids: list[str]
    quantizers: list[str]
    seeds: list[int]
    sets: dict[str, list[str]] = field(default_factory=dict)  # swept key -> its values
    preset: str = "default"
    overrides: dict[str, str] = field(default_factory=dict)  # the same for every run, e.g. train.steps

    def __post_init__(self) -> None:
        self.sets = dict(sorted(self.sets.items()))  # names and the record do not depend on the --set order

    @classmethod
    def from_options(
        cls,
        env_ids: list[str],
        quantizers: str,
        seeds: str,
        sets: dict[str, str],
        steps: int | None = None,
        preset: str = "default",
    ) -> Grid:
        """A grid from command-line text: quantizers "a,b"; seeds "3" (0, 1, 2) or "0,4,7"; sets
        {key: "v"} (the same for every run) or {key: "v1,v2"} (swept; commas inside [] or () do not split)."""
        overrides, swept = {}, {}
        for key, value in sets.items():
            if key in ("env_id", "quantizer", "seed"):
                raise ConfigError(f"--set {key}: give it as an argument or option of agent sweep instead")
            values = split_values(value, f"--set {key}")
            if len(values) > 1:
                swept[key] = values
            else:
                overrides[key] = value
        if steps is not None:
            overrides["train.steps"] = str(steps)
        return cls(env_ids, split_values(quantizers, "--quantizer"), parse_seeds(seeds), swept, preset, overrides)

    def runs(self) -> list[RunSpec]:
        keys = list(self.sets)
        out = []
        # seed-major: a sweep stopped half way has the first seeds of every cell, not every seed of a few
        for seed, env_id, quantizer, combination in itertools.product(
            self.seeds, self.env_ids, self.quantizers, itertools.product(*(self.sets[k] for k in keys))
        ):
            values = tuple(zip(keys, combination, strict=True))
            suffix = "".join(f"-{key}={value}" for key, value in values)
            name = safe_name(f"{env_id}-{quantizer}-seed{seed}{suffix}")
            out.append(RunSpec(name, env_id, quantizer, seed, values))
        return out

    def config(self, run: RunSpec) -> Config:
        overrides = {**self.overrides, **dict(run.values)}
        return make_env_config(self.preset, overrides, env_id=run.env_id, quantizer=run.quantizer, seed=run.seed)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def split_values(text: str, option: str) -> list[str]:
    """ "a,b" -> ["a", "b"]; commas inside brackets stay: "[8,5,5],[8,8]" -> ["[8,5,5]", "[8,8]"]."""
    items, depth, current = [], 0, ""
    for char in text:
        depth += 1 if char in "([" else -1 if char in ")]" else 0
        if char == "," and depth == 0:
            items.append(current.strip())
            current = ""
        else:
            current += char
    items.append(current.strip())
    items = [item for item in items if item]
    if not items:
        raise ConfigError(f"{option} expects a value or a comma-separated list, got {text!r}")
    return items


def parse_seeds(text: str) -> list[int]:
    """ "3" -> seeds 0, 1, 2; "0,4,7" -> those seeds."""
    try:
        values = [int(item) for item in split_values(text, "--seeds")]
    except ValueError:
        raise ConfigError(f"--seeds expects a count or a comma-separated list of integers, got {text!r}") from None
    if "," not in text:
        if values[0] < 1:
            raise ConfigError(f"--seeds must be >= 1, got {values[0]}")
        return list(range(values[0]))
    if min(values) < 0 or len(set(values)) != len(values):
        raise ConfigError(f"--seeds must be distinct and >= 0, got {text!r}")
    return values


@dataclass
class Sweep:
    """An opened sweep: its runs and the config each trains with."""

    folder: Path
    runs: list[RunSpec]
    # run name -> its config: as recorded when the sweep began, or today's where the record holds none (a sweep
    # begun by a version that recorded no configs)
    configs: dict[str, dict[str, Any]]
    # today's defaults that differ from the recorded configs, "key: recorded -> today" (empty for a new sweep)
    changed_defaults: list[str] = field(default_factory=list)


def open_sweep(folder: Path, grid: Grid) -> Sweep:
    """Check every run's config and env id, then record the grid and the runs' configs in `folder` (or check
    that the grid is the one recorded there, and take the configs recorded with it). Nothing is written
    if anything is wrong."""
    folder = Path(folder)
    runs = grid.runs()
    if not runs:
        raise SweepError("the grid is empty: give at least one env id, quantizer and seed")
    names = [run.name for run in runs]
    if len(set(names)) != len(names):
        raise SweepError("two runs of the grid would share a folder name; give distinct values")
    for env_id in grid.env_ids:
        envs.registered_id(env_id)
    configs = {}
    for run in runs:
        try:
            configs[run.name] = grid.config(run).to_dict()
        except ConfigError as error:
            raise ConfigError(f"run {run.name}: {error}") from None
    record = folder / SWEEP_FILE
    if record.exists():
        try:
            recorded = json.loads(record.read_text())
        except (OSError, ValueError) as error:
            raise SweepError(f"{record}: unreadable ({error})") from None
        if not isinstance(recorded, dict):
            raise SweepError(f"{record}: not a sweep's record")
        recorded_configs = recorded.pop("configs", None)  # None: recorded by a version that kept none
        if recorded != grid.to_dict():
            changed = sorted(k for k in grid.to_dict() if recorded.get(k) != grid.to_dict()[k])
            raise SweepError(
                f"{folder} holds a different sweep (it differs in {', '.join(changed)}); run it with its own "
                f"options (see {record}) or choose another --dir"
            )
        if recorded_configs is not None:
            return recorded_sweep(folder, runs, recorded_configs, configs)
    else:
        check_writable(folder)
        if folder.is_dir() and any(folder.iterdir()):
            raise SweepError(f"{folder} is not empty and holds no sweep; choose a new or empty --dir")
        atomic_write_text(record, json.dumps({**grid.to_dict(), "configs": configs}, indent=1))
    return Sweep(folder, runs, configs)


def recorded_sweep(folder: Path, runs: list[RunSpec], recorded: Any, today: dict[str, dict[str, Any]]) -> Sweep:
    """The sweep with the configs recorded when it began, and the defaults that differ from them today.
    A key added since takes its default when the recorded config is read, so it counts as changed only
    where an env-chosen default sets it otherwise."""
    record = folder / SWEEP_FILE
    if not isinstance(recorded, dict) or set(recorded) != set(today):
        raise SweepError(f"{record}: its configs do not match its grid's runs")
    changed = set()
    for name, config in recorded.items():
        try:
            was = from_dict(config).to_dict()
        except ConfigError as error:
            raise SweepError(
                f"{record}: run {name}'s recorded config no longer loads ({error}); continue the sweep with the "
                "version it began with, or choose another --dir"
            ) from None
        changed |= {f"{key}: {a!r} -> {b!r}" for key, a, b in config_differences(was, today[name])}
    return Sweep(folder, runs, recorded, sorted(changed))


def config_differences(a: dict[str, Any], b: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(key, value in a, value in b) for every flattened key where two configs (Config.to_dict) differ, in the
    config's order; a key that only one of them has (a quantizer option) counts, with None on the other side."""
    a, b = flatten(a), flatten(b)
    keys = [*b, *(key for key in a if key not in b)]
    return [(key, a.get(key), b.get(key)) for key in keys if a.get(key) != b.get(key)]


def run_differences(found: dict[str, Any], wanted: dict[str, Any], threads: int, here: str) -> list[str]:
    """'key: value there, value <here>' for every setting where a run folder's config (`found`, as read from its
    config.json) differs from `wanted`, both compared as validated configs (a key added since the run began takes
    its default on both sides) with the same thread count. ConfigError if `found` is not a config."""
    found = from_dict({**found, "threads": threads}).to_dict()
    wanted = from_dict({**wanted, "threads": threads}).to_dict()
    return [f"{key}: {a!r} there, {b!r} {here}" for key, a, b in config_differences(found, wanted)]


def finished(folder: Path, run: RunSpec) -> bool:
    try:
        return read_run(Path(folder) / run.name).status == "finished"
    except RunFolderError:
        return False


def train_run(run_dir: str, config: dict[str, Any], threads: int, stop_file: str) -> dict[str, Any]:
    """A Ray task: train one run of a sweep to its budget with `threads` torch threads, resuming it if it
    has begun. A run stops early, with a checkpoint, once `stop_file` exists."""
    from agent import Agent, Trainer, TrainingError, TrainingInterrupted

    path, stop = Path(run_dir), Path(stop_file)
    if stop.exists():
        return {"status": "stopped"}
    if (path / "config.json").exists():
        try:  # named, because a default that changed since the run began (a new version) differs too
            differences = run_differences(RunFolder.read_config_of(path), config, threads, "in the sweep")
        except ConfigError as error:
            return {"status": "failed", "error": f"{path / 'config.json'}: {error}"}
        if differences:
            error = f"{path} holds a run of another config ({'; '.join(differences)}); move it away"
            return {"status": "failed", "error": error}
        trainer = Trainer.resume(path, {"threads": threads})
    else:
        trainer = Trainer(Agent.from_config(from_dict({**config, "threads": threads})), path)
    with trainer:
        before = trainer.seconds_before  # a resumed run's earlier sessions: not this task's work

        def watch_for_stop(line: dict[str, Any]) -> None:
            if stop.exists():
                trainer.stop_requested = True  # the loop checkpoints at its next safe point

        try:
            trainer.learn(on_log=watch_for_stop)
        except TrainingInterrupted:
            return {"status": "stopped", "env_steps": trainer.counters["env_steps"]}
        except TrainingError as error:
            return {"status": "failed", "error": str(error)}
    seconds = trainer.seconds_before  # the run's whole training time, as learn() left it
    # task_seconds: this task's share of it, what a sweep's parallel speed-up adds up
    return {"status": "finished", "env_steps": trainer.counters["env_steps"], "seconds": seconds,
            "task_seconds": seconds - before}  # fmt: skip


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise SweepError('agent sweep runs on Ray, which is not installed: pip install -e ".[sweep]"') from None
    return ray


def start_ray(ray: Any, address: str | None, cpus_per_run: int) -> None:
    """ray.init on this machine (its servers on loopback) or on a cluster; SweepError if it fails or no node
    has `cpus_per_run` CPUs (the runs would wait for ever)."""
    try:
        if address is None:
            # "local": a new cluster of this machine alone, even where another one runs (or a stale one is
            # recorded in /tmp/ray), its servers on loopback
            ray.init(address="local", num_cpus=len(os.sched_getaffinity(0)), include_dashboard=False,
                     log_to_driver=False, logging_level=logging.ERROR, _node_ip_address="127.0.0.1")  # fmt: skip
        else:
            ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR)
    except Exception as error:  # a malformed or unreachable address, a version mismatch
        raise SweepError(f"cannot start Ray{f' at {address}' if address else ''}: {envs.first_line(error)}") from None
    largest = max((node["Resources"].get("CPU", 0) for node in ray.nodes() if node["Alive"]), default=0)
    if cpus_per_run > largest:
        ray.shutdown()
        raise SweepError(f"--cpus-per-run {cpus_per_run}: no Ray node has that many CPUs (the largest has {largest:g})")


def run_sweep(
    sweep: Sweep,
    address: str | None = None,
    cpus_per_run: int = 1,
    on_update: Callable[[dict[str, dict[str, Any]]], None] | None = None,
    poll_seconds: float = 1.0,
) -> dict[str, dict[str, Any]]:
    """Train every unfinished run of an opened sweep on Ray, each with its recorded config; returns each run's
    result by name (runs found finished are not started again). on_update(results so far) is called about
    every poll_seconds. A KeyboardInterrupt asks every run to stop at its next log line with a checkpoint
    and waits for them (their results say "stopped"); a second one cancels them at once and is raised."""
    ray = import_ray()
    folder, runs = sweep.folder.resolve(), sweep.runs  # Ray's workers do not share the driver's working folder
    (folder / STOP_FILE).unlink(missing_ok=True)
    results = {run.name: {"status": "finished"} for run in runs if finished(folder, run)}
    todo = [run for run in runs if run.name not in results]
    if not todo:
        return results
    stopping = False
    try:
        start_ray(ray, address, cpus_per_run)
        task = ray.remote(train_run).options(num_cpus=cpus_per_run, max_retries=3)
        stop_file = str(folder / STOP_FILE)
        refs = {task.remote(str(folder / run.name), sweep.configs[run.name], cpus_per_run, stop_file): run
                for run in todo}  # fmt: skip
        pending = list(refs)
        while pending:
            try:
                done, pending = ray.wait(pending, num_returns=1, timeout=poll_seconds)
                results.update({refs[ref].name: collect(ray, ref) for ref in done})
                if on_update is not None:
                    on_update(results)
            except KeyboardInterrupt:
                if stopping:  # a second Ctrl-C: cancel at once; runs keep their last checkpoints
                    for ref in pending:
                        ray.cancel(ref, force=True)
                    raise
                stopping = True
                request_stop(folder)
    except KeyboardInterrupt:
        if stopping:
            raise
        request_stop(folder)  # before the tasks started: they will see it at once
        raise
    finally:
        (folder / STOP_FILE).unlink(missing_ok=True)
        if ray.is_initialized():
            ray.shutdown()
    return results


def collect(ray: Any, ref: Any) -> dict[str, Any]:
    """A finished task's result; a task that raised becomes a failed run with the error's last line."""
    try:
        return ray.get(ref)
    except Exception as error:
        cause = getattr(error, "cause", None) or error
        text = str(cause).strip().splitlines()
        return {"status": "failed", "error": text[-1] if text else type(cause).__name__}


def request_stop(folder: Path) -> None:
    """Ask every run of the sweep to stop at its next log line, with a checkpoint."""
    (Path(folder) / STOP_FILE).write_text("")
