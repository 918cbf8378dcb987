"""The public API: create, learn, act, evaluate, save, load; and what training writes."""

import json

import numpy as np
import pytest
import torch

import envs
from agent import Agent, Trainer, evaluate
from agent.checkpoint import CheckpointError


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    with Trainer.create(
        "CartPole-v1", preset="tiny", run_dir=run, seed=1, train={"steps": 300, "eval_every": 150}
    ) as t:
        t.learn()
    return t, run


def test_a_run_folder_holds_config_metrics_and_best_and_last_checkpoints(trained):
    trainer, run = trained
    assert json.loads((run / "config.json").read_text())["seed"] == 1
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all("step" in line for line in lines)
    steps = [line["step"] for line in lines]
    assert steps == sorted(steps) and steps[-1] == 300
    evals = [line for line in lines if "eval_return_mean" in line]
    assert [e["step"] for e in evals] == [150, 300]
    assert any("loss/world_model" in line for line in lines)
    assert (run / "checkpoints" / "best.safetensors").is_file() and (run / "checkpoints" / "last.safetensors").is_file()
    assert trainer.counters["env_steps"] == 300 and trainer.counters["updates"] == 300 * 8 // 32


def test_save_and_load_give_identical_actions(trained, tmp_path):
    agent = trained[0].agent
    path = agent.save(tmp_path / "mine")
    loaded = Agent.load(tmp_path / "mine")
    assert path == tmp_path / "mine" / "agent.safetensors" and loaded.config == agent.config
    obs = np.random.default_rng(0).normal(size=(20, 4)).astype(np.float32)
    a1, s1 = agent.act(obs)
    a2, s2 = loaded.act(obs)
    for _ in range(5):  # the recurrent state carries over identically too
        assert np.array_equal(a1, a2)
        a1, s1 = agent.act(obs, s1)
        a2, s2 = loaded.act(obs, s2)


def test_loading_an_agent_leaves_the_callers_global_rng_alone(trained):
    _, run = trained
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    Agent.load(run)
    Agent.create("CartPole-v1", preset="tiny", seed=5)
    assert torch.equal(torch.rand(3), expected)


def test_act_takes_one_observation_or_a_batch(trained):
    agent = trained[0].agent
    obs = np.zeros(4, np.float32)
    action, _ = agent.act(obs)
    assert np.ndim(action) == 0 and action in (0, 1)
    batch_action, _ = agent.act(np.stack([obs, obs]), episode_start=np.array([True, False]))
    assert batch_action.shape == (2,)
    with pytest.raises(ValueError, match="does not match"):
        agent.act(np.zeros(5, np.float32))


def test_load_picks_best_or_last_and_reports_missing_checkpoints(trained, tmp_path):
    _, run = trained
    best = Agent.load(run)
    assert best.loaded_from.name == "best.safetensors" and best.trained_env_steps in (150, 300)
    last = Agent.load(run, which="last")
    assert last.loaded_from.name == "last.safetensors" and last.trained_env_steps == 300
    with pytest.raises(CheckpointError, match="no checkpoint found"):
        Agent.load(tmp_path)
    with pytest.raises(CheckpointError, match="no such file"):
        Agent.load(tmp_path / "nothing")


def test_sampled_evaluation_draws_actions_from_the_policy_reproducibly_and_leaves_the_agents_generator():
    agent = Agent.create("CartPole-v1", preset="tiny")  # untrained: its actor's output layer is zero, uniform
    generator_state = agent.generator.get_state()
    greedy = evaluate(agent, episodes=4, seed=3)
    sampled = [evaluate(agent, episodes=4, seed=3, sample=True) for _ in range(2)]
    assert max(greedy["action_share"]) == 1.0  # the most likely of two equal actions: always the same one
    assert min(sampled[0]["action_share"]) > 0.3  # both actions, about half the steps each
    assert sampled[0]["returns"] == sampled[1]["returns"] and sampled[0]["sampled"] and not greedy["sampled"]
    assert evaluate(agent, episodes=4, seed=4, sample=True)["returns"] != sampled[0]["returns"]
    assert torch.equal(agent.generator.get_state(), generator_state)


def test_evaluate_reports_returns_and_lengths_and_reuses_its_environments(trained):
    agent = trained[0].agent
    result = evaluate(agent, episodes=3, seed=5)
    assert result["episodes"] == 3 and len(result["returns"]) == 3 and len(result["lengths"]) == 3
    assert result["mean_return"] == pytest.approx(np.mean(result["returns"]))
    assert result["returns"] == result["lengths"]  # CartPole: one reward per step
    from agent.evaluate import evaluation_envs

    env = evaluation_envs(agent, 3)
    again = [evaluate(agent, 3, 5, env) for _ in range(2)]  # the same env, reset with the same seeds
    env.close()
    assert again[0]["returns"] == again[1]["returns"] == result["returns"]
    # the share of each action over every step of the three episodes, as the same episodes played one by one
    counts = np.zeros(2)
    for seed in (5, 6, 7):
        env = envs.make("CartPole-v1")
        obs, _ = env.reset(seed=seed)
        state, done = None, False
        while not done:
            action, state = agent.act(obs, state)
            counts[int(action)] += 1
            obs, _, term, trunc, _ = env.step(int(action))
            done = term or trunc
    assert np.allclose(result["action_share"], counts / counts.sum())


def test_collection_keeps_episode_boundaries_and_counts_real_steps():
    trainer = Trainer.create("CartPole-v1", preset="tiny", train={"envs": 2, "prefill": 10_000, "steps": 20_000})
    for _ in range(200):
        trainer.collect()
    data = {k: v[:, :200] for k, v in trainer.replay.data.items()}
    first, last, reward = data["is_first"], data["is_last"], data["reward"]
    assert first[:, 0].all()
    assert np.array_equal(first[:, 1:], last[:, :-1])  # every episode ends, then the next begins
    assert (reward[first] == 0).all() and (reward[~first] == 1).all()
    assert (data["is_terminal"] <= last).all()
    # after an is_last step the environment only resets: that call is not an env step
    assert trainer.counters["env_steps"] == 2 * 200 - last.sum()
    assert trainer.counters["episodes"] == last.sum()


def test_a_lucky_evaluation_does_not_replace_the_best_without_confirmation(monkeypatch):
    import agent.trainer as trainer_module

    trainer = Trainer.create("CartPole-v1", preset="tiny", train={"eval_episodes": 10, "confirm_episodes": 20})
    # the means that successive calls of evaluate() return: 10 episodes, then 20 more if confirming
    means = iter([200.0, 190.0, 300.0, 50.0, 200.0, 200.0, 150.0])
    monkeypatch.setattr(trainer_module, "evaluate", lambda *args: {"mean_return": next(means), "std_return": 0.0,
                                                                   "mean_length": 1.0})  # fmt: skip
    first, lucky, steady, worse = (trainer.evaluate_and_keep_best() for _ in range(4))
    assert first["eval_new_best"] and first["eval_confirmed_mean"] == pytest.approx(193.333, abs=1e-3)
    assert lucky["eval_return_mean"] == 300.0 and not lucky["eval_new_best"]  # 300 on ten, 50 on twenty more
    assert lucky["eval_confirmed_mean"] == pytest.approx(133.333, abs=1e-3)
    assert lucky["eval_return_best"] == pytest.approx(193.333, abs=1e-3)
    assert steady["eval_new_best"] and steady["eval_return_best"] == 200.0
    assert not worse["eval_new_best"] and "eval_confirmed_mean" not in worse  # below the best: not confirmed


def test_bfloat16_autocast_trains_with_finite_losses():
    trainer = Trainer.create("CartPole-v1", preset="tiny", model={"precision": "bfloat16"}, train={"prefill": 40})
    lines = []
    trainer.learn(120, on_log=lines.append)
    losses = [v for line in lines for k, v in line.items() if k.startswith("loss/")]
    assert losses and all(np.isfinite(losses)) and trainer.counters["updates"] == 120 * 8 // 32


def test_continuous_actions_learn_end_to_end_with_the_dynamics_gradient():
    trainer = Trainer.create("Pendulum-v1", preset="tiny", train={"steps": 160, "prefill": 60, "eval_episodes": 1,
                                                                  "eval_every": 160})  # fmt: skip
    assert not trainer.agent.discrete and trainer.agent.actor_critic.backprop
    lines = []
    trainer.learn(on_log=lines.append)
    assert trainer.counters["updates"] == 160 * 8 // 32
    assert all(np.isfinite(v) for line in lines for k, v in line.items() if k.startswith(("loss/", "actor/")))
    assert -2000 < lines[-1]["eval_return_mean"] <= 0
    action, _ = trainer.agent.act(np.zeros(3, np.float32))
    assert action.shape == (1,) and -1 <= action[0] <= 1


def test_learn_for_more_steps_raises_the_budget_and_continues_the_clock():
    trainer = Trainer.create("CartPole-v1", preset="tiny", train={"steps": 120, "eval_every": 0})
    trainer.learn()
    seconds = trainer.seconds()
    trainer.learn(40)
    assert trainer.counters["env_steps"] == 160 and trainer.agent.config.train.steps == 160
    assert trainer.seconds() >= seconds
