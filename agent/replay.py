"""Sequence replay: a ring buffer per environment stream, sampled as fixed-length sequences.

Each stored step is (obs_t, action_t, reward_t, is_first_t, is_last_t, is_terminal_t): the reward
received on arriving at obs_t, and the action taken after seeing it (DreamerV3's layout). An episode
ends with an is_last step (is_terminal too when the environment terminated rather than truncated)
and the next begins with an is_first step, so a sequence may run across an episode boundary: the
world model resets its state at is_first. A sequence never runs across the ring's write position,
where the oldest and newest data meet.

Persistence: with `persist(folder)`, new steps are also written to disk in chunk files
(`<start>-<end>.npz`, atomically renamed, steps [start, end) of every stream), when a chunk is full
and at every `flush()` (the trainer flushes at each checkpoint). A crash loses at most the steps
since the last chunk; `restore(folder, total)` loads chunks up to `total` steps, each exactly once,
and deletes those written after it. Chunks that neither the ring nor the last checkpoint (`checkpointed()`)
needs are deleted: the ring may have overwritten steps that a resume from that checkpoint still loads.

Memory: obs bytes (e.g. 4 x obs_dim for float32 vectors, H x W x C for uint8 images)
+ 4 x action_dim + 4 (reward) + 3 (flags) bytes per step, allocated up front.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from agent.checkpoint import CheckpointError, atomic_write

FIELDS = ("obs", "action", "reward", "is_first", "is_last", "is_terminal")


class Replay:
    def __init__(
        self,
        capacity: int,
        streams: int,
        obs_shape: tuple[int, ...],
        action_dim: int,
        obs_dtype: np.dtype = np.float32,
        recency: float = 0.0,
        seed: int = 0,
    ):
        self.length = capacity // streams  # steps per stream
        self.streams, self.recency = streams, recency
        shape = (streams, self.length)
        self.data = {
            "obs": np.zeros(shape + tuple(obs_shape), obs_dtype),
            "action": np.zeros((*shape, action_dim), np.float32),
            "reward": np.zeros(shape, np.float32),
            "is_first": np.zeros(shape, bool),
            "is_last": np.zeros(shape, bool),
            "is_terminal": np.zeros(shape, bool),
        }
        self.pos = 0  # next write position, shared: every stream gets one step per add()
        self.count = 0  # steps held per stream (saturates at self.length)
        self.total = 0  # steps ever added per stream
        self.rng = np.random.default_rng(seed)
        self.folder: Path | None = None
        self.saved = 0  # steps per stream already in chunk files
        self.checkpoint_total: int | None = None  # `total` at the last checkpoint (None: none yet)
        self.chunk = 1024  # steps per stream in a full chunk

    def __len__(self) -> int:
        return self.count * self.streams

    @property
    def bytes_per_step(self) -> int:
        return sum(a[0, 0].nbytes for a in self.data.values())

    def add(self, step: dict[str, np.ndarray]) -> None:
        """One step for every stream: each field has a leading axis of size `streams`."""
        for key in FIELDS:
            self.data[key][:, self.pos] = step[key]
        self.pos = (self.pos + 1) % self.length
        self.count = min(self.count + 1, self.length)
        self.total += 1
        if self.folder is not None and self.total - self.saved >= self.chunk:
            self.flush()

    def add_many(self, steps: dict[str, np.ndarray]) -> None:
        """n steps for every stream at once: each field (streams, n, ...); only the newest fit."""
        n = len(steps["reward"][0])
        keep = min(n, self.length)
        index = (self.pos + np.arange(n - keep, n)) % self.length
        for key in FIELDS:
            self.data[key][:, index] = steps[key][:, n - keep :]
        self.pos = (self.pos + n) % self.length
        self.count = min(self.count + n, self.length)
        self.total += n

    # --- persistence --------------------------------------------------------------------------------

    def persist(self, folder: Path) -> None:
        """Write every step added from now on to chunk files in `folder`."""
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.saved = self.total

    def flush(self) -> None:
        """Write the steps not yet on disk as one chunk; drop chunks that nothing needs any more."""
        if self.folder is None or self.total == self.saved:
            return
        n = self.total - self.saved
        index = (self.pos - n + np.arange(n)) % self.length
        arrays = {key: self.data[key][:, index] for key in FIELDS}

        def write(tmp: str) -> None:
            buffer = io.BytesIO()
            np.savez(buffer, **arrays)
            Path(tmp).write_bytes(buffer.getvalue())

        atomic_write(self.folder / f"{self.saved:012d}-{self.total:012d}.npz", write)
        self.saved = self.total
        self.prune()

    def checkpointed(self) -> None:
        """A checkpoint of `total` steps is on disk: the chunks that only older checkpoints needed can go."""
        self.checkpoint_total = self.total
        self.prune()

    def prune(self) -> None:
        """Delete the chunks older than both the ring's steps and those a resume from the last checkpoint loads."""
        if self.folder is None:
            return
        needed_from = self.total if self.checkpoint_total is None else self.checkpoint_total  # never above total
        for _, end, path in chunk_files(self.folder):
            if end <= needed_from - self.length:
                path.unlink()

    def restore(self, folder: Path, total: int) -> None:
        """Load the chunks holding steps [.., total) of a run, in order and once each; delete chunks
        written after `total` (after the checkpoint that recorded it)."""
        folder = Path(folder)
        expected = None
        for start, end, path in chunk_files(folder):
            if start >= total:
                path.unlink()
                continue
            if end > total or (expected is not None and start != expected):
                raise CheckpointError(f"{path}: replay chunk does not fit the checkpoint (steps {start}-{end})")
            try:
                steps = read_chunk(path)
            except (OSError, ValueError, KeyError) as error:
                raise CheckpointError(f"{path}: unreadable replay chunk ({error})") from None
            if expected is None:
                self.total = start  # the ring kept only the newest steps; older chunks were deleted
            self.add_many(steps)
            expected = end
        if self.total != total:
            raise CheckpointError(f"{folder}: replay chunks end at step {self.total}, the checkpoint at {total}")
        self.persist(folder)
        self.checkpoint_total = total

    def sample(self, batch: int, seq_len: int) -> dict[str, np.ndarray]:
        """`batch` sequences of `seq_len` consecutive steps: each field (batch, seq_len, ...)."""
        if self.count < seq_len:
            raise ValueError(f"replay holds {self.count} steps per stream, fewer than seq_len={seq_len}")
        starts_available = self.count - seq_len + 1
        if self.recency > 0:
            # age 0 is the newest start; p(age) ∝ (age + 1) ** -recency, sampled by inverse CDF
            weights = np.arange(1, starts_available + 1, dtype=np.float64) ** -self.recency
            age = np.searchsorted(np.cumsum(weights), self.rng.random(batch) * weights.sum())
            offset = starts_available - 1 - np.minimum(age, starts_available - 1)
        else:
            offset = self.rng.integers(0, starts_available, batch)
        oldest = self.pos if self.count == self.length else 0
        index = (oldest + offset[:, None] + np.arange(seq_len)) % self.length  # (B, T)
        stream = self.rng.integers(0, self.streams, batch)[:, None]
        return {key: array[stream, index] for key, array in self.data.items()}


def read_chunk(path: Path) -> dict[str, np.ndarray]:
    """One chunk file's arrays (FIELDS, each (streams, steps, ...)); pickled objects are refused."""
    with np.load(path, allow_pickle=False) as chunk:  # noqa: TID251 (no pickles)
        return {key: chunk[key] for key in FIELDS}


def chunk_files(folder: Path) -> list[tuple[int, int, Path]]:
    """(start, end, path) of the chunk files in a folder, oldest first."""
    out = []
    for path in Path(folder).glob("*.npz"):
        start, _, end = path.stem.partition("-")
        if start.isdigit() and end.isdigit():
            out.append((int(start), int(end), path))
    return sorted(out)
