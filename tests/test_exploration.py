"""With rewards that say nothing, the default policy keeps exploring: its entropy must not collapse
(README: Exploration). MountainCar's dynamics with -1 on every step and no termination, registered by
benchmarks/entropy.py (on pytest's path), which measures the same for longer. Discrete actions only:
with continuous actions the policy's std still collapses after ~7k env steps (README: Exploration)."""

import math

import pytest

from agent import Trainer

STEPS = 3000


@pytest.mark.slow
def test_with_constant_rewards_a_discrete_policy_keeps_90_percent_of_its_maximum_entropy():
    trainer = Trainer.create("entropy:ConstantReward-discrete-v0", seed=0, train={"steps": STEPS, "eval_every": 0,
                                                                                  "log_every": 500})  # fmt: skip
    entropy = []
    with trainer:
        trainer.learn(on_log=lambda line: entropy.append(line["actor/entropy"]) if "actor/entropy" in line else None)
    assert len(entropy) >= 5, entropy  # logged from the first updates on (after 1,000 random steps)
    most = math.log(3)  # the uniform policy over 3 actions
    assert min(entropy) >= 0.9 * most, [round(e / most, 3) for e in entropy]
