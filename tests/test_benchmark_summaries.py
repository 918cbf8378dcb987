"""The benchmark scripts' summaries: what a closing note quotes must not hide failed seeds or compare unlike runs."""

import argparse
import importlib.util
import io
import json
import re
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import learning  # benchmarks/learning.py
import numpy as np
import pytest
import suite  # benchmarks/suite.py (benchmarks/ is on pytest's path)
from learning import code_commit, median_to_threshold, resumable_seed, run_seed, seed_config  # benchmarks/learning.py
from learning import main as learning_main
from peers import last_fifth_mean  # benchmarks/peers.py: the window both the agent's and the peers' scores use
from rich.console import Console

from agent import Agent, Trainer
from agent.runs import read_metrics


def test_a_seed_that_never_reached_the_threshold_counts_as_never():
    assert median_to_threshold([3000, 6000, 9000]) == 6000
    assert median_to_threshold([3000, None, 6000]) == 6000  # the median seed reached it
    assert median_to_threshold([None, 6000, None]) is None  # one seed of three: no median, not 6000
    assert median_to_threshold([1000, 5000, None, None]) is None  # the median lies between 5000 and never
    assert median_to_threshold([1000, 5000, 7000, None]) == 6000


def test_the_score_is_the_mean_over_the_last_fifth_of_the_budget_whatever_the_evaluation_spacing():
    every_3k = [{"step": step, "return": float(step)} for step in range(3000, 100_001, 3000)]
    assert last_fifth_mean(every_3k, 100_000) == statistics.mean(range(81_000, 100_000, 3000))  # 7 points from 81k
    every_5k = [{"step": step, "return": float(step)} for step in range(5000, 100_001, 5000)]
    assert last_fifth_mean(every_5k, 100_000) == statistics.mean([85_000, 90_000, 95_000, 100_000])


def test_a_stopped_learning_run_goes_on_from_its_checkpoint_and_only_with_the_command_that_began_it(
    tmp_path, monkeypatch
):
    args = argparse.Namespace(env="CartPole-v1", quantizer="categorical", preset="tiny", steps=400, eval_every=100,
                              threshold=1e9, threads=1, set=["train.prefill=50"], runs=tmp_path)  # fmt: skip
    run_dir = tmp_path / "stopped"
    with Trainer(Agent.from_config(seed_config(args, 3)), run_dir) as trainer:
        trainer.learn(steps=200)  # a session that ended half-way, after its checkpoint
    before = [line["step"] for line in read_metrics(run_dir) if "eval_return_mean" in line]
    assert before and before[-1] == 200

    assert resumable_seed(args, run_dir) == 3
    result = run_seed(args, 3, Console(file=io.StringIO()), run_dir)
    steps = [point["step"] for point in result["curve"]]
    assert steps[: len(before)] == before and steps[-1] == 400 and steps == sorted(set(steps))
    assert (result["resumes"], result["env_steps"], result["seed"]) == (1, 400, 3)
    assert result["seconds"] >= result["curve"][-1]["seconds"] > result["curve"][len(before) - 1]["seconds"]

    # the command line: a finished run goes on to nothing, and its JSON is written again
    out = tmp_path / "again.json"
    command = ["learning.py", "--env", "CartPole-v1", "--preset", "tiny", "--steps", "400", "--eval-every", "100",
               "--set", "train.prefill=50", "--resume", str(run_dir), "--out", str(out)]  # fmt: skip
    monkeypatch.setattr(sys, "argv", command)
    ran = []  # the checkout moves while the run goes on: the JSON names the code the process began with
    monkeypatch.setattr(learning, "run_seed", lambda *a: ran.append(1) or run_seed(*a))
    monkeypatch.setattr(learning, "code_commit", lambda: "moved" if ran else "begun")
    learning_main()
    written = json.loads(out.read_text())
    assert ran and written["commit"] == "begun"
    assert written["args"]["resume"] == [str(run_dir)] and written["args"]["seeds"] == [3]
    assert [point["step"] for point in written["seeds"][0]["curve"]] == steps and written["seeds"][0]["resumes"] == 2

    other = argparse.Namespace(**{**vars(args), "set": ["train.prefill=50", "model.deter=64"]})
    with pytest.raises(SystemExit, match=re.escape("model.deter: 32 there, 64 here")):
        resumable_seed(other, run_dir)
    with pytest.raises(SystemExit, match="not a run folder"):
        resumable_seed(args, tmp_path / "nothing here")
    (run_dir / "checkpoints" / "last.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit, match=re.escape(f"--resume {run_dir}: ")):
        run_seed(args, 3, Console(file=io.StringIO()), run_dir)


def test_a_run_finished_by_later_processes_names_the_commit_it_began_at_and_the_peak_memory_of_all(tmp_path):
    args = argparse.Namespace(env="CartPole-v1", quantizer="categorical", preset="tiny", steps=200, eval_every=100,
                              threshold=1e9, threads=1, set=["train.prefill=50"], runs=tmp_path)  # fmt: skip
    first = run_seed(args, 0, Console(file=io.StringIO()), commit="began")
    assert first["commit_began"] == "began" and first["peak_rss_mib"] > 0
    run_dir = Path(first["run_dir"])
    record = json.loads((run_dir / learning.RECORD).read_text())
    (run_dir / learning.RECORD).write_text(json.dumps({**record, "peak_rss_mib": 1e9}))  # an earlier process's peak
    again = run_seed(args, 0, Console(file=io.StringIO()), run_dir, commit="moved")  # goes on to nothing: finished
    assert again["commit_began"] == "began" and again["peak_rss_mib"] == 1e9
    assert learning.read_record(tmp_path) == {}  # no record: a run this script did not begin


def test_a_learning_figure_names_the_commit_that_produced_it():
    repo = Path(__file__).resolve().parents[1]
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True)
    if head.returncode != 0:
        pytest.skip("not a git checkout")
    commit = code_commit()
    assert commit is not None and commit.split("+")[0] == head.stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo, capture_output=True,
                           text=True).stdout.strip()  # fmt: skip
    assert commit.endswith("+changes") == bool(dirty)


def test_the_commit_of_another_checkout_is_that_checkouts_and_none_outside_git(tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    if shutil.which("git") is None:
        pytest.skip("git is not available")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    subprocess.run([*git, "init", "-q", str(other)], check=True)
    (other / "file.txt").write_text("one")
    subprocess.run([*git, "add", "file.txt"], cwd=other, check=True)
    subprocess.run([*git, "commit", "-qm", "one"], cwd=other, check=True)
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=other, capture_output=True, text=True)
    assert code_commit(other) == head.stdout.strip()
    (other / "file.txt").write_text("two")
    assert code_commit(other) == head.stdout.strip() + "+changes"
    plain = tmp_path / "plain"
    plain.mkdir()
    assert code_commit(plain) is None


def write(folder, name, payload):
    (folder / name).write_text(json.dumps(payload))


def agent_file(seed, steps=100_000, eval_every=5000, repeat=2):
    record = {"seed": seed, "config": {"action_repeat": repeat}, "curve": []}
    return {"args": {"env": "dm_control/walker-walk-v0", "steps": steps, "eval_every": eval_every, "set": []},
            "seeds": [record]}  # fmt: skip


def peer_file(seed, repeat=2):
    return {"algo": "sac", "env": "dm_control/walker-walk-v0", "steps": 100_000, "eval_every": 5000,
            "action_repeat": repeat, "seed": seed, "curve": []}  # fmt: skip


def test_the_suite_refuses_to_compare_runs_of_different_protocols_or_a_seed_twice(tmp_path):
    write(tmp_path, "a0.json", agent_file(0))
    write(tmp_path, "p0.json", peer_file(0))
    assert set(suite.load([tmp_path], "dm_control")["dm_control/walker-walk-v0"]) == {"agent", "SAC"}
    write(tmp_path, "p1.json", peer_file(1, repeat=1))  # SAC without --action-repeat 2
    with pytest.raises(SystemExit, match="different protocols"):
        suite.load([tmp_path], "dm_control")
    (tmp_path / "p1.json").unlink()
    write(tmp_path, "a0-again.json", agent_file(0))
    with pytest.raises(SystemExit, match=r"agent has seed 0 twice \(.*a0-again\.json, .*a0\.json\)"):
        suite.load([tmp_path], "dm_control")


def test_the_suite_takes_this_agents_runs_from_one_folder_and_the_peers_from_another(tmp_path):
    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir(), new.mkdir()
    write(old, "a0.json", agent_file(0))
    write(old, "p0.json", peer_file(0))
    write(new, "a0.json", agent_file(0))
    write(new, "a1.json", agent_file(1))
    runs = suite.load([new], "dm_control", peers=old)["dm_control/walker-walk-v0"]
    assert [r["seed"] for r in runs["agent"]] == [0, 1] and [r["seed"] for r in runs["SAC"]] == [0]
    write(new, "p1.json", peer_file(1))  # a peer's file beside the agent's runs is not read
    assert len(suite.load([new], "dm_control", peers=old)["dm_control/walker-walk-v0"]["SAC"]) == 1
    write(new, "other-a0.json", agent_file(0))  # another setting's run of seed 0, beside them
    with pytest.raises(SystemExit, match="agent has seed 0 twice"):
        suite.load([new], "dm_control", peers=old)
    runs = suite.load([new], "dm_control", peers=old, match="a*.json")["dm_control/walker-walk-v0"]
    assert [r["seed"] for r in runs["agent"]] == [0, 1] and len(runs["SAC"]) == 1  # the peers' files: all


def test_the_suite_joins_this_agents_runs_from_several_folders_and_names_the_files_of_a_seed_held_twice(tmp_path):
    one, two, peers = tmp_path / "one", tmp_path / "two", tmp_path / "peers"
    for folder in (one, two, peers):
        folder.mkdir()
    write(one, "a1.json", agent_file(1))
    write(two, "a0.json", agent_file(0))
    write(peers, "p0.json", peer_file(0))
    runs = suite.load([one, two], "dm_control", peers=peers)["dm_control/walker-walk-v0"]
    assert [r["seed"] for r in runs["agent"]] == [0, 1] and len(runs["SAC"]) == 1  # in seed order
    write(two, "a1.json", agent_file(1))
    with pytest.raises(SystemExit, match=re.escape(f"agent has seed 1 twice ({one / 'a1.json'}, {two / 'a1.json'})")):
        suite.load([one, two], "dm_control", peers=peers)


@pytest.mark.skipif(importlib.util.find_spec("minatar") is None, reason="needs minatar")
def test_the_breakout_probe_plays_the_game_that_evaluation_plays():
    from breakout_probe import probe_episode  # benchmarks/breakout_probe.py

    from agent import Agent
    from agent.evaluate import evaluate

    agent = Agent.create("MinAtar/Breakout-v1", preset="tiny", seed=3)
    record = probe_episode(agent, seed=11)
    played = evaluate(agent, episodes=1, seed=11)
    assert record["return"] == played["returns"][0] and record["length"] == played["lengths"][0]
    assert len(record["paddle_columns"]) == record["length"] and set(record["paddle_columns"]) <= set(range(10))
    assert (record["lost"] is not None) == played["terminated"][0]  # a lost ball ends Breakout


def test_the_model_probe_counts_caught_rewards_and_terminations():
    from model_probe import channel_recall, summarize  # benchmarks/model_probe.py

    reward = np.array([0.0, 1.0, 0.0, 1.0, -1.0, 0.0])
    terminal = np.array([0, 0, 0, 0, 0, 1])
    # caught: +1 predicted 0.9 (yes), +1 predicted 0.4 (under half), -1 predicted -0.6 (yes)
    predicted = np.array([0.1, 0.9, 0.0, 0.4, -0.6, 0.1])
    cont = np.array([1.0, 0.9, 0.3, 1.0, 1.0, 0.2])
    summary = summarize(reward, terminal, predicted, cont)
    assert summary["reward_steps"] == 3 and summary["terminal_steps"] == 1
    assert summary["reward_steps_caught"] == pytest.approx(2 / 3)
    assert summary["mean_abs_error_at_reward_steps"] == pytest.approx((0.1 + 0.6 + 0.4) / 3)
    assert summary["mean_abs_prediction_elsewhere"] == pytest.approx((0.1 + 0.0 + 0.1) / 3)
    assert summary["terminal_steps_caught"] == 1.0 and summary["false_terminals"] == pytest.approx(1 / 5)
    real = np.zeros((2, 2, 2, 2), np.uint8)
    real[0, 0, 0, 0] = real[1, 0, 1, 1] = 255
    decoded = np.zeros_like(real)
    decoded[0, 0, 0, 0] = 200  # one of the two lit cells of channel 0 shown
    decoded[1, 1, 0, 0] = 255  # a dark cell of channel 1 lit
    channels = channel_recall(real, decoded)
    assert channels[0] == {"lit_share": 2 / 8, "recall": 0.5, "false_lit": 0.0}
    assert channels[1] == {"lit_share": 0.0, "recall": 0.0, "false_lit": 1 / 8}


def test_the_model_probe_reads_a_runs_replay_chunks(tmp_path):
    from model_probe import probe_chunks, read_chunks  # benchmarks/model_probe.py

    def probe_run(agent, paths):
        return probe_chunks(read_chunks(agent, [(0, steps, path) for path in paths], seed=0))

    from agent import Agent

    agent = Agent.create("MinAtar/Breakout-v1", preset="tiny", seed=0)
    rng = np.random.default_rng(0)
    steps = 12
    chunk = {
        "obs": (rng.random((1, steps, 4, 10, 10)) < 0.05).astype(np.uint8) * 255,
        "action": np.eye(3, dtype=np.float32)[rng.integers(0, 3, (1, steps))],
        "reward": np.array([[0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0]], np.float32),
        "is_first": np.eye(1, steps, dtype=bool),
        "is_last": np.eye(1, steps, steps - 1, dtype=bool),
        "is_terminal": np.eye(1, steps, steps - 1, dtype=bool),
    }
    path = tmp_path / "000000000000-000000000012.npz"
    np.savez(path, **chunk)
    first = probe_run(agent, [path, path])
    assert first["steps"] == 2 * steps and first["reward_steps"] == 4 and first["terminal_steps"] == 2
    assert len(first["channels"]) == 4 and first["channels"][0]["lit_share"] == pytest.approx(
        (chunk["obs"][0, :, 0] > 0).mean()
    )
    assert probe_run(agent, [path, path]) == first  # codes sampled with a fixed seed
    other = tmp_path / "000000000012-000000000024.npz"
    np.savez(other, **chunk)
    alone = read_chunks(agent, [(0, steps, path)], seed=0)[0]
    after = read_chunks(agent, [(steps, 2 * steps, other), (0, steps, path)], seed=0)[1]
    assert np.array_equal(alone["pred_features"], after["pred_features"])  # a chunk's codes do not depend on others


def test_the_model_probe_refits_heads_that_catch_what_the_frames_determine(tmp_path):
    from model_probe import read_chunks, refit, transitions  # benchmarks/model_probe.py

    from agent import Agent

    agent = Agent.create("MinAtar/Breakout-v1", preset="tiny", seed=0)
    rng = np.random.default_rng(1)
    paths, chunks = [], []
    for i in range(3):
        obs = np.zeros((1, 200, 4, 10, 10), np.uint8)
        obs[:, :, 0, 0, 0] = (rng.random((1, 200)) < 0.3) * 255  # one cell that decides the reward, one that does not
        obs[:, :, 1, 5, 5] = (rng.random((1, 200)) < 0.3) * 255
        first = np.zeros((1, 200), bool)
        first[0, [0, 100]] = True
        no = np.zeros((1, 200), bool)
        reward = (obs[:, :, 0, 0, 0] > 0).astype(np.float32)  # a cell of the frame it arrives with
        taken = rng.integers(0, 3, (1, 200))
        terminal = np.zeros((1, 200), bool)
        terminal[:, 1:] = taken[:, :-1] == 2  # the action taken before the step that ends
        action = np.eye(3, dtype=np.float32)[taken]
        chunks.append({"obs": obs, "action": action, "reward": reward, "is_first": first, "is_last": no,
                       "is_terminal": terminal})  # fmt: skip
        paths.append((i * 200, (i + 1) * 200, tmp_path / f"{i * 200:012d}-{(i + 1) * 200:012d}.npz"))
        np.savez(paths[-1][2], **chunks[-1])
    result = refit(agent, read_chunks(agent, paths, seed=0, decode_from=2), held_out=1, steps=300)
    assert result["train_steps"] == 2 * 198  # steps with a predecessor in their episode, in the two older chunks
    one_step = {key: value[:, :1] for key, value in chunks[0].items()}  # a chunk's steps may all lack a predecessor
    assert len(transitions([{**one_step, "pred_features": np.zeros((1, 1, 8), np.float32)}])["before"]) == 0
    held_out = chunks[-1]["reward"][0, 1:][~chunks[-1]["is_first"][0, 1:]]
    assert result["from_frames"]["reward_steps"] == result["from_features"]["reward_steps"] == int(held_out.sum())
    frames = result["from_frames"]
    assert frames["reward_steps_caught"] > 0.9 and frames["terminal_steps_caught"] > 0.9
    assert frames["false_terminals"] < 0.05


def test_update_speed_gives_each_checkout_only_its_own_overrides(tmp_path, monkeypatch):
    import update_speed  # benchmarks/update_speed.py

    calls = []

    def fake_measure(checkout, setting, args, overrides):
        calls.append((checkout.name, setting, overrides))
        return {"median_ms": 100.0 if checkout.name == "old" else 50.0, "world_model_parameters": len(overrides)}

    monkeypatch.setattr(update_speed, "measure", fake_measure)
    out = tmp_path / "speed.json"
    argv = ["update_speed.py", "--checkouts", str(tmp_path / "old"), str(tmp_path / "new"), "--settings", "cartpole",
            "--rounds", "2", "--set-after", "model.deter=64", "--set-after", "actor_critic.repeats=1",
            "--set-before", "model.cnn_depth=16", "--out", str(out)]  # fmt: skip
    monkeypatch.setattr("sys.argv", argv)
    update_speed.main()
    before = {"model.cnn_depth": "16"}
    after = {"model.deter": "64", "actor_critic.repeats": "1"}
    assert calls == [("old", "cartpole", before), ("new", "cartpole", after)] * 2  # alternating, A then B
    (row,) = json.loads(out.read_text())["results"]
    assert row["speedup"] == 2.0 and row["before_ms"] == 100.0 and row["after_ms"] == 50.0
    assert [r["after_world_model_parameters"] for r in row["rounds"]] == [2, 2]


def test_update_speed_refuses_a_malformed_override(tmp_path, monkeypatch):
    import update_speed

    monkeypatch.setattr(update_speed, "measure", lambda *a: pytest.fail("measured despite a bad override"))
    out = tmp_path / "x.json"
    monkeypatch.setattr("sys.argv", ["update_speed.py", "--set-after", "model.deter", "--out", str(out)])
    with pytest.raises(SystemExit) as exit_info:
        update_speed.main()
    assert str(exit_info.value).startswith("error:") and not out.exists()


@pytest.mark.skipif(importlib.util.find_spec("stable_baselines3") is None, reason="needs stable-baselines3")
def test_the_peer_baselines_leave_no_log_folder_in_the_temporary_directory(tmp_path, monkeypatch):
    import tempfile

    import peers  # benchmarks/peers.py

    temporary = tmp_path / "tmp"
    temporary.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temporary))  # where SB3's default logger makes its folder
    console = Console(file=io.StringIO())
    ppo_args = argparse.Namespace(env="CartPole-v1", eval_every=256, threshold=1e9, ppo_steps=256)
    assert learning.run_ppo(ppo_args, seed=0, console=console)["curve"]  # it trained and evaluated
    dqn_args = argparse.Namespace(algo="dqn", env="CartPole-v1", steps=200, action_repeat=1, eval_every=100,
                                  eval_episodes=2)  # fmt: skip
    assert len(peers.run_seed(dqn_args, seed=0, console=console)["curve"]) == 2
    assert [p.name for p in temporary.iterdir() if p.name.startswith("SB3-")] == []  # torch may cache there


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")  # compile imports
def test_compile_speed_swaps_compiled_parts_in_and_the_eager_methods_back_and_times_only_the_repeats():
    import compile_speed  # benchmarks/compile_speed.py

    from agent.behavior import ActorCritic
    from agent.world_model import WorldModel

    trainer = Trainer.create("CartPole-v1", preset="tiny", seed=0, train={"prefill": 50})
    for _ in range(60):
        trainer.collect()
    wm, ac = trainer.agent.world_model, trainer.agent.actor_critic
    compile_speed.compile_parts(trainer, list(compile_speed.PARTS))  # compiles lazily, on a first call: none here
    assert {"loss"} <= set(vars(wm)) and {"imagine", "loss"} <= set(vars(ac))
    compile_speed.eager_parts(trainer)
    assert (wm.loss.__func__, ac.imagine.__func__, ac.loss.__func__) == (WorldModel.loss, ActorCritic.imagine,
                                                                         ActorCritic.loss)  # fmt: skip
    updates = trainer.counters["updates"]
    times = compile_speed.update_times(trainer, repeats=2, warmup=1)
    assert len(times) == 2 and all(t > 0 for t in times) and trainer.counters["updates"] == updates + 3
