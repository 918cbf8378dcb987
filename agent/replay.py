"""Sequence replay: a ring buffer per environment stream, sampled as fixed-length sequences.

Each stored step is (obs_t, action_t, reward_t, is_first_t, is_last_t, is_terminal_t): the reward
received on arriving at obs_t, and the action taken after seeing it (DreamerV3's layout). An episode
ends with an is_last step (is_terminal too when the environment terminated rather than truncated)
and the next begins with an is_first step, so a sequence may run across an episode boundary: the
world model resets its state at is_first. A sequence never runs across the ring's write position,
where the oldest and newest data meet.

Memory: obs bytes (e.g. 4 x obs_dim for float32 vectors, H x W x C for uint8 images)
+ 4 x action_dim + 4 (reward) + 3 (flags) bytes per step, allocated up front.
"""

from __future__ import annotations

import numpy as np

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
        self.count = 0  # steps written per stream (saturates at self.length)
        self.rng = np.random.default_rng(seed)

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
