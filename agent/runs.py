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


def take_lock(file: Any, patience: float = 1.0) -> bool:
    """An exclusive flock on an open file, trying for `patience` seconds: `agent runs` and a sweep's live
    view probe run folders' locks for an instant, and must not make a trainer starting meanwhile fail."""
    deadline = time.monotonic() + patience
    while True:
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)


def parse_metric_line(text: str) -> dict[str, Any] | None:
    """A metrics.jsonl line as a dict with an integer `step`; None for anything else (a line cut short)."""
    try:
        line = json.loads(text)
    except ValueError:
        return None
    if not isinstance(line, dict) or not isinstance(line.get("step"), int):
        return None
    return line


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
        if not take_lock(self._lock):
            self._lock.close()
            raise RunFolderError(f"{self.path} is in use by another training process (or another Trainer)")
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
        for text in self.metrics.read_text().splitlines():
            line = parse_metric_line(text)
            if line is None:
                break  # a line cut short by a crash
            if line["step"] <= step:
                kept.append(text)
        atomic_write_text(self.metrics, "".join(f"{text}\n" for text in kept))

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
        """(env steps, values) of every metric line whose `metric` is a number."""
        points = [(line["step"], line[metric]) for line in self.metrics if is_number(line.get(metric))]
        steps, values = zip(*points, strict=True) if points else ((), ())
        return np.array(steps, np.int64), np.array(values, np.float64)

    def summary(self) -> dict[str, Any]:
        """What `agent runs` lists (JSON-able): the run's identity, progress, evaluations and state."""
        _, last = self.curve("eval_return_mean")
        _, best = self.curve("eval_return_best")
        return {
            "run": str(self.path),
            "env_id": self.config["env_id"],
            "quantizer": self.config["quantizer"],
            "seed": self.config["seed"],
            "env_steps": self.env_steps,
            "logged_steps": self.metrics[-1]["step"] if self.metrics else 0,
            "total_steps": self.total_steps,
            "best_eval": float(best[-1]) if len(best) else None,
            "last_eval": float(last[-1]) if len(last) else None,
            "status": self.status,
            "age_seconds": round(self.age_seconds, 1),
        }

    def setting(self, key: str) -> Any:
        """A config value by its --set name (env_id, quantizer, seed, model.deter, quantizer_options.tau)."""
        head, _, rest = key.partition(".")
        section = self.config.get(head)
        if rest and isinstance(section, dict) and rest in section:
            return section[rest]
        if not rest and head in self.config:
            return self.config[head]
        raise KeyError(key)


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


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
    """The metric lines of a run, up to the first that is not one (a line cut short by a crash)."""
    lines = []
    metrics = path / "metrics.jsonl"
    if metrics.exists():
        for text in metrics.read_text().splitlines():
            line = parse_metric_line(text)
            if line is None:
                break
            lines.append(line)
    return lines


def read_run(path: Path) -> RunInfo:
    """A run folder's RunInfo; RunFolderError (one line) if it is not a readable one."""
    path = Path(path)
    config = RunFolder.read_config_of(path)
    train = config.get("train")
    if not all(isinstance(config.get(k), t) for k, t in (("env_id", str), ("quantizer", str), ("seed", int))) or (
        not isinstance(train, dict) or not isinstance(train.get("steps"), int)
    ):
        raise RunFolderError(f"{path / 'config.json'}: not a run's config (env_id, quantizer, seed, train.steps)")
    last = path / "checkpoints" / "last.safetensors"
    env_steps = 0
    if last.is_file():
        try:
            env_steps = int(checkpoint.metadata(last).get("counters", {}).get("env_steps", 0))
        except (checkpoint.CheckpointError, TypeError, ValueError, AttributeError):
            env_steps = 0
    metrics = read_metrics(path)
    written = [p.stat().st_mtime for p in (path / "metrics.jsonl", path / "config.json", last) if p.exists()]
    if is_running(path):
        status = "running"
    elif env_steps >= train["steps"]:
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


def read_runs(paths: list[Path]) -> tuple[list[RunInfo], list[tuple[Path, str]]]:
    """The readable runs at or below `paths`, and (folder, why) for those that are not."""
    infos, unreadable = [], []
    for path in find_runs(paths):
        try:
            infos.append(read_run(path))
        except RunFolderError as error:
            unreadable.append((path, str(error)))
    return infos, unreadable
