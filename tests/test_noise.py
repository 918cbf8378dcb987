"""Colored action noise: unit variance, the asked spectrum, one sequence per episode, and its use in
collection: added to continuous actions, Gumbel-max samples of discrete ones."""

import numpy as np
import pytest
import torch

from agent import Trainer
from agent.config import ConfigError, make_config
from agent.nets import OneHotPolicy, gumbel_from_normal
from agent.noise import ActionNoise, colored_noise


@pytest.mark.parametrize("steps", [7, 8, 1000])
@pytest.mark.parametrize("beta", [0.0, 1.0, 2.0])
def test_every_value_has_unit_variance_and_zero_mean(beta, steps):
    x = colored_noise(beta, 20_000, steps, np.random.default_rng(0))
    assert x.shape == (20_000, steps)
    variance = x.var(axis=0)  # across sequences, at every position
    assert abs(variance.mean() - 1) < 0.03 and variance.min() > 0.9 and variance.max() < 1.1
    assert abs(x.mean()) < 0.05


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0, 2.0])
def test_the_power_spectrum_falls_as_one_over_f_to_the_beta(beta):
    steps = 512
    x = colored_noise(beta, 4000, steps, np.random.default_rng(1))
    power = (np.abs(np.fft.rfft(x, axis=-1)) ** 2).mean(0)[1:-1]  # without the constant and Nyquist terms
    freqs = np.fft.rfftfreq(steps)[1:-1]
    slope = np.polyfit(np.log(freqs), np.log(power), 1)[0]
    assert slope == pytest.approx(-beta, abs=0.05)


def test_white_noise_is_uncorrelated_and_pink_noise_keeps_its_sign_longer():
    rng = np.random.default_rng(2)
    white, pink = colored_noise(0.0, 4000, 7, rng), colored_noise(1.0, 4000, 1000, rng)
    assert abs(np.mean(white[:, 1:] * white[:, :-1])) < 0.03  # exactly white, even for a short sequence
    assert np.mean(pink[:, 1:] * pink[:, :-1]) > 0.6


def test_each_episode_reads_its_own_sequence_from_the_start_and_a_long_one_draws_again():
    noise = ActionNoise(1.0, envs=2, action_dim=3, steps=4, rng=np.random.default_rng(0))
    first = noise.next(np.array([True, True]))
    sequences = noise.sequences.copy()
    assert first.shape == (2, 3) and first.dtype == np.float32
    assert np.allclose(first, sequences[:, :, 0])
    second = noise.next(np.array([False, True]))  # env 1 starts a new episode
    assert np.allclose(second[0], sequences[0, :, 1])
    assert not np.allclose(noise.sequences[1], sequences[1]) and np.allclose(second[1], noise.sequences[1, :, 0])
    for _ in range(2):
        noise.next(np.array([False, False]))
    fifth = noise.next(np.array([False, False]))  # env 0 has used its 4 steps: a new sequence
    assert np.allclose(fifth[1], noise.sequences[1, :, 3]) and np.allclose(fifth[0], noise.sequences[0, :, 0])
    assert not np.allclose(noise.sequences[0], sequences[0]) and noise.position.tolist() == [1, 4]


def test_collection_pushes_continuous_actions_with_the_colored_noise():
    def lag_one_correlation(noise_color):
        trainer = Trainer.create("Pendulum-v1", preset="tiny", seed=0, train={"noise_color": noise_color})
        try:
            for _ in range(200):  # a whole Pendulum episode of prefill
                trainer.collect()
            actions = trainer.replay.data["action"][0, 1:200, 0]
        finally:
            trainer.close()
        assert np.abs(actions).max() <= 1
        return np.corrcoef(actions[1:], actions[:-1])[0, 1]

    assert lag_one_correlation(2.0) > 0.9 and abs(lag_one_correlation(0.0)) < 0.2


def test_a_noise_sample_of_a_discrete_policy_has_the_policy_distribution_and_follows_the_noise():
    probs = torch.tensor([0.6, 0.25, 0.1, 0.05])
    policy = OneHotPolicy(probs.log().expand(200_000, 4), unimix=0.0)
    white = torch.randn(200_000, 4, generator=torch.Generator().manual_seed(0))
    actions = policy.sample(noise=white)
    assert actions.shape == (200_000, 4) and torch.all(actions.sum(-1) == 1)
    assert torch.allclose(actions.mean(0), probs, atol=0.004)  # Gumbel-max: each step samples the policy
    # the action is a function of the noise: larger noise on an action wins it, whatever the policy
    assert torch.equal(policy.sample(noise=white), actions)
    loud = torch.zeros(200_000, 4)
    loud[:, 3] = 10.0  # the least likely action
    assert torch.all(policy.sample(noise=loud).argmax(-1) == 3)
    # near-equal extreme noise still ranks (a float32 Phi would round both to 1 and give +inf to both)
    assert torch.all(policy.sample(noise=torch.tensor([[10.0, 10.0, 10.0, 10.5]])).argmax(-1) == 3)
    # colored noise along 1,000 episodes of 200 steps: same marginal distribution, far longer runs of one action
    sequences = colored_noise(1.0, 1000 * 4, 200, np.random.default_rng(0)).reshape(1000, 4, 200)
    pink = torch.as_tensor(sequences.transpose(0, 2, 1).reshape(200_000, 4), dtype=torch.float32)
    pink_actions = policy.sample(noise=pink).argmax(-1).reshape(1000, 200)
    assert torch.allclose(torch.bincount(pink_actions.flatten(), minlength=4) / 200_000.0, probs, atol=0.01)
    white_actions = actions.argmax(-1).reshape(1000, 200)
    repeats = [(a[:, 1:] == a[:, :-1]).float().mean().item() for a in (white_actions, pink_actions)]
    assert abs(repeats[0] - (probs**2).sum()) < 0.01 and repeats[1] > 0.6  # white: independent draws


def test_the_gumbel_values_are_exact_and_finite_at_any_normal_value():
    z = torch.tensor([-38.0, -10.0, -1.0, 0.0, 0.5, 3.0, 10.0, 30.0])
    gumbel = gumbel_from_normal(z)
    assert gumbel.dtype == torch.float32 and torch.all(torch.isfinite(gumbel))
    assert torch.all(gumbel[1:] > gumbel[:-1])  # the same ranks
    u = 0.5 * (1 + torch.erf(z[2:6].double() / 2**0.5))  # Phi, exact enough away from the tails
    assert torch.allclose(gumbel[2:6].double(), -torch.log(-torch.log(u)), atol=1e-6)


@pytest.mark.parametrize("color", [None, 0.0, 1.0])
def test_discrete_collection_uses_the_noise_only_when_colored(color):
    train = {"prefill": 400} if color is None else {"prefill": 400, "discrete_noise_color": color}
    trainer = Trainer.create("CartPole-v1", preset="tiny", seed=0, train=train)
    try:
        for _ in range(400):  # prefill: random actions, uniform at each step
            trainer.collect()
        actions = trainer.replay.data["action"][0, :400].argmax(-1)
    finally:
        trainer.close()
    colored = bool(color)  # off by default: the categorical sampled as before, no noise drawn
    assert (trainer.action_noise is None) != colored
    assert (trainer.agent.config.train.discrete_noise_color > 0) == colored
    repeats = (actions[1:] == actions[:-1]).mean()
    if colored:
        assert repeats > 0.65
    else:
        assert 0.4 < actions.mean() < 0.6 and 0.4 < repeats < 0.6


def test_the_policy_adds_the_given_noise_to_its_mean_and_clips():
    trainer = Trainer.create("Pendulum-v1", preset="tiny", seed=0)
    try:
        agent, obs = trainer.agent, trainer.obs
        state = agent.initial_state(1)
        first = np.ones(1, bool)
        mode, _ = agent.policy_step(obs, state, first, deterministic=True)
        quiet, _ = agent.policy_step(obs, state, first, False, np.zeros((1, 1), np.float32))
        loud, _ = agent.policy_step(obs, state, first, False, np.full((1, 1), 100.0, np.float32))
        std = agent.actor_critic.policy(agent.world_model.initial(1)[0].features()).std
    finally:
        trainer.close()
    assert np.allclose(quiet, mode) and np.allclose(loud, 1.0)
    assert torch.all(std > 0.5)  # the untrained policy's std: the noise is not scaled away


def test_a_discrete_policy_step_takes_its_action_from_the_given_noise():
    trainer = Trainer.create("CartPole-v1", preset="tiny", seed=0, train={"discrete_noise_color": 1.0})
    try:
        agent, obs, first = trainer.agent, trainer.obs, np.ones(1, bool)
        picks = []
        for action in [0, 1] * 5:  # a sampler that ignored the noise would match all 10 with probability 2**-10
            noise = np.zeros((1, 2), np.float32)
            noise[0, action] = 8.0
            picks.append(agent.policy_step(obs, agent.initial_state(1), first, False, noise)[0].argmax(-1)[0])
    finally:
        trainer.close()
    assert picks == [0, 1] * 5


@pytest.mark.parametrize("key", ["noise_color", "discrete_noise_color"])
def test_noise_color_outside_zero_to_two_is_refused(key):
    with pytest.raises(ConfigError, match=rf"train.{key} must be in \[0, 2\]"):
        make_config(overrides={f"train.{key}": 3})
