"""The sequence replay buffer."""

import numpy as np
import pytest

from agent.replay import Replay, chunk_files


def fill(replay, episodes_per_stream, rng):
    """Episodes of random lengths in every stream; obs = (stream, episode, t within the episode)."""
    streams = replay.streams
    episode, t = np.zeros(streams, int), np.zeros(streams, int)
    lengths = rng.integers(3, 12, (streams, episodes_per_stream + 1))
    total = 0
    while (episode < episodes_per_stream).all():
        is_first = t == 0
        is_last = t == lengths[np.arange(streams), episode] - 1
        obs = np.stack([np.arange(streams), episode, t], -1).astype(np.float32)
        replay.add({
            "obs": obs, "action": np.zeros((streams, 1), np.float32), "reward": t.astype(np.float32),
            "is_first": is_first, "is_last": is_last, "is_terminal": is_last & (episode % 2 == 0),
        })  # fmt: skip
        total += 1
        episode, t = np.where(is_last, episode + 1, episode), np.where(is_last, 0, t + 1)
    return total


@pytest.mark.parametrize("recency", [0.0, 1.0])
def test_sequences_are_consecutive_steps_and_cross_episodes_only_at_boundaries(recency):
    replay = Replay(capacity=3 * 100, streams=3, obs_shape=(3,), action_dim=1, recency=recency, seed=0)
    written = fill(replay, 60, np.random.default_rng(0))
    assert written > 100  # the ring has wrapped
    batch = replay.sample(256, 10)
    assert batch["obs"].shape == (256, 10, 3) and batch["is_first"].shape == (256, 10)
    for seq in range(256):
        obs, first, last = batch["obs"][seq], batch["is_first"][seq], batch["is_last"][seq]
        assert (obs[:, 0] == obs[0, 0]).all()  # one stream
        for t in range(1, 10):
            if first[t]:  # a new episode starts only right after the previous one ended
                assert last[t - 1] and obs[t, 1] == obs[t - 1, 1] + 1 and obs[t, 2] == 0
            else:  # otherwise the next step of the same episode: never across the write position
                assert obs[t, 1] == obs[t - 1, 1] and obs[t, 2] == obs[t - 1, 2] + 1


def test_recency_weighting_prefers_new_data():
    replay = Replay(capacity=1000, streams=1, obs_shape=(3,), action_dim=1, recency=1.0, seed=0)
    fill(replay, 150, np.random.default_rng(1))
    uniform = Replay(capacity=1000, streams=1, obs_shape=(3,), action_dim=1, seed=0)
    fill(uniform, 150, np.random.default_rng(1))
    assert replay.sample(2000, 5)["obs"][:, 0, 1].mean() > uniform.sample(2000, 5)["obs"][:, 0, 1].mean() + 10


def test_capacity_bytes_per_step_and_errors():
    replay = Replay(capacity=10, streams=2, obs_shape=(4,), action_dim=2)
    assert replay.length == 5 and len(replay) == 0
    assert replay.bytes_per_step == 4 * 4 + 4 * 2 + 4 + 3
    with pytest.raises(ValueError, match="fewer than seq_len"):
        replay.sample(1, 3)


def add_counted(replay, steps):
    """`steps` steps whose obs is their index in the stream (replay.total before each)."""
    for _ in range(steps):
        index = np.full((1, 1), replay.total, np.float32)
        zeros = np.zeros(1, bool)
        replay.add({"obs": index, "action": np.zeros((1, 1), np.float32), "reward": np.zeros(1, np.float32),
                    "is_first": zeros, "is_last": zeros, "is_terminal": zeros})  # fmt: skip


def test_a_checkpoint_still_resumes_after_the_ring_has_overwritten_its_steps(tmp_path):
    """Chunk files are pruned against the last checkpoint, not the ring: a crash long after a checkpoint
    (checkpoint_every above the capacity) still resumes from it."""
    replay = Replay(capacity=8, streams=1, obs_shape=(1,), action_dim=1)
    replay.chunk = 3
    replay.persist(tmp_path)
    add_counted(replay, 10)
    replay.flush()
    replay.checkpointed()  # the trainer's `last` checkpoint at 10 steps
    add_counted(replay, 20)  # three rings' worth, flushed in chunks of 3; then a crash
    resumed = Replay(capacity=8, streams=1, obs_shape=(1,), action_dim=1)
    resumed.restore(tmp_path, 10)
    assert resumed.total == 10 and sorted(resumed.data["obs"][0, :, 0]) == list(range(2, 10))
    add_counted(resumed, 20)
    resumed.flush()
    resumed.checkpointed()  # the next checkpoint, at 30: chunks older than its ring can go
    assert chunk_files(tmp_path)[0][1] > 30 - 8 and chunk_files(tmp_path)[0][0] <= 30 - 8
