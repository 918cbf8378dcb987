"""Sweeps on Ray, and reading run folders: agent runs, plot, compare; TensorBoard."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agent import Trainer
from agent.config import make_config
from agent.runs import find_runs, read_run
from agent.sweep import STOP_FILE, Grid, open_sweep, train_run
from cli import app

ray = pytest.importorskip("ray", reason='agent sweep needs Ray: pip install -e ".[sweep]"')
runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]
SWEEP = ["sweep", "-q", "categorical,round", "--seeds", "2", "--preset", "tiny", "--steps", "150"]


def metric_steps(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sweep") / "grid"
    result = runner.invoke(app, [*SWEEP, "--dir", str(folder)])
    assert result.exit_code == 0, result.output
    return folder, result.output


def test_a_sweep_makes_a_run_folder_per_cell_and_a_table(swept):
    folder, output = swept
    runs = find_runs([folder])
    assert [run.name for run in runs] == [f"CartPole-v1-{q}-seed{s}" for q in ("categorical", "round") for s in (0, 1)]
    for run in runs:
        info = read_run(run)
        assert info.status == "finished" and info.env_steps == 150 and metric_steps(run)[-1] == 150
        assert info.config["seed"] in (0, 1) and info.config["threads"] == 1
    assert all(run.name in " ".join(output.split()) for run in runs) and "finished" in output
    speedup = r"trained 4 runs in [\d,]+ s \(Ray's start included\); their own times add up to [\d,]+ s \([\d.]+x"
    assert re.search(speedup, " ".join(output.split()))


def test_running_the_same_sweep_again_starts_nothing_and_a_changed_grid_is_refused(swept):
    folder, _ = swept
    before = {run: (run / "metrics.jsonl").stat().st_mtime_ns for run in find_runs([folder])}
    result = runner.invoke(app, [*SWEEP, "--dir", str(folder)])
    assert result.exit_code == 0, result.output
    assert {run: (run / "metrics.jsonl").stat().st_mtime_ns for run in find_runs([folder])} == before
    assert "trained" not in result.output
    result = runner.invoke(app, [*SWEEP[:-1], "300", "--dir", str(folder)])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and "holds a different sweep (it differs in overrides)" in lines[0]


def test_a_continued_sweep_keeps_the_configs_it_began_with_and_names_the_defaults_changed_since(swept, tmp_path):
    folder = tmp_path / "grid"
    shutil.copytree(swept[0], folder)
    record = folder / "sweep.json"
    data = json.loads(record.read_text())
    name = "CartPole-v1-round-seed1"
    assert data["configs"][name]["actor_critic"]["entropy"] == make_config("tiny").actor_critic.entropy
    data["configs"][name]["actor_critic"]["entropy"] = 0.5  # as if an earlier version's default had been 0.5
    data["configs"][name]["actor_critic"].pop("entropy_target")  # and it had not known this key yet
    record.write_text(json.dumps(data))
    grid = Grid.from_options(["CartPole-v1"], "categorical,round", "2", {}, 150, "tiny")
    sweep = open_sweep(folder, grid)
    assert sweep.configs[name]["actor_critic"]["entropy"] == 0.5  # a run not yet begun would train with it
    assert sweep.changed_defaults == ["actor_critic.entropy: 0.5 -> 0.0003"]  # the new key takes its default
    shutil.rmtree(folder / name)  # that run has not begun: the sweep trains it with its recorded config
    result = runner.invoke(app, [*SWEEP, "--dir", str(folder)])
    assert result.exit_code == 0, result.output
    assert "today's defaults differ in: actor_critic.entropy: 0.5 -> 0.0003" in " ".join(result.output.split())
    assert read_run(folder / name).config["actor_critic"]["entropy"] == 0.5 and read_run(folder / name).env_steps == 150
    data["configs"][name]["actor_critic"]["no_such_key"] = 1  # a key a later version removed
    record.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=rf"run {name}'s recorded config no longer loads"):
        open_sweep(folder, grid)
    del data["configs"]  # recorded by a version that kept no configs: today's are taken
    record.write_text(json.dumps(data))
    sweep = open_sweep(folder, grid)
    run = next(run for run in grid.runs() if run.name == name)
    assert sweep.configs[name] == grid.config(run).to_dict() and sweep.changed_defaults == []
    assert json.loads(record.read_text()) == data  # and the record is left as it was


def test_a_grid_with_a_bad_config_or_env_id_writes_nothing(tmp_path):
    grid = Grid(["CartPole-v1"], ["categorical"], [0], {"model.deter": ["16", "x"]}, "tiny", {})
    with pytest.raises(ValueError, match=r"model\.deter: expected int"):
        open_sweep(tmp_path / "grid", grid)
    result = runner.invoke(app, ["sweep", "Cartpole-v1", "--preset", "tiny", "--dir", str(tmp_path / "grid")])
    assert result.exit_code == 2 and "did you mean CartPole-v1" in result.output
    assert not (tmp_path / "grid").exists()
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    result = runner.invoke(app, ["sweep", "--preset", "tiny", "--dir", str(tmp_path / "busy")])
    assert result.exit_code == 2 and "is not empty and holds no sweep" in result.output


def test_grids_from_the_command_line():
    grid = Grid.from_options(["CartPole-v1"], "round,vq", "3", {"train.prefill": "50", "model.deter": "16,32"}, 200)
    assert grid.seeds == [0, 1, 2] and grid.sets == {"model.deter": ["16", "32"]}
    assert grid.overrides == {"train.prefill": "50", "train.steps": "200"}
    names = [run.name for run in grid.runs()]
    first = [f"CartPole-v1-{q}-seed0-model.deter_{d}" for q in ("round", "vq") for d in (16, 32)]
    assert len(names) == 12 and names[:4] == first  # seed-major
    levels = Grid.from_options(["CartPole-v1"], "fsq", "1", {"quantizer_options.levels": "[8,5,5,5],[8,8,8]"})
    assert levels.sets == {"quantizer_options.levels": ["[8,5,5,5]", "[8,8,8]"]}
    a = Grid.from_options(["CartPole-v1"], "round", "1", {"model.deter": "16,32", "model.hidden": "8,16"})
    b = Grid.from_options(["CartPole-v1"], "round", "1", {"model.hidden": "8,16", "model.deter": "16,32"})
    assert a.to_dict() == b.to_dict() and [r.name for r in a.runs()] == [r.name for r in b.runs()]
    with pytest.raises(ValueError, match="--seeds expects"):
        Grid.from_options(["CartPole-v1"], "round", "two", {})
    with pytest.raises(ValueError, match="give it as an argument or option"):
        Grid.from_options(["CartPole-v1"], "round", "1", {"seed": "3"})


def test_more_cpus_per_run_than_any_node_has_is_refused(tmp_path):
    result = runner.invoke(app, ["sweep", "--preset", "tiny", "--dir", str(tmp_path / "grid"), "--cpus-per-run", "64"])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and "--cpus-per-run 64: no Ray node has that many CPUs" in lines[-1]


def test_a_run_sees_the_stop_file_and_ends_with_a_checkpoint(tmp_path):
    run, stop = tmp_path / "run", tmp_path / STOP_FILE
    config = Trainer.create("CartPole-v1", preset="tiny", train={"steps": 3000, "log_every": 50}).agent.config

    def stop_once_training_has_begun():  # a file, as `agent sweep --stop` writes it, once the run is under way
        while not (run / "metrics.jsonl").is_file():
            time.sleep(0.01)
        stop.write_text("")

    stopper = threading.Thread(target=stop_once_training_has_begun)
    stopper.start()
    result = train_run(str(run), config.to_dict(), 1, str(stop))
    stopper.join()
    assert result["status"] == "stopped" and 0 < result["env_steps"] < 3000
    assert read_run(run).env_steps == result["env_steps"] and read_run(run).status == "interrupted"
    stop.unlink()
    resumed = train_run(str(run), config.to_dict(), 1, str(stop))
    assert resumed["status"] == "finished" and read_run(run).env_steps == 3000
    assert 0 < resumed["task_seconds"] < resumed["seconds"]  # this task's share of the run's time


def test_a_run_folder_of_another_config_is_refused_with_the_keys_that_differ(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(make_config("tiny").to_json())  # e.g. begun before a default changed
    wanted = make_config("tiny", {"model.cnn_depth": 16, "seed": 3})
    result = train_run(str(run), wanted.to_dict(), 1, str(tmp_path / STOP_FILE))
    assert result["status"] == "failed"
    assert "(seed: 0 there, 3 in the sweep; model.cnn_depth: 32 there, 16 in the sweep)" in result["error"]
    assert sorted(p.name for p in run.iterdir()) == ["config.json"]  # nothing written


@pytest.mark.slow
def test_a_sigkilled_run_is_resumed_by_ray_without_duplicated_metric_steps(tmp_path):
    folder = tmp_path / "grid"
    args = ["sweep", "--preset", "tiny", "--steps", "1500", "--dir", str(folder),
            "--set", "train.checkpoint_every=100", "--set", "train.log_every=50"]  # fmt: skip
    process = subprocess.Popen([sys.executable, "-c", "from cli import app; app()", *args], cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    run = folder / "CartPole-v1-categorical-seed0"
    deadline = time.time() + 120
    while time.time() < deadline and not (run / "checkpoints" / "last.safetensors").exists():
        time.sleep(0.1)
    worker = holder(run)
    os.kill(worker, signal.SIGKILL)  # the Ray worker training the run
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr
    steps = metric_steps(run)
    assert steps == sorted(set(steps)) and steps[-1] == 1500
    meta = read_run(run)
    assert meta.env_steps == 1500 and holder(run) != worker  # finished by another process


@pytest.mark.slow
def test_ctrl_c_stops_every_run_of_a_sweep_with_a_checkpoint(tmp_path):
    folder = tmp_path / "grid"
    args = ["sweep", "-q", "categorical,round", "--preset", "tiny", "--steps", "2000", "--dir", str(folder),
            "--set", "train.log_every=50"]  # fmt: skip
    command = [sys.executable, "-c", "from cli import app; app()", *args]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    runs = [folder / f"CartPole-v1-{q}-seed0" for q in ("categorical", "round")]
    deadline = time.time() + 120
    while time.time() < deadline and not all((run / "metrics.jsonl").exists() for run in runs):
        time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "stopped; the runs keep their checkpoints" in stderr
    for run in runs:
        info = read_run(run)
        assert info.status == "interrupted" and 0 < info.env_steps < 2000
    stopped_at = {run: read_run(run).env_steps for run in runs}
    result = runner.invoke(app, args)  # the same command continues both runs from their checkpoints
    assert result.exit_code == 0, result.output
    for run in runs:
        steps = metric_steps(run)
        assert steps == sorted(set(steps)) and steps[-1] == 2000 and stopped_at[run] in steps


def holder(run: Path) -> int:
    """The process id the run folder's lock file names (written just after the lock is taken)."""
    for _ in range(100):
        text = (run / ".lock").read_text().strip()
        if text.isdigit():
            return int(text)
        time.sleep(0.05)
    raise AssertionError(f"{run}/.lock names no process")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_a_sweep_runs_on_an_existing_cluster_by_address(tmp_path, monkeypatch):
    port = free_port()
    ray_cli = shutil.which("ray") or str(Path(sys.executable).parent / "ray")
    # a cluster of this test alone, on loopback: no token to share with the driver
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    # the head in the foreground (--block) and a session of its own, so that only its processes are stopped
    # afterwards: `ray stop` would stop every Ray cluster of this user on the machine
    command = [ray_cli, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2",
               "--include-dashboard=false", "--disable-usage-stats"]  # fmt: skip
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    head = subprocess.Popen(command, env=env, start_new_session=True, **quiet)
    try:
        folder = tmp_path / "grid"
        deadline = time.time() + 120
        while True:  # until the head accepts the sweep's connection
            result = runner.invoke(app, ["sweep", "--preset", "tiny", "--steps", "150", "--dir", str(folder),
                                         "--address", f"127.0.0.1:{port}"])  # fmt: skip
            if result.exit_code != 2 or time.time() > deadline:
                break
            time.sleep(2)
        assert result.exit_code == 0, result.output
        assert "127.0.0.1" in result.output and read_run(folder / "CartPole-v1-categorical-seed0").status == "finished"
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        head.wait(timeout=60)


def test_without_ray_agent_sweep_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as if it were not installed
    result = runner.invoke(app, ["sweep", "--preset", "tiny"])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and 'pip install -e ".[sweep]"' in lines[0]
