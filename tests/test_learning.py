"""A short learning smoke test: the default agent clearly beats a random policy on CartPole."""

import pytest

from agent import Trainer


@pytest.mark.slow
def test_cartpole_improves_far_beyond_random_within_3000_steps():
    # A random policy averages ~22 on CartPole-v1 (an untrained deterministic one ~9).
    trainer = Trainer.create("CartPole-v1", seed=0, train={"steps": 3000, "eval_every": 1000})
    evals = []
    trainer.learn(on_log=lambda line: evals.append(line["eval_return_mean"]) if "eval_return_mean" in line else None)
    assert len(evals) == 3
    assert max(evals) >= 100, evals
