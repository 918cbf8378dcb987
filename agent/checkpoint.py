"""Atomic, safe checkpoints: one safetensors file holding the weights, with JSON metadata in its header.

Loading never executes code from the file (safetensors stores raw tensors; metadata is parsed as
JSON), so a checkpoint received from someone else is safe to evaluate or watch.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from envs import first_line

FORMAT = "stdreamer-checkpoint-1"
TEMP_MARK = ".tmp-"  # in the names of files being written: .<name>.tmp-<random><suffix>


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names the file and the problem."""


def atomic_write(path: Path, write) -> None:
    """Call write(temp_path), flush it to disk, then rename the temporary file over `path`: an interrupted
    write leaves the previous version intact, and so does a power loss right after the rename (without
    the flush, a file system may commit the rename before the data and leave an empty file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the temporary name keeps the real suffix: some writers choose the format by it (imageio's ffmpeg);
    # os.open with 0o666 gives the file the usual permissions under the process's umask
    tmp = str(path.parent / f".{path.name}{TEMP_MARK}{secrets.token_hex(6)}{path.suffix}")
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        write(tmp)
        fd = os.open(tmp, os.O_RDWR)  # Windows fsyncs only descriptors open for writing
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def save(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> None:
    """Write weights and JSON-serialisable metadata to one .safetensors file, atomically."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    header = {"format": FORMAT, **{k: json.dumps(v) for k, v in metadata.items()}}

    def write(tmp: str) -> None:
        try:
            save_file(tensors, tmp, metadata=header)
        except SafetensorError as error:  # e.g. a full disk: an OSError, with the reason on one line
            raise OSError(f"{path}: cannot write the checkpoint ({first_line(error)})") from None

    atomic_write(path, write)


def load(path: Path, device: str = "cpu") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, metadata) from a checkpoint written by `save`; CheckpointError if it is not one."""
    return _read(Path(path), device, tensors=True)


def metadata(path: Path) -> dict[str, Any]:
    """A checkpoint's metadata alone (its header), without reading the tensors."""
    return _read(Path(path), "cpu", tensors=False)[1]


def _read(path: Path, device: str, tensors: bool) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        with safe_open(str(path), framework="pt", device=device) as f:
            header = f.metadata() or {}
            if header.get("format") != FORMAT:
                raise CheckpointError(f"{path}: not a checkpoint of this project (format {header.get('format')!r})")
            data = {key: f.get_tensor(key) for key in f.keys()} if tensors else {}  # noqa: SIM118
        meta = {k: json.loads(v) for k, v in header.items() if k != "format"}
    except CheckpointError:
        raise
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise CheckpointError(f"{path}: unreadable or corrupt checkpoint ({first_line(error)})") from None
    return data, meta
