"""The command line end to end (tiny preset, a few hundred env steps)."""

import json

import pytest
from typer.testing import CliRunner

import agent
from cli import app

runner = CliRunner()


def test_help_and_version():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0 and "train" in result.output and "eval" in result.output
    result = runner.invoke(app, ["version"])
    assert result.exit_code == 0 and agent.__version__ in result.output


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("cli") / "run"
    result = runner.invoke(app, ["train", "--preset", "tiny", "--steps", "200", "--run-dir", str(run), "--seed", "2"])
    assert result.exit_code == 0, result.output
    assert "summary" in result.output and str(run) in result.output
    return run


def test_train_writes_a_run_that_eval_reads(run_dir):
    assert (run_dir / "checkpoints" / "best.safetensors").is_file()
    result = runner.invoke(app, ["eval", str(run_dir), "--episodes", "3"])
    assert result.exit_code == 0, result.output
    assert "best.safetensors" in result.output and "mean return" in result.output
    result = runner.invoke(app, ["eval", str(run_dir), "--episodes", "2", "--json", "--checkpoint", "last"])
    data = json.loads(result.output)
    assert data["env_id"] == "CartPole-v1" and data["episodes"] == 2 and len(data["returns"]) == 2
    assert {"mean_return", "std_return", "lengths"} <= set(data) and data["checkpoint"].endswith("last.safetensors")


def test_train_refuses_to_overwrite_a_run(run_dir):
    result = runner.invoke(app, ["train", "--preset", "tiny", "--run-dir", str(run_dir)])
    assert result.exit_code == 2 and "already holds a run" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "Cartpole-v1"], "did you mean CartPole-v1"),
        (["train", "FrozenLake-v1"], "observation space Discrete"),
        (["train", "--quantizer", "rund"], "unknown 'rund'"),
        (["train", "--preset", "huge"], "unknown preset"),
        (["train", "--set", "model.deter=abc"], "model.deter: expected int"),
        (["train", "--set", "nonsense"], "expects key=value"),
        (["train", "--steps", "0"], "--steps must be > 0"),
        (["eval", "/no/such/run"], "no such file or folder"),
    ],
)
def test_user_errors_are_one_line_with_exit_code_2(args, message):
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
