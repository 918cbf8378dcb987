"""Run folders: what a training run writes, and the guard that keeps two trainers out of one folder.

    <run>/config.json                the resolved config
    <run>/metrics.jsonl              one JSON object per log line, each with `step`
    <run>/checkpoints/last.safetensors   weights and the whole training state (resume)
    <run>/checkpoints/best.safetensors   the weights of the best evaluated policy
    <run>/replay/<start>-<end>.npz   the replay buffer, in chunks (see replay.py)
    <run>/.lock                      held (flock) by the trainer that has the folder open

A new run needs a folder without config.json. The lock is held from the moment a trainer opens the
folder until it closes it (or its process ends: the OS releases it), so a second trainer, in the
same process or another, cannot interleave its metrics, replay chunks and checkpoints with the first's.
"""

from __future__ import annotations

import fcntl
import itertools
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agent import checkpoint
from agent.checkpoint import TEMP_MARK, atomic_write_text


class RunFolderError(ValueError):
    """A folder that cannot take this run (it holds another run, is in use, is not writable)."""


def safe_name(text: str) -> str:
    """`text` with every run of characters other than letters, digits, '.', '_' and '-' replaced by '_'
    (env ids hold '/' and ':'; neither belongs in a folder name)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "run"


def check_writable(path: Path) -> None:
    """RunFolderError unless `path` is (or can be made) a folder this process can write in; creates nothing."""
    if path.exists() and not path.is_dir():
        raise RunFolderError(f"{path} is a file, not a folder")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise RunFolderError(f"cannot write to the run folder {path}: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise RunFolderError(f"cannot write to the run folder {path}: {existing} is not writable")


def check_empty(path: Path) -> None:
    """RunFolderError unless `path` is missing or empty (but for a lock file): a new run's folder."""
    others = {p.name for p in path.iterdir()} - {".lock"} if path.is_dir() else set()
    if "config.json" in others:
        raise RunFolderError(f"{path} already holds a run; resume it with --resume {path}, or choose another folder")
    if others:
        raise RunFolderError(f"{path} is not empty and holds no run; choose a new or empty folder")


class RunFolder:
    """An open run folder (see the module's docstring). new=True: the folder must not hold a run yet
    (it is created); new=False: it must hold one (resume). Close it, or use it as a context manager."""

    def __init__(self, path: str | Path, new: bool):
        self.path = Path(path)
        if new:
            check_writable(self.path)
            check_empty(self.path)
            self.path.mkdir(parents=True, exist_ok=True)
        elif not (self.path / "config.json").is_file():
            what = "no such folder" if not self.path.exists() else "not a run folder (no config.json)"
            raise RunFolderError(f"{self.path}: {what}; nothing to resume")
        self._lock = open(self.path / ".lock", "a")  # noqa: SIM115 (held until close)
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise RunFolderError(f"{self.path} is in use by another training process (or another Trainer)") from None
        self._lock.truncate(0)  # the holder's process id, for people (and tests) who look
        self._lock.write(f"{os.getpid()}\n")
        self._lock.flush()
        if new:  # again under the lock: another trainer may have created it since
            try:
                check_empty(self.path)
            except RunFolderError:
                self.close()
                raise
        for folder in (self.path, self.path / "checkpoints", self.replay):  # a crash's temporary files
            for leftover in folder.glob(f".*{TEMP_MARK}*"):
                leftover.unlink()

    def __enter__(self) -> RunFolder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if not self._lock.closed:
            self._lock.close()  # releases the flock

    @property
    def replay(self) -> Path:
        return self.path / "replay"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    def checkpoint(self, name: str) -> Path:
        return self.path / "checkpoints" / f"{name}.safetensors"

    def write_config(self, text: str) -> None:
        atomic_write_text(self.path / "config.json", text)

    def read_config(self) -> dict[str, Any]:
        return self.read_config_of(self.path)

    @staticmethod
    def read_config_of(path: Path) -> dict[str, Any]:
        """A run folder's config.json as a dict (not validated)."""
        try:
            config = json.loads((Path(path) / "config.json").read_text())
        except (OSError, ValueError) as error:
            raise RunFolderError(f"{Path(path) / 'config.json'}: unreadable ({error})") from None
        if not isinstance(config, dict):
            raise RunFolderError(f"{Path(path) / 'config.json'}: not a JSON object")
        return config

    def append_metrics(self, line: dict[str, Any]) -> None:
        with open(self.metrics, "a") as f:
            f.write(json.dumps(line) + "\n")

    def cut_metrics(self, step: int) -> None:
        """Keep the metric lines up to `step` (a checkpoint's): a resumed run writes the later ones again."""
        if not self.metrics.exists():
            return
        kept = []
        for line in self.metrics.read_text().splitlines():
            try:
                if json.loads(line)["step"] <= step:
                    kept.append(line)
            except (ValueError, KeyError, TypeError):
                break  # a line cut short by a crash
        atomic_write_text(self.metrics, "".join(f"{line}\n" for line in kept))

    def clear_progress(self) -> None:
        """Forget what a run wrote before its first `last` checkpoint (metrics, replay chunks, a `best`
        checkpoint), so that it can start again from its config."""
        self.metrics.unlink(missing_ok=True)
        self.checkpoint("best").unlink(missing_ok=True)
        for chunk in self.replay.glob("*.npz"):
            chunk.unlink()


# --- reading run folders (agent runs, plot, compare) ----------------------------------------------------


@dataclass
class RunInfo:
    """What a run folder says about itself: its config, progress, evaluations and state."""

    path: Path
    config: dict[str, Any]
    env_steps: int  # of the last checkpoint (what a resume continues from)
    metrics: list[dict[str, Any]]
    status: str  # running | finished | interrupted | new
    age_seconds: float  # since the run last wrote anything

    @property
    def total_steps(self) -> int:
        return int(self.config["train"]["steps"])

    def curve(self, metric: str = "eval_return_mean") -> tuple[np.ndarray, np.ndarray]:
        """(env steps, values) of every metric line that has `metric`."""
        points = [(line["step"], line[metric]) for line in self.metrics if metric in line]
        steps, values = zip(*points, strict=True) if points else ((), ())
        return np.array(steps, np.int64), np.array(values, np.float64)

    def summary(self) -> dict[str, Any]:
        """What `agent runs` lists (JSON-able): the run's identity, progress, evaluations and state."""
        evals = [line for line in self.metrics if "eval_return_mean" in line]
        return {
            "run": str(self.path),
            "env_id": self.config.get("env_id"),
            "quantizer": self.config.get("quantizer"),
            "seed": self.config.get("seed"),
            "env_steps": self.env_steps,
            "logged_steps": self.metrics[-1]["step"] if self.metrics else 0,
            "total_steps": self.total_steps,
            "best_eval": evals[-1]["eval_return_best"] if evals else None,
            "last_eval": evals[-1]["eval_return_mean"] if evals else None,
            "status": self.status,
            "age_seconds": round(self.age_seconds, 1),
        }

    def setting(self, key: str) -> Any:
        """A config value by its --set name (env_id, quantizer, seed, model.deter, ...)."""
        value: Any = self.config
        for part in key.split("."):
            if not isinstance(value, dict) or part not in value:
                raise KeyError(key)
            value = value[part]
        return value


def is_running(path: Path) -> bool:
    """Whether a trainer holds the run folder's lock now."""
    lock = path / ".lock"
    if not lock.exists():
        return False
    with open(lock) as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
    return False


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The metric lines of a run (a line cut short by a crash ends the list)."""
    lines = []
    metrics = path / "metrics.jsonl"
    if metrics.exists():
        for line in metrics.read_text().splitlines():
            try:
                lines.append(json.loads(line))
            except ValueError:
                break
    return lines


def read_run(path: Path) -> RunInfo:
    """A run folder's RunInfo; RunFolderError if it is not one."""
    path = Path(path)
    config = RunFolder.read_config_of(path)
    last = path / "checkpoints" / "last.safetensors"
    env_steps = 0
    if last.is_file():
        try:
            env_steps = int(checkpoint.metadata(last).get("counters", {}).get("env_steps", 0))
        except checkpoint.CheckpointError:
            env_steps = 0
    metrics = read_metrics(path)
    written = [p.stat().st_mtime for p in (path / "metrics.jsonl", path / "config.json", last) if p.exists()]
    try:
        total = int(config["train"]["steps"])
    except (KeyError, TypeError, ValueError):
        raise RunFolderError(f"{path / 'config.json'}: no train.steps") from None
    if is_running(path):
        status = "running"
    elif env_steps >= total:
        status = "finished"
    else:
        status = "interrupted" if metrics or env_steps else "new"
    return RunInfo(path, config, env_steps, metrics, status, time.time() - max(written))


def find_runs(paths: list[Path]) -> list[Path]:
    """Run folders (those with a config.json) at or below each path, in order, each once."""
    found: list[Path] = []
    for path in paths:
        path = Path(path)
        if not path.exists():
            raise RunFolderError(f"{path}: no such folder")
        candidates = [path] if (path / "config.json").is_file() else sorted(p.parent for p in path.rglob("config.json"))
        found += [p for p in candidates if p not in found]
    return found


def group_key(info: RunInfo, group: str) -> str:
    try:
        return str(info.setting(group))
    except KeyError:
        raise RunFolderError(f"{info.path}: its config has no {group!r} to group by") from None


def curves_by_group(
    infos: list[RunInfo], group: str, metric: str = "eval_return_mean"
) -> dict[str, dict[str, list[tuple[np.ndarray, np.ndarray]]]]:
    """{env id: {group value: [(steps, values) of each run]}}, runs without any `metric` left out."""
    out: dict[str, dict[str, list[tuple[np.ndarray, np.ndarray]]]] = {}
    for info in infos:
        steps, values = info.curve(metric)
        if len(steps):
            out.setdefault(str(info.config["env_id"]), {}).setdefault(group_key(info, group), []).append(
                (steps, values)
            )
    return out


def compare(
    infos: list[RunInfo],
    group: str = "quantizer",
    metric: str = "eval_return_mean",
    threshold: float | None = None,
    reps: int = 2000,
) -> dict[str, Any]:
    """Per env and per group: seeds, the IQM and mean of the final value and of the area under the curve
    (the curve's mean over env steps) with 95% bootstrap confidence intervals, env steps to `threshold`,
    and the probability of improvement of every group over every other (with its interval)."""
    from agent import stats

    report: dict[str, Any] = {"group": group, "metric": metric, "threshold": threshold, "envs": {}}
    for env_id, groups in curves_by_group(infos, group, metric).items():
        finals = {name: np.array([values[-1] for _, values in curves]) for name, curves in groups.items()}
        areas = {name: np.array([stats.area_under_curve(s, v) for s, v in curves]) for name, curves in groups.items()}
        rows = {}
        for name, curves in groups.items():
            row: dict[str, Any] = {"seeds": len(curves)}
            for label, scores in (("final", finals[name]), ("auc", areas[name])):
                for aggregate in ("iqm", "mean"):
                    function = getattr(stats, aggregate)
                    row[f"{label}_{aggregate}"] = function(scores)
                    row[f"{label}_{aggregate}_ci"] = stats.bootstrap_ci(scores, function, reps)
            if threshold is not None:
                reached = [stats.first_step_reaching(s, v, threshold) for s, v in curves]
                steps = [r for r in reached if r is not None]
                row["reached"] = len(steps)
                row["steps_to_threshold_median"] = float(np.median(steps)) if steps else None
            rows[name] = row
        improvement = {
            f"{a} > {b}": {
                "p": stats.probability_of_improvement(finals[a], finals[b]),
                "ci": stats.probability_of_improvement_ci(finals[a], finals[b], max(reps // 2, 100)),
            }
            for a, b in itertools.permutations(groups, 2)
        }
        report["envs"][env_id] = {"groups": rows, "probability_of_improvement": improvement}
    return report
