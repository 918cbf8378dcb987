"""The trainer: statistics committed only after a good update, update isolation, run folders that never
get stuck or shared, Ctrl-C, threads."""

import json
import signal

import numpy as np
import pytest
import torch

from agent import Agent, Trainer, TrainingInterrupted
from agent.config import ConfigError, make_config
from agent.runs import RunFolderError, safe_name


def ready(env_id="CartPole-v1", steps=200, **config):
    """A tiny trainer with enough random steps in replay for updates."""
    trainer = Trainer.create(env_id, preset="tiny", **config)
    for _ in range(steps):
        trainer.collect()
    return trainer


def test_a_nonfinite_batch_changes_no_statistic_and_training_goes_on(monkeypatch):
    trainer = ready()
    for _ in range(3):
        assert trainer.update() is not None
    norm = trainer.agent.actor_critic.return_norm
    before = (norm.low.clone(), norm.high.clone())
    real_loss = trainer.agent.actor_critic.loss
    calls = {"n": 0}

    def poisoned(world_model, feats, actions, start_cont):  # one imagined batch is NaN
        calls["n"] += 1
        return real_loss(world_model, feats * float("nan") if calls["n"] == 1 else feats, actions, start_cont)

    monkeypatch.setattr(trainer.agent.actor_critic, "loss", poisoned)
    with pytest.warns(RuntimeWarning, match="skipped an update"):
        assert trainer.update() is None
    assert torch.equal(norm.low, before[0]) and torch.equal(norm.high, before[1])
    updates = trainer.counters["updates"]
    for _ in range(3):
        assert trainer.update() is not None
    assert trainer.counters["updates"] == updates + 3 and trainer.nonfinite["in_a_row"] == 0
    assert torch.isfinite(norm.scale(torch.stack([norm.low, norm.high])))


def test_vq_statistics_change_once_per_gradient_step_from_all_its_assignments(monkeypatch):
    trainer = ready(quantizer="vq", quantizer_options={"ema": True})
    wm = trainer.agent.world_model
    q = wm.quantizer
    captured = {}
    real_loss = wm.loss

    def loss(batch, generator=None):
        total, terms, post = real_loss(batch, generator)
        captured["index"], captured["usage"] = post.index, q.usage.clone()  # after the forward pass
        return total, terms, post

    monkeypatch.setattr(wm, "loss", loss)
    before = q.usage.clone()
    trainer.update()
    assert torch.equal(captured["usage"], before)  # the T steps of the forward pass changed nothing
    counts = torch.bincount(captured["index"].reshape(-1), minlength=q.alphabet[0]).float()
    want = before.lerp(counts / counts.sum(), 1 - q.decay)  # one EMA step over B x T x G assignments
    dead = want < q.dead_threshold
    assert torch.allclose(q.usage[~dead], want[~dead])
    # a world-model update that is not finite leaves the codebook statistics alone
    usage, codebook = q.usage.clone(), q.codebook.clone()
    monkeypatch.setattr(wm, "loss", lambda batch, generator=None: (lambda t: (t[0] * float("nan"), *t[1:]))(
        real_loss(batch, generator)))  # fmt: skip
    with pytest.warns(RuntimeWarning):
        trainer.update()
    assert torch.equal(q.usage, usage) and torch.equal(q.codebook, codebook)


def test_each_loss_moves_only_its_own_network(monkeypatch):
    trainer = ready("Pendulum-v1")  # the actor's gradient flows through the critic's values here
    agent = trainer.agent
    ac, wm = agent.actor_critic, agent.world_model
    expected, stepped = {}, {}
    real_loss = ac.loss

    def loss(*args):
        actor_loss, critic_loss, metrics, stats = real_loss(*args)
        expected["actor"] = torch.autograd.grad(actor_loss, list(ac.actor.parameters()), retain_graph=True)
        expected["critic"] = torch.autograd.grad(critic_loss, list(ac.critic.parameters()), retain_graph=True)
        expected["world_model"] = [p.detach().clone() for p in wm.parameters()]  # after its own step
        return actor_loss, critic_loss, metrics, stats

    monkeypatch.setattr(ac, "loss", loss)
    for name, params in (("actor", ac.actor.parameters()), ("critic", ac.critic.parameters())):
        optimizer = trainer.optimizers[name]
        params = list(params)
        monkeypatch.setattr(optimizer, "step", lambda params=params, name=name: stepped.update(
            {name: [p.grad.clone() for p in params]}))  # fmt: skip
    assert trainer.update() is not None
    for name in ("actor", "critic"):
        for got, want in zip(stepped[name], expected[name], strict=True):
            assert torch.allclose(got, want, atol=1e-6), name
    assert all(torch.equal(a, b) for a, b in zip(expected["world_model"], wm.parameters(), strict=True))


def test_a_folder_holding_a_run_is_refused_from_python_and_an_open_one_is_locked(tmp_path):
    run = tmp_path / "run"
    with Trainer.create("CartPole-v1", preset="tiny", run_dir=run, train={"steps": 120}) as trainer:
        trainer.learn()
        with pytest.raises(RunFolderError, match="in use"):
            Trainer.resume(run)
    lines = (run / "metrics.jsonl").read_text()
    with pytest.raises(RunFolderError, match="already holds a run"):
        Trainer.create("CartPole-v1", preset="tiny", run_dir=run)
    assert (run / "metrics.jsonl").read_text() == lines  # untouched
    with Trainer.resume(run) as again:  # closed: it can be opened again
        assert again.counters["env_steps"] == 120


def test_a_run_stopped_before_its_first_checkpoint_starts_again_from_its_config(tmp_path):
    run = tmp_path / "run"
    trainer = Trainer.create("CartPole-v1", preset="tiny", run_dir=run, seed=4, train={"steps": 200})
    for _ in range(60):
        trainer.collect()
    trainer.replay.flush()  # a replay chunk and no checkpoint, as a kill would leave them
    trainer.close()
    assert not (run / "checkpoints").exists() and list((run / "replay").glob("*.npz"))
    with Trainer.resume(run, {"train.steps": 150}) as restarted:
        assert restarted.restarted and restarted.counters["env_steps"] == 0
        assert restarted.agent.config.seed == 4 and restarted.agent.config.train.steps == 150
        assert not list((run / "replay").glob("*.npz"))
        restarted.learn()
    assert Agent.load(run, which="last").trained_env_steps == 150


@pytest.fixture
def interactive():
    """SIGINT handled as in an interactive Python (a background job, such as a CI's, may ignore it)."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


def test_ctrl_c_writes_a_checkpoint_and_stops_with_the_step(tmp_path, interactive):
    run = tmp_path / "run"
    trainer = Trainer.create("CartPole-v1", preset="tiny", run_dir=run, train={"steps": 400, "log_every": 50})

    def press_ctrl_c(line):
        if line["step"] == 150:
            signal.raise_signal(signal.SIGINT)

    with pytest.raises(TrainingInterrupted) as stop:
        trainer.learn(on_log=press_ctrl_c)
    assert stop.value.step == trainer.counters["env_steps"] >= 150 and stop.value.run_dir == run
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is put back
    trainer.close()
    assert Agent.load(run, which="last").trained_env_steps == stop.value.step
    with Trainer.resume(run) as resumed:
        resumed.learn()
        assert resumed.counters["env_steps"] == 400


def test_steps_at_or_below_the_random_prefill_are_refused():
    with pytest.raises(ConfigError, match=r"train.steps \(500\) must be above train.prefill \(1,000\)"):
        make_config("default", {"train.steps": 500})


def test_integral_floats_are_accepted_for_integer_keys():
    assert make_config("default", {"train.steps": "1e4"}).train.steps == 10_000
    with pytest.raises(ConfigError, match=r"train\.steps: expected int"):
        make_config("default", {"train.steps": "1.5e3x"})


def test_folder_names_are_safe():
    assert safe_name("ALE/Pong-v5") == "ALE_Pong-v5"
    assert safe_name("my_module:Env-v0") == "my_module_Env-v0"


def test_the_trainer_sets_the_configured_thread_count():
    try:
        Trainer.create("CartPole-v1", preset="tiny", threads=2)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)


def test_metrics_record_the_recent_rate_policy_entropy_and_return_scale():
    trainer = Trainer.create("CartPole-v1", preset="tiny", train={"steps": 200, "log_every": 50, "eval_every": 0})
    lines = []
    trainer.learn(on_log=lines.append)
    assert all(np.isfinite(line["time/sps"]) for line in lines)
    trained = [line for line in lines if "loss/actor" in line]
    assert trained and all({"actor/entropy", "actor/return_scale"} <= set(line) for line in trained)
    assert json.dumps(lines)  # every value is JSON


def test_a_background_job_that_ignores_ctrl_c_keeps_ignoring_it(tmp_path):
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        trainer = Trainer.create("CartPole-v1", preset="tiny", train={"steps": 150, "log_every": 50})
        trainer.learn(on_log=lambda line: signal.raise_signal(signal.SIGINT))  # ignored: training goes on
        assert trainer.counters["env_steps"] == 150
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)
