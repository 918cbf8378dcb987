"""Resuming a run: exact continuation, and survival of SIGKILL at any moment."""

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from agent import Agent, Trainer
from agent.config import ConfigError
from agent.replay import chunk_files

TINY = {"steps": 400, "checkpoint_every": 40, "eval_every": 200, "log_every": 20}


def steps_logged(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def assert_replay_chunks_partition(run: Path, total: int) -> None:
    """The chunk files cover steps [first, total) exactly once: no gaps, no duplicates."""
    chunks = chunk_files(run / "replay")
    assert chunks and chunks[-1][1] == total
    for (_, end, _), (start, _, _) in itertools.pairwise(chunks):
        assert start == end


def test_resume_continues_counters_replay_and_log_exactly(tmp_path):
    run = tmp_path / "run"
    old = Trainer.create("CartPole-v1", preset="tiny", run_dir=run, seed=0, train=TINY)
    old.learn(200)
    old.close()
    counters = dict(old.counters)
    trainer = Trainer.resume(run)
    assert trainer.counters == counters and trainer.agent.config == old.agent.config
    assert trainer.replay.total == old.replay.total
    held = old.replay.count
    for key in ("obs", "action", "reward", "is_first"):
        assert np.array_equal(trainer.replay.data[key][:, :held], old.replay.data[key][:, :held])
    for name, optimizer in trainer.optimizers.items():
        a, b = optimizer.state_dict()["state"], old.optimizers[name].state_dict()["state"]
        assert a and a.keys() == b.keys(), name  # every parameter's moments, not none
        for i in a:
            assert all(torch.equal(a[i][key], b[i][key]) for key in ("exp_avg", "exp_avg_sq", "step")), (name, i)
    assert trainer.best_eval == old.best_eval and trainer.evaluations == old.evaluations
    assert trainer.agent.generator.get_state().equal(old.agent.generator.get_state())
    assert trainer.generator.get_state().equal(old.generator.get_state())
    trainer.learn()  # to the run's budget
    trainer.close()
    assert trainer.counters["env_steps"] == 400
    logged = steps_logged(run)
    assert logged == sorted(set(logged)) and logged[-1] == 400 and 200 in logged
    assert_replay_chunks_partition(run, trainer.replay.total)


def test_resume_applies_allowed_changes_and_refuses_the_others(tmp_path):
    run = tmp_path / "run"
    with Trainer.create("CartPole-v1", preset="tiny", run_dir=run, train=TINY) as trainer:
        trainer.learn(120)
    with Trainer.resume(run, {"train.steps": 1000, "train.eval_every": 500}) as trainer:
        assert trainer.agent.config.train.steps == 1000
        assert json.loads((run / "config.json").read_text())["train"]["steps"] == 1000
    with pytest.raises(ConfigError, match=r"cannot change model\.deter, seed when resuming"):
        Trainer.resume(run, {"model.deter": 8, "seed": 3})
    with pytest.raises(ConfigError, match="below the run's env steps"):
        Trainer.resume(run, {"train.steps": 110})


CLI = [sys.executable, "-c", "from cli import app; app()"]


def start(args: list[str], cwd: Path, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(CLI + args, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def last_env_steps(run: Path) -> int:
    return Agent.load(run, which="last").trained_env_steps


@pytest.mark.slow
def test_sigkill_at_random_moments_and_during_a_checkpoint_write_then_resume(tmp_path):
    repo = Path(__file__).resolve().parents[1]
    run = tmp_path / "run"
    sets = [f"--set=train.{k}={v}" for k, v in TINY.items() if k != "steps"]
    fresh = ["train", "--preset", "tiny", "--steps", "400", "--run-dir", str(run), "--quiet", *sets]
    resume = ["train", "--resume", str(run), "--quiet"]
    rng = np.random.default_rng(0)
    seen = []
    # 1: killed during a checkpoint write (the 3rd), after the temporary file is partly written
    hook = (
        "import os, signal, safetensors.torch as st, agent.checkpoint as c\n"
        "calls = [0]\n"
        "def save_file(tensors, path, metadata=None):\n"
        "    calls[0] += 1\n"
        "    if calls[0] == 3:\n"
        "        open(path, 'wb').write(b'half a checkpoint')\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    st.save_file(tensors, path, metadata=metadata)\n"
        "c.save_file = save_file\n"
        "from cli import app; app()\n"
    )
    process = subprocess.Popen([sys.executable, "-c", hook, *fresh], cwd=repo, stderr=subprocess.PIPE)
    assert process.wait(timeout=300) == -signal.SIGKILL
    seen.append(last_env_steps(run))
    # 2-7: killed at random moments of training, resumed each time
    for _ in range(6):
        process = start(resume, repo)
        metrics = run / "metrics.jsonl"
        size = metrics.stat().st_size
        deadline = time.time() + 120
        while process.poll() is None and metrics.stat().st_size == size and time.time() < deadline:
            time.sleep(0.05)  # wait until this session is training (it has logged a line)
        time.sleep(float(rng.uniform(0.0, 1.5)))
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
        env_steps = last_env_steps(run)  # the run loads after every kill
        assert env_steps >= seen[-1]  # monotone
        seen.append(env_steps)
        logged = steps_logged(Path(run)) if (run / "metrics.jsonl").exists() else []
        assert logged == sorted(logged)
    # finally, a session that finishes the budget
    process = start(resume, repo)
    _, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr.decode()
    with Trainer.resume(run) as final:
        assert final.counters["env_steps"] == 400 and final.finished
    assert not list(run.rglob(".*.tmp-*"))  # temporary files of interrupted writes were cleaned up
    assert_replay_chunks_partition(run, final.replay.total)
    logged = steps_logged(run)
    assert logged == sorted(set(logged)) and logged[-1] == 400  # no duplicated or missing lines
    assert set(range(20, 401, 20)) <= set(logged)
