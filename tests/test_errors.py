"""Every user mistake: one clear line on stderr, a non-zero exit, never a traceback."""

import errno
import json
import os
import string

import bad_inputs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import agent.checkpoint
from agent.config import Config, ConfigError, from_dict, make_config
from agent.runs import RunFolder
from cli import app
from envs import EnvError

runner = CliRunner()


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    return bad_inputs.tiny_run(tmp_path_factory.mktemp("finished"))


def test_every_bad_input_gets_one_line_and_its_exit_code(finished_run, tmp_path):
    for args, code, message in bad_inputs.cases(finished_run, tmp_path):
        result = runner.invoke(app, args)
        assert result.exit_code == code, (args, result.output)
        assert "Traceback" not in result.output, (args, result.output)
        if code:
            lines = result.output.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("error: "), (args, result.output)
            assert message in lines[0], (args, lines[0])
        else:
            assert message in result.output, (args, result.output)


def test_a_folder_in_use_by_another_trainer_is_refused(finished_run):
    with RunFolder(finished_run, new=False):
        result = runner.invoke(app, ["train", "--resume", str(finished_run), "--steps", "200"])
    assert result.exit_code == 2 and "is in use by another training process" in result.output


def test_a_full_disk_is_one_line_and_leaves_earlier_files_intact(tmp_path, monkeypatch):
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


def test_files_reach_the_disk_before_they_replace_the_old_version(tmp_path, monkeypatch):
    target = tmp_path / "config.json"
    target.write_text("old")
    events = []  # (what, the file's inode)
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.fstat(fd).st_ino))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", os.stat(src).st_ino))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    agent.checkpoint.atomic_write_text(target, "new")
    assert [what for what, _ in events] == ["fsync", "replace"] and events[0][1] == events[1][1]
    assert target.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["config.json"]


def test_a_full_disk_inside_safetensors_is_one_line_too(tmp_path, monkeypatch):
    from safetensors import SafetensorError

    def full_disk(tensors, path, metadata=None):
        raise SafetensorError(
            'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'
        )

    monkeypatch.setattr(agent.checkpoint, "save_file", full_disk)
    result = runner.invoke(app, ["train", "--preset", "tiny", "--steps", "150", "--run-dir", str(tmp_path / "run"),
                                 "--quiet"])  # fmt: skip
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert lines[-1].startswith("error: ") and "cannot write the checkpoint" in lines[-1] and "StorageFull" in lines[-1]
    assert not list((tmp_path / "run" / "checkpoints").glob("*"))  # no half-written file left


def test_debug_shows_the_traceback():
    plain = runner.invoke(app, ["train", "Cartpole-v1"])
    assert plain.exit_code == 2 and isinstance(plain.exception, SystemExit)  # one line, no traceback
    debug = runner.invoke(app, ["--debug", "train", "Cartpole-v1"])
    assert isinstance(debug.exception, EnvError) and "did you mean CartPole-v1" in str(debug.exception)


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
