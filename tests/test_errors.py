"""Every user mistake: one clear line on stderr, a non-zero exit, never a traceback."""

import errno
import json
import string

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import agent.checkpoint
from agent.config import Config, ConfigError, from_dict, make_config
from cli import app

runner = CliRunner()


@pytest.fixture
def run(tiny_run):
    return tiny_run


def cases(run, tmp):
    (tmp / "file").write_text("not a folder")
    (tmp / "text.safetensors").write_text("not a checkpoint")
    (tmp / "empty").mkdir(exist_ok=True)
    cut = tmp / "cut.safetensors"
    cut.write_bytes((run / "checkpoints" / "last.safetensors").read_bytes()[:500])
    return [
        (["train", "Cartpole-v1"], 2, "unknown environment 'Cartpole-v1'; did you mean CartPole-v1"),
        (["train", "NoSuchGame-v9"], 2, "unknown environment 'NoSuchGame-v9'"),
        (["train", "FrozenLake-v1"], 2, "observation space Discrete(16) is not supported"),
        (["train", "Blackjack-v1"], 2, "observation space Tuple"),
        (["train", "-q", "rund"], 2, "unknown 'rund'; choose one of: round"),
        (["train", "--preset", "huge"], 2, "unknown preset 'huge'"),
        (["train", "--set", "model.dter=3"], 2, "unknown key 'model.dter'"),
        (["train", "--set", "model.deter=abc"], 2, "model.deter: expected int, got 'abc'"),
        (["train", "--set", "actor_critic.gamma=1.5"], 2, "actor_critic.gamma must be in [0, 1)"),
        (["train", "--set", "train.batch=0"], 2, "train.batch must be > 0"),
        (["train", "--set", "model.deter"], 2, "--set expects key=value"),
        (["train", "--set", "quantizer_options.tua=1"], 2, "quantizer 'categorical' has no option 'tua'"),
        (["train", "-q", "reinmax", "--set", "quantizer_options.tau=0.5"], 2, "reinmax needs tau >= 1"),
        (["train", "--steps", "0"], 2, "--steps must be > 0"),
        (["train", "--steps", "-5"], 2, "--steps must be > 0"),
        (["train", "--run-dir", str(tmp / "file")], 2, "is a file, not a folder"),
        (["train", "--run-dir", str(tmp / "file" / "run")], 2, "cannot write to the run folder"),
        (["train", "--run-dir", str(run)], 2, "already holds a run; resume it with --resume"),
        (["train", "--resume", str(tmp / "empty")], 2, "nothing to resume"),
        (["train", "--resume", str(run), "--set", "model.deter=8"], 2, "cannot change model.deter when resuming"),
        (["train", "--resume", str(run), "-q", "round"], 2, "--quantizer cannot be given with --resume"),
        (["eval", str(tmp / "nowhere")], 2, "no such file or folder"),
        (["eval", str(tmp / "empty")], 2, "no checkpoint found"),
        (["eval", str(tmp / "text.safetensors")], 2, "unreadable or corrupt checkpoint"),
        (["eval", str(cut)], 2, "unreadable or corrupt checkpoint"),
        (["eval", str(run), "--checkpoint", "newest"], 2, "checkpoint must be one of best, last"),
        (["eval", str(run), "--episodes", "0"], 2, "--episodes must be > 0"),
    ]


def test_at_least_twenty_mistakes_each_get_one_line_and_exit_code_2(run, tmp_path):
    all_cases = cases(run, tmp_path)
    if not torch.cuda.is_available():
        all_cases.append((["train", "--device", "cuda"], 2, "no CUDA device is available"))
    assert len(all_cases) >= 20
    for args, code, message in all_cases:
        result = runner.invoke(app, args)
        assert result.exit_code == code, (args, result.output)
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (args, result.output)
        assert message in lines[0], (args, lines[0])
        assert "Traceback" not in result.output


def test_a_full_disk_is_one_line_and_leaves_earlier_files_intact(run, tmp_path, monkeypatch):
    target = tmp_path / "run"
    real = agent.checkpoint.atomic_write
    calls = {"n": 0}

    def full_disk(path, write):
        calls["n"] += 1
        if calls["n"] > 3:  # config.json and the first files are written, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, write)

    monkeypatch.setattr(agent.checkpoint, "atomic_write", full_disk)
    result = runner.invoke(app, ["train", "--preset", "tiny", "--steps", "300", "--run-dir", str(target),
                                 "--set", "train.checkpoint_every=50", "--quiet"])  # fmt: skip
    assert result.exit_code == 1
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("error: ") and "No space left on device" in last and "Traceback" not in result.output
    assert json.loads((target / "config.json").read_text())["env_id"] == "CartPole-v1"


def test_debug_shows_the_traceback():
    result = runner.invoke(app, ["--debug", "train", "Cartpole-v1"])
    assert result.exit_code != 0 and result.exception is not None


# --- fuzzing: every override and every config file either works or fails with a ConfigError ------

KEYS = ["model.deter", "model.lr", "model.free_bits", "actor_critic.gamma", "actor_critic.actor_grad",
        "train.batch", "train.train_ratio", "seed", "quantizer", "quantizer_options.tau",
        "quantizer_options.groups", "quantizer_options.levels", "model.nope", "nope", "train."]  # fmt: skip
VALUES = st.one_of(
    st.text(alphabet=string.printable, max_size=12),
    st.integers(-10, 10**6).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.sampled_from(["true", "0", "1e-3", "8,5,5", "[2,3]", "gumbel", "fsq", "reinmax", "dynamics", ""]),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=4), st.sampled_from(["categorical", "fsq", "gumbel"]))
def test_fuzzed_overrides_work_or_fail_cleanly(overrides, quantizer):
    try:
        config = make_config("tiny", overrides, quantizer=quantizer)
    except ConfigError as error:
        assert "\n" not in str(error)
        return
    assert isinstance(config, Config)
    assert from_dict(json.loads(config.to_json())) == config


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.floats(-2, 2) | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["model", "train", "seed", "quantizer", "env_id", "x"]), JSON, max_size=4))
def test_fuzzed_config_files_load_or_fail_cleanly(data):
    try:
        config = from_dict(data)
    except ConfigError as error:
        assert "\n" not in str(error)
        return
    assert isinstance(config, Config)
