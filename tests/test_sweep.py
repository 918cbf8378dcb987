"""Sweeps on Ray, and reading run folders: agent runs, plot, compare; TensorBoard."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from agent import Trainer
from agent.runs import RunFolder, compare, find_runs, read_run
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


def test_running_the_same_sweep_again_starts_nothing_and_a_changed_grid_is_refused(swept):
    folder, _ = swept
    before = {run: (run / "metrics.jsonl").stat().st_mtime_ns for run in find_runs([folder])}
    result = runner.invoke(app, [*SWEEP, "--dir", str(folder)])
    assert result.exit_code == 0, result.output
    assert {run: (run / "metrics.jsonl").stat().st_mtime_ns for run in find_runs([folder])} == before
    result = runner.invoke(app, [*SWEEP[:-1], "300", "--dir", str(folder)])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and "holds a different sweep (it differs in overrides)" in lines[0]


def test_a_grid_with_a_bad_config_writes_nothing(tmp_path):
    grid = Grid(["CartPole-v1"], ["categorical"], [0], {"model.deter": ["16", "x"]}, "tiny", {})
    with pytest.raises(ValueError, match=r"model\.deter: expected int"):
        open_sweep(tmp_path / "grid", grid)
    assert not (tmp_path / "grid").exists()


def test_runs_lists_state_progress_and_evaluations(swept, tmp_path):
    folder, _ = swept
    result = runner.invoke(app, ["runs", str(folder), "--json"])
    rows = json.loads(result.output)
    assert len(rows) == 4 and {row["status"] for row in rows} == {"finished"}
    assert all(row["env_steps"] == row["total_steps"] == 150 and row["best_eval"] is not None for row in rows)
    running = tmp_path / "copy"
    shutil.copytree(folder / "CartPole-v1-round-seed0", running, ignore=shutil.ignore_patterns(".lock"))
    with RunFolder(running, new=False):
        assert read_run(running).status == "running"
    assert read_run(running).status == "finished"


def write_run(folder: Path, quantizer: str, seed: int, curve: list[tuple[int, float]]) -> None:
    """A run folder with a config and evaluation lines only, for statistics by hand."""
    folder.mkdir(parents=True)
    config = {"env_id": "CartPole-v1", "quantizer": quantizer, "seed": seed, "train": {"steps": curve[-1][0]}}
    (folder / "config.json").write_text(json.dumps(config))
    lines = [{"step": s, "eval_return_mean": v, "eval_return_best": v} for s, v in curve]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))


def test_compare_matches_a_hand_computation(tmp_path):
    finals = {"a": [10.0, 20.0, 30.0, 40.0], "b": [5.0, 5.0, 5.0, 100.0]}
    for group, values in finals.items():
        for seed, final in enumerate(values):
            write_run(tmp_path / f"{group}{seed}", group, seed, [(0, 0.0), (1000, final / 2), (2000, final)])
    report = compare([read_run(p) for p in find_runs([tmp_path])], threshold=15.0, reps=500)
    rows = report["envs"]["CartPole-v1"]["groups"]
    assert rows["a"]["seeds"] == 4 and rows["a"]["final_mean"] == 25.0 and rows["a"]["final_iqm"] == 25.0  # 20, 30
    assert rows["b"]["final_mean"] == pytest.approx(28.75) and rows["b"]["final_iqm"] == 5.0  # the middle two: 5, 5
    # each curve's mean over env steps: (0 + f/2)/2 * 1000 + (f/2 + f)/2 * 1000 over 2000 = f/2
    assert rows["a"]["auc_mean"] == pytest.approx(12.5)
    assert rows["a"]["reached"] == 3 and rows["a"]["steps_to_threshold_median"] == 1000.0  # 20 at 2k; 30, 40 at 1k
    low, high = rows["b"]["final_iqm_ci"]
    assert low <= 5.0 <= high
    # P(a > b): 10 beats three 5s, loses to 100; 20, 30, 40 likewise: 12 of 16 pairs
    assert report["envs"]["CartPole-v1"]["probability_of_improvement"]["a > b"]["p"] == 0.75


def test_plot_writes_a_png_and_draws_in_the_terminal(swept, tmp_path):
    folder, _ = swept
    out = tmp_path / "curves.png"
    result = runner.invoke(app, ["plot", str(folder), "--out", str(out), "--stat", "mean"])
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result = runner.invoke(app, ["plot", str(folder), "--terminal"], terminal_width=150)
    assert result.exit_code == 0 and "categorical (n=2)" in result.output and "round (n=2)" in result.output
    result = runner.invoke(app, ["plot", str(folder), "--out", str(tmp_path / "x.gif")])
    assert result.exit_code == 2 and "plots are written as .png" in result.output


def test_a_run_sees_the_stop_file_and_ends_with_a_checkpoint(tmp_path):
    run, stop = tmp_path / "run", tmp_path / STOP_FILE
    config = Trainer.create("CartPole-v1", preset="tiny", train={"steps": 3000, "log_every": 50}).agent.config
    timer = threading.Timer(1.0, stop.write_text, args=("",))
    timer.start()
    result = train_run(str(run), config.to_dict(), 1, str(stop))
    timer.join()
    assert result["status"] == "stopped" and 0 < result["env_steps"] < 3000
    assert read_run(run).env_steps == result["env_steps"] and read_run(run).status == "interrupted"


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
    worker = int((run / ".lock").read_text())
    os.kill(worker, signal.SIGKILL)  # the Ray worker training the run
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr
    steps = metric_steps(run)
    assert steps == sorted(set(steps)) and steps[-1] == 1500
    meta = read_run(run)
    assert meta.env_steps == 1500 and int((run / ".lock").read_text()) != worker  # finished by another process


@pytest.mark.slow
def test_ctrl_c_stops_every_run_of_a_sweep_with_a_checkpoint(tmp_path):
    folder = tmp_path / "grid"
    args = ["sweep", "-q", "categorical,round", "--preset", "tiny", "--steps", "4000", "--dir", str(folder),
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
        assert info.status == "interrupted" and 0 < info.env_steps < 4000
        with Trainer.resume(run) as trainer:  # what the same command does next: continue from there
            assert trainer.counters["env_steps"] == info.env_steps and not trainer.restarted


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_a_sweep_runs_on_an_existing_cluster_by_address(tmp_path):
    port = free_port()
    ray_cli = shutil.which("ray") or str(Path(sys.executable).parent / "ray")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    started = subprocess.run([ray_cli, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
                              "--num-cpus=2", "--include-dashboard=false"], capture_output=True, text=True, env=env,
                             timeout=120)  # fmt: skip
    assert started.returncode == 0, started.stderr
    try:
        folder = tmp_path / "grid"
        result = runner.invoke(app, ["sweep", "--preset", "tiny", "--steps", "150", "--dir", str(folder),
                                     "--address", f"127.0.0.1:{port}"])  # fmt: skip
        assert result.exit_code == 0, result.output
        assert "127.0.0.1" in result.output and read_run(folder / "CartPole-v1-categorical-seed0").status == "finished"
    finally:
        subprocess.run([ray_cli, "stop", "--force"], capture_output=True, timeout=120, env=env)


def test_tensorboard_scalars_continue_across_a_resume(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    config = {"train": {"steps": 300, "log_every": 50, "checkpoint_every": 100, "tensorboard": True}}

    def crash_after_250(line):
        if line["step"] == 250:
            raise RuntimeError("crash")  # after the line at 250 is written, before a checkpoint

    with (
        Trainer.create("CartPole-v1", preset="tiny", run_dir=run, **config) as trainer,
        pytest.raises(RuntimeError, match="crash"),
    ):
        trainer.learn(on_log=crash_after_250)
    with Trainer.resume(run) as trainer:  # from the checkpoint at 200: 250 is logged again
        assert trainer.counters["env_steps"] == 200
        trainer.learn()
    events = EventAccumulator(str(run / "tb"))
    events.Reload()
    steps = [event.step for event in events.Scalars("updates")]
    assert steps == sorted(set(steps)) and steps[-1] == 300 and 250 in steps
    assert np.isfinite([event.value for event in events.Scalars("time/sps")]).all()


def test_without_ray_agent_sweep_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as if it were not installed
    result = runner.invoke(app, ["sweep", "--preset", "tiny"])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and 'pip install -e ".[sweep]"' in lines[0]
