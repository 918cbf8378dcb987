"""The command line end to end (tiny preset, a few hundred env steps)."""

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

import agent
import cli
from agent.config import PRESETS, Config, describe
from agent.quantize import QUANTIZERS
from cli import app

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]


def test_help_version_and_short_help():
    for args in (["--help"], ["-h"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0 and "train" in result.output and "config" in result.output
    for args in (["--version"], ["version"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0 and agent.__version__ in result.output


def test_help_texts_show_defaults_and_name_every_quantizer_and_preset():
    result = runner.invoke(app, ["train", "--help"])
    text = " ".join(result.output.split())
    for default in ("(default: CartPole-v1)", "(default: 0)", "(default: cpu)", "(default: 1)", "(default: 1000)"):
        assert default in text, default
    assert all(name in cli.QUANTIZER_NAMES for name in QUANTIZERS)
    assert all(name in cli.PRESET_NAMES for name in PRESETS)
    assert "gumbel_rao" in text and "xs" in text
    for command in ("eval", "watch", "dream"):
        assert "--device" in runner.invoke(app, [command, "--help"]).output


def test_help_does_not_import_torch():
    code = "import sys, cli\ntry:\n    cli.app(['--help'])\nexcept SystemExit:\n    pass\nprint('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.stdout.strip().splitlines()[-1] == "False"


def test_config_prints_the_resolved_config_and_the_keys_set_takes():
    result = runner.invoke(app, ["config", "--preset", "tiny", "--set", "model.deter=48", "--json"])
    data = json.loads(result.output)
    assert data["model"]["deter"] == 48 and data["model"]["hidden"] == 32 and data["threads"] == 1
    table = runner.invoke(app, ["config", "-q", "gumbel"], terminal_width=200).output
    for key in ("model.deter", "actor_critic.entropy", "train.train_ratio", "quantizer_options.tau", "threads"):
        assert key in table, key
    assert "size of the recurrent state h" in table


def test_every_config_key_has_a_doc_even_where_the_comment_sits_above_the_field():
    docs = {key: doc for key, _, doc in describe(Config())}
    assert [key for key, doc in docs.items() if not doc] == []
    assert docs["actor_critic.actor_grad"].startswith("reinforce | dynamics")  # a comment block above the field
    assert docs["model.precision"].startswith("auto | float32 | bfloat16; bfloat16 products")  # inline, then above


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("cli") / "run"
    args = ["train", "--preset", "tiny", "--steps", "200", "--run-dir", str(run), "--seed", "2", "--eval-every", "100"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return run, result.output


def test_train_writes_a_run_that_eval_reads(run_dir):
    run, _ = run_dir
    evals = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()
             if "eval_return_mean" in line]  # fmt: skip
    assert evals == [100, 200]  # --eval-every
    result = runner.invoke(app, ["eval", str(run), "--episodes", "3"])
    assert result.exit_code == 0, result.output
    assert "best.safetensors" in result.output and "mean return" in result.output
    assert "actions taken (share of steps): 0: " in result.output
    result = runner.invoke(app, ["eval", str(run), "--episodes", "2", "--json", "--checkpoint", "last"])
    data = json.loads(result.output)
    assert data["env_id"] == "CartPole-v1" and data["episodes"] == 2 and len(data["returns"]) == 2
    assert {"mean_return", "std_return", "lengths"} <= set(data) and data["checkpoint"].endswith("last.safetensors")
    assert not data["sampled"]
    result = runner.invoke(app, ["eval", str(run), "--episodes", "2", "--sample"])
    assert result.exit_code == 0, result.output
    assert "sampled actions" in result.output


def test_without_a_terminal_train_prints_plain_progress_lines(run_dir):
    run, output = run_dir  # CliRunner's output is not a terminal
    assert "summary" in output and str(run) in output
    progress = [line for line in output.splitlines() if line.startswith("step ")]
    assert [line.split()[1] for line in progress] == ["50/200", "100/200", "150/200", "200/200"]
    assert "env steps/s" in progress[0] and "eval" in progress[1]
    header = output.splitlines()[:2]
    assert all(len(line) <= 80 for line in header)


def test_the_live_view_moves_between_log_lines_and_waits_for_training_before_an_eta(monkeypatch):
    monkeypatch.setattr(cli.time, "monotonic", lambda: 1000.0)  # the view's clock, stopped: no timing race

    class Fake:  # what the view reads of a trainer
        def __init__(self):
            self.counters = {"env_steps": 0, "updates": 0, "episodes": 0}
            self.agent = agent.Agent.create("CartPole-v1", preset="tiny", train={"prefill": 100, "steps": 1000})

    fake = Fake()
    view = cli.TrainView(fake)
    console = Console(width=100, record=True)
    console.print(view)
    text = console.export_text()
    assert "prefill (random actions)" in text and "eta after prefill" in text
    fake.counters.update(env_steps=400, updates=50)
    view.samples.clear()
    view.samples.append((1000.0 - 10, 300, 25))  # 100 env steps in the last 10 s
    console.print(view)
    text = console.export_text()
    assert "400/1,000 env steps" in text and "eta 00:01:00" in text and "training" in text


def test_train_refuses_to_overwrite_a_run(run_dir):
    run, _ = run_dir
    result = runner.invoke(app, ["train", "--preset", "tiny", "--run-dir", str(run)])
    assert result.exit_code == 2 and "already holds a run" in result.output


def test_a_failed_train_leaves_no_folder_behind(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for args in (["train", "NoSuchGame-v9"], ["train", "Reacher-v2"], ["train", "--set", "model.deter=x"],
                 ["train", "FrozenLake-v1", "--run-dir", "mine"]):  # fmt: skip
        assert runner.invoke(app, args).exit_code == 2
    assert list(tmp_path.iterdir()) == []


def interactive_sigint() -> None:
    """In the child: SIGINT as in a terminal, even when this test runs as a background job (which ignores it)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def train_in_a_subprocess(run: Path, steps: int) -> subprocess.Popen:
    """`agent train` of the tiny preset in a process of its own, once it has written its first metric line."""
    args = ["train", "--preset", "tiny", "--steps", str(steps), "--run-dir", str(run), "--quiet"]
    process = subprocess.Popen([sys.executable, "-c", "from cli import app; app()", *args], cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=interactive_sigint)  # fmt: skip
    deadline = time.time() + 120
    while not (run / "metrics.jsonl").exists() and time.time() < deadline:
        time.sleep(0.05)
    return process


def test_ctrl_c_checkpoints_and_prints_the_quoted_resume_command_then_resume_finishes(tmp_path):
    run = tmp_path / "a run"  # a space, so the command must be quoted
    process = train_in_a_subprocess(run, 3000)
    time.sleep(0.5)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    line = stderr.strip().splitlines()[-1]
    assert line.startswith("interrupted at env step ") and "checkpoint written" in line
    command = line.split("Resume with: ")[1]
    assert shlex.split(command) == ["agent", "train", "--resume", str(run)]
    step = int(line.split("env step ")[1].split(";")[0].replace(",", ""))
    assert agent.Agent.load(run, which="last").trained_env_steps == step
    result = runner.invoke(app, ["train", "--resume", str(run), "--steps", str(step + 60), "--quiet"])
    assert result.exit_code == 0 and f"resuming {run}" in " ".join(result.output.split())


def test_ctrl_c_twice_ends_agent_train_with_130_and_one_line(tmp_path):  # the abort itself: test_trainer
    run = tmp_path / "run"
    process = train_in_a_subprocess(run, 5000)
    os.kill(process.pid, signal.SIGINT)
    os.kill(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130 and "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1].startswith(("aborted;", "interrupted at env step"))


def test_resuming_a_finished_run_says_so_and_how_to_extend_it(run_dir):
    run, _ = run_dir
    result = runner.invoke(app, ["train", "--resume", str(run)])
    assert result.exit_code == 0
    assert "nothing to do" in result.output and "--steps" in result.output


def test_watch_in_a_16_colour_terminal_still_draws(run_dir, monkeypatch):
    run, _ = run_dir
    monkeypatch.setattr(cli, "console", Console(color_system="standard", width=60, height=30, record=True))
    result = runner.invoke(app, ["watch", str(run), "--terminal", "--max-steps", "2", "--fps", "1000"])
    assert result.exit_code == 0, result.output
    assert "▀" in cli.console.export_text()
