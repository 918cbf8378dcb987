"""Loading never executes code; corrupt or mismatched files give one-line errors; NaN guards;
reproducibility."""

import io
import json
import os
import pickle
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from agent import Agent, Trainer, TrainingError
from agent.checkpoint import CheckpointError


class Exploit:
    """Unpickling this creates a marker file: proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def run(tiny_run):
    return tiny_run


def plant(path: Path, marker: Path) -> None:
    path.write_bytes(pickle.dumps(Exploit(marker)))


@pytest.mark.parametrize("name", ["checkpoints/best.safetensors", "checkpoints/last.safetensors"])
def test_a_pickle_in_place_of_a_checkpoint_is_refused_without_running_it(run, tmp_path, name):
    copy = tmp_path / "run"
    os.system(f"cp -r {run} {copy}")
    marker = tmp_path / "marker"
    plant(copy / name, marker)
    with pytest.raises(CheckpointError, match="unreadable or corrupt checkpoint"):
        Agent.load(copy / name)
    with pytest.raises(CheckpointError):
        Trainer.resume(copy) if "last" in name else Agent.load(copy, which="best")
    assert not marker.exists()


def test_a_pickle_in_a_replay_chunk_is_refused_without_running_it(run, tmp_path):
    copy = tmp_path / "run"
    os.system(f"cp -r {run} {copy}")
    marker = tmp_path / "marker"
    chunk = sorted((copy / "replay").glob("*.npz"))[0]
    arrays = dict(np.load(chunk))
    arrays["obs"] = np.array([Exploit(marker)], dtype=object)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    chunk.write_bytes(buffer.getvalue())
    with pytest.raises(CheckpointError, match="unreadable replay chunk"):
        Trainer.resume(copy)
    assert not marker.exists()


def test_ruff_bans_every_api_that_unpickles_and_the_project_uses_none(tmp_path):
    ruff = shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (pip install -e '.[dev]')")
    root = Path(__file__).resolve().parents[1]
    planted = tmp_path / "agent" / "planted.py"  # under the project's config: a copy of pyproject.toml
    planted.parent.mkdir()
    shutil.copy(root / "pyproject.toml", tmp_path)
    planted.write_text("import pickle\nimport numpy as np\nimport torch\n\ntorch.load('x')\nnp.load('y')\n")
    found = subprocess.run([ruff, "check", "--select", "TID251", "--no-cache", str(planted)], cwd=tmp_path,
                           capture_output=True, text=True).stdout  # fmt: skip
    assert "`pickle` is banned" in found and "`torch.load` is banned" in found and "`numpy.load` is banned" in found
    sources = [str(root / name) for name in ("agent", "envs", "cli.py", "benchmarks")]
    result = subprocess.run([ruff, "check", "--select", "TID251", "--no-cache", *sources], cwd=root,
                            capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0, result.stdout


def test_truncated_corrupt_and_foreign_checkpoints_give_one_line_errors(run, tmp_path):
    data = (run / "checkpoints" / "best.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    (tmp_path / "noise.safetensors").write_bytes(b"\x00" * 100)
    (tmp_path / "text.safetensors").write_text("hello")
    for name in ("cut", "noise", "text"):
        with pytest.raises(CheckpointError) as error:
            Agent.load(tmp_path / f"{name}.safetensors")
        assert str(tmp_path / name) in str(error.value) and "\n" not in str(error.value)


def test_checkpoints_that_do_not_match_their_config_or_env_are_refused(run, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(run / "checkpoints" / "best.safetensors"), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        meta = f.metadata()
    config = json.loads(meta["config"])
    config["model"]["deter"] = 64
    save_file(tensors, str(tmp_path / "shape.safetensors"), {**meta, "config": json.dumps(config)})
    with pytest.raises(CheckpointError, match="does not match"):
        Agent.load(tmp_path / "shape.safetensors")
    config = json.loads(meta["config"])
    config["env_id"] = "Pendulum-v1"
    save_file(tensors, str(tmp_path / "env.safetensors"), {**meta, "config": json.dumps(config)})
    with pytest.raises(CheckpointError, match="Pendulum-v1 has observations of shape"):
        Agent.load(tmp_path / "env.safetensors")


def test_nonfinite_updates_are_skipped_and_counted_then_training_stops(tmp_path, monkeypatch):
    trainer = Trainer.create("CartPole-v1", preset="tiny", run_dir=tmp_path / "run", seed=0,
                             train={"steps": 400, "prefill": 50})  # fmt: skip
    agent = trainer.agent
    real_loss = agent.world_model.loss
    poisoned = {"calls": 0, "bad": {3, 4}}

    def loss(batch, generator=None):
        total, terms, post = real_loss(batch, generator)
        poisoned["calls"] += 1
        return (total * float("nan") if poisoned["calls"] in poisoned["bad"] else total), terms, post

    monkeypatch.setattr(agent.world_model, "loss", loss)
    before = [p.detach().clone() for p in agent.world_model.parameters()]
    with pytest.warns(RuntimeWarning, match="skipped an update"):
        trainer.learn(100)
    assert trainer.nonfinite["total"] == 2 and trainer.counters["updates"] == poisoned["calls"] - 2
    assert all(torch.isfinite(p).all() for p in agent.world_model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, agent.world_model.parameters(), strict=True))
    # now every update diverges: training stops, and the last good checkpoint stays loadable
    poisoned["bad"] = set(range(10_000))
    with pytest.raises(TrainingError, match="10 updates in a row"), pytest.warns(RuntimeWarning):
        trainer.learn(300)
    trainer.close()
    good = Agent.load(tmp_path / "run", which="last")
    assert all(torch.isfinite(t).all() for t in good.world_model.state_dict().values())


def test_same_seed_same_metrics_on_the_cpu(tmp_path):
    lines = []
    for name in ("a", "b"):
        config = {"seed": 3, "train": {"steps": 600, "log_every": 50}}
        with Trainer.create("CartPole-v1", preset="tiny", run_dir=tmp_path / name, **config) as trainer:
            trainer.learn()
        lines.append(
            [
                {k: v for k, v in json.loads(line).items() if not k.startswith("time/")}
                for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()
            ]
        )
    assert lines[0] == lines[1] and len(lines[0]) >= 12 and lines[0][-1]["updates"] >= 150
