"""Fixtures shared by the test files, and the thread count every test runs with."""

from pathlib import Path

import pytest
import torch

from agent import Trainer

# One thread: small models gain nothing from a second one, and lose 10-20x when the cores are shared.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A short CartPole run of the tiny preset: config, metrics, best and last checkpoints, replay chunks.
    Tests that change files copy it first."""
    run = tmp_path_factory.mktemp("tiny") / "run"
    with Trainer.create(
        "CartPole-v1", preset="tiny", run_dir=run, seed=0, train={"steps": 150, "eval_every": 100}
    ) as t:
        t.learn()
    return run
