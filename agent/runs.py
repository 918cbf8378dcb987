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
from pathlib import Path
from typing import Any

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
        try:
            return json.loads((self.path / "config.json").read_text())
        except (OSError, ValueError) as error:
            raise RunFolderError(f"{self.path / 'config.json'}: unreadable ({error})") from None

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
