"""Fixtures shared by the test files."""

from pathlib import Path

import pytest

from agent import Agent


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A short CartPole run of the tiny preset: config, metrics, best and last checkpoints, replay chunks.
    Tests that change files copy it first."""
    run = tmp_path_factory.mktemp("tiny") / "run"
    Agent.create("CartPole-v1", preset="tiny", seed=0, train={"steps": 150, "eval_every": 100}).learn(run_dir=run)
    return run
