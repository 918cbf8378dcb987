"""The trainer: statistics committed only after a good update, update isolation, run folders that never
get stuck or shared, Ctrl-C, threads."""

import json
import math
import signal

import numpy as np
import pytest
import torch

from agent import Agent, Trainer, TrainingInterrupted
from agent.behavior import EntropyCoefficient
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


def test_the_adapted_entropy_coefficient_moves_with_good_updates_only_and_is_saved(monkeypatch, tmp_path):
    trainer = ready(actor_critic={"entropy": 0.01, "entropy_target": 0.5, "repeats": 2})
    coef = trainer.agent.actor_critic.entropy_coef
    assert trainer.update() is not None  # two actor steps of a near-uniform policy: the bonus fell twice
    assert coef.value.item() == pytest.approx(0.01 * math.exp(-2 * EntropyCoefficient.RATE * 0.5), rel=1e-4)
    before = coef.value.clone()
    real_loss = trainer.agent.actor_critic.loss
    monkeypatch.setattr(trainer.agent.actor_critic, "loss", lambda world_model, feats, actions, start_cont: real_loss(
        world_model, feats * float("nan"), actions, start_cont))  # fmt: skip
    with pytest.warns(RuntimeWarning, match="skipped an update"):
        assert trainer.update() is None
    assert torch.equal(coef.value, before)
    loaded = Agent.load(trainer.agent.save(tmp_path / "saved").parent)
    assert torch.equal(loaded.actor_critic.entropy_coef.value, before)


def adam_steps(optimizer: torch.optim.Optimizer) -> int:
    return int(next(iter(optimizer.state.values()))["step"])


def test_repeated_actor_critic_steps_each_apply_once_and_a_nonfinite_one_is_dropped_alone(monkeypatch):
    trainer = ready(actor_critic={"repeats": 3})
    for _ in range(2):
        assert trainer.update() is not None
    optimizers = trainer.optimizers
    assert adam_steps(optimizers["wm"]) == 2
    assert adam_steps(optimizers["actor"]) == adam_steps(optimizers["critic"]) == 6
    norm = trainer.agent.actor_critic.return_norm
    real_loss = trainer.agent.actor_critic.loss
    calls = {"n": 0}

    def poisoned(world_model, feats, actions, start_cont):  # the second actor-critic step of the update is NaN
        calls["n"] += 1
        return real_loss(world_model, feats * float("nan") if calls["n"] == 2 else feats, actions, start_cont)

    monkeypatch.setattr(trainer.agent.actor_critic, "loss", poisoned)
    assert trainer.update() is not None  # the update itself was good: kept, and its third step not taken
    assert adam_steps(optimizers["wm"]) == 3 and adam_steps(optimizers["actor"]) == 7
    assert trainer.nonfinite == {"total": 1, "in_a_row": 0} and trainer.counters["updates"] == 3
    assert torch.isfinite(norm.low).all() and torch.isfinite(norm.high).all()
    assert all(torch.isfinite(p).all() for p in trainer.agent.actor_critic.parameters())


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
    trainer = ready("Pendulum-v1")  # the actor's gradient flows through the critic and the world model here
    agent = trainer.agent
    ac, wm = agent.actor_critic, agent.world_model
    networks = {"wm": list(wm.parameters()), "actor": list(ac.actor.parameters()),
                "critic": list(ac.critic.parameters())}  # fmt: skip
    expected, stepped = {}, {}
    real_wm_loss, real_ac_loss = wm.loss, ac.loss

    def grads_of(loss, params):
        used = [p for p in params if p.requires_grad]
        return dict(zip(map(id, used), torch.autograd.grad(loss, used, retain_graph=True, allow_unused=True),
                        strict=True))  # fmt: skip

    def wm_loss(*args):
        total, terms, post = real_wm_loss(*args)
        expected["wm"] = grads_of(total, networks["wm"])
        return total, terms, post

    def ac_loss(*args):
        actor_loss, critic_loss, metrics, stats = real_ac_loss(*args)
        expected["actor"] = grads_of(actor_loss, networks["actor"])
        expected["critic"] = grads_of(critic_loss, networks["critic"])
        return actor_loss, critic_loss, metrics, stats

    real_replay_loss, replay_weight = ac.replay_value_loss, agent.config.actor_critic.replay_value
    assert replay_weight > 0

    def replay_value_loss(*args):  # the critic's second loss, on the replayed sequences
        loss = real_replay_loss(*args)
        expected["critic_replay"] = grads_of(replay_weight * loss, networks["critic"])
        return loss

    monkeypatch.setattr(wm, "loss", wm_loss)
    monkeypatch.setattr(ac, "loss", ac_loss)
    monkeypatch.setattr(ac, "replay_value_loss", replay_value_loss)
    for name, params in networks.items():
        monkeypatch.setattr(trainer.optimizers[name], "step", lambda params=params, name=name: stepped.update(
            {name: {id(p): p.grad for p in params if p.grad is not None}}))  # fmt: skip
    assert trainer.update() is not None
    expected["critic"] = {k: v + expected["critic_replay"][k] for k, v in expected["critic"].items()}
    for name in networks:  # what each optimiser applied is the gradient of its own losses alone
        want = {k: v for k, v in expected[name].items() if v is not None}
        assert set(stepped[name]) == set(want), name
        for key, grad in want.items():
            assert torch.allclose(stepped[name][key], grad, atol=1e-6), name


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
    assert stop.value.step == trainer.counters["env_steps"] >= 150
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is put back
    trainer.close()
    assert Agent.load(run, which="last").trained_env_steps == stop.value.step
    with Trainer.resume(run) as resumed:
        resumed.learn()
        assert resumed.counters["env_steps"] == 400


def test_a_second_ctrl_c_aborts_at_once_without_a_checkpoint(tmp_path, interactive):
    run = tmp_path / "run"
    train = {"steps": 400, "log_every": 50, "checkpoint_every": 100}
    trainer = Trainer.create("CartPole-v1", preset="tiny", run_dir=run, train=train)

    def press_ctrl_c_twice(line):
        if line["step"] == 150:
            signal.raise_signal(signal.SIGINT)  # asks for a stop at the next safe point ...
            signal.raise_signal(signal.SIGINT)  # ... and this one aborts right here

    with pytest.raises(KeyboardInterrupt) as abort:
        trainer.learn(on_log=press_ctrl_c_twice)
    assert type(abort.value) is KeyboardInterrupt  # not TrainingInterrupted: no stop at a safe point
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    trainer.close()
    assert Agent.load(run, which="last").trained_env_steps == 100  # the last scheduled one; none at the abort


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


def test_metrics_record_the_recent_rate_update_time_policy_entropy_and_return_scale():
    trainer = Trainer.create("CartPole-v1", preset="tiny", train={"steps": 200, "log_every": 50, "eval_every": 0})
    lines = []
    trainer.learn(on_log=lines.append)
    assert all(np.isfinite(line["time/sps"]) for line in lines)
    trained = [line for line in lines if "loss/actor" in line]
    assert trained and all({"actor/entropy", "actor/return_scale"} <= set(line) for line in trained)
    assert all(line["time/update_ms"] > 0 for line in trained)  # each update's own time, averaged over the line
    assert all("time/update_ms" not in line for line in lines if "loss/actor" not in line)  # none made yet
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


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_gpu_run_resumes_on_a_cpu_only_machine_with_device_cpu(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    run = tmp_path / "run"
    with Trainer.create("CartPole-v1", preset="tiny", run_dir=run, train={"steps": 150}) as trainer:
        trainer.learn(120)
    last = run / "checkpoints" / "last.safetensors"
    with safe_open(str(last), "pt") as f:  # as if the run had trained on a GPU
        tensors, meta = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()  # noqa: SIM118
    config, training = json.loads(meta["config"]), json.loads(meta["training"])
    config["device"], training["device"] = "cuda", "cuda"
    save_file(tensors, str(last), {**meta, "config": json.dumps(config), "training": json.dumps(training)})
    with pytest.raises(ConfigError, match="no CUDA device is available here"):
        Trainer.resume(run)
    with Trainer.resume(run, device="cpu") as moved:
        assert moved.agent.device.type == "cpu" and moved.counters["env_steps"] == 120
        moved.learn()
        assert moved.counters["env_steps"] == 150


def test_with_action_repeat_env_steps_count_the_envs_own_steps_and_updates_follow_agent_steps():
    trainer = Trainer.create("custom_envs:FiveStepEpisodes-v0", preset="tiny", action_repeat=2,
                             train={"steps": 200, "eval_every": 0, "envs": 2})  # fmt: skip
    trainer.learn()
    # an episode is 3 agent steps (2 + 2 + 1 env steps): 5 env steps each, not 6
    assert trainer.counters["env_steps"] == 200 and trainer.counters["episodes"] == 40
    # stored steps of both envs together: 20 episodes of 3 agent steps, and a reset step after all but the last
    assert trainer.replay.total == 20 * 3 + 19
    assert trainer.counters["updates"] == (200 // 2) * 8 // 32  # train ratio 8 per stored step, 32 a batch
