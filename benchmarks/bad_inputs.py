"""Bad inputs through the command line: each must end with one line on stderr and a non-zero exit code
(2 for bad input, 1 for a failure while running), never a traceback; a few are not errors and say
what happened instead (exit 0).

    python benchmarks/bad_inputs.py        # runs every case, prints a table, writes benchmarks/results/bad-inputs.json

tests/test_errors.py runs the same cases.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import tempfile
from pathlib import Path

import torch

from agent import Trainer

TESTS = Path(__file__).resolve().parents[1] / "tests"
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))  # custom_envs: custom environments for module:EnvId


def tiny_run(folder: Path) -> Path:
    """A finished 150-step CartPole run of the tiny preset."""
    run = folder / "run"
    with Trainer.create("CartPole-v1", preset="tiny", run_dir=run, seed=0, train={"steps": 150}) as trainer:
        trainer.learn()
    return run


def cases(run: Path, tmp: Path) -> list[tuple[list[str], int, str]]:
    """(arguments, expected exit code, text the one line must hold); `run` is a finished tiny run."""
    (tmp / "file").write_text("not a folder")
    (tmp / "text.safetensors").write_text("not a checkpoint")
    (tmp / "empty").mkdir(exist_ok=True)
    cut = tmp / "cut.safetensors"
    cut.write_bytes((run / "checkpoints" / "last.safetensors").read_bytes()[:500])
    out = [
        # environments
        (["train", "Cartpole-v1"], 2, "unknown environment 'Cartpole-v1'; did you mean CartPole-v1"),
        (["train", "NoSuchGame-v9"], 2, "unknown environment 'NoSuchGame-v9'"),
        (["train", "FrozenLake-v1"], 2, "observation space Discrete(16) is not supported"),
        (["train", "Blackjack-v1"], 2, "observation space Tuple"),
        (["train", "Reacher-v2"], 2, "Reacher-v2: a dependency is missing: The mujoco v2 and v3 based environments"),
        (["train", "phys2d/CartPole-v1"], 2, "a dependency is missing: No module named 'jax'"),
        (["train", "GymV26Environment-v0"], 2, "a dependency is missing: To use the gym compatibility environments"),
        (["train", "no_such_module:Env-v0"], 2, "cannot import module 'no_such_module'"),
        (["train", "custom_envs:Nope-v0"], 2, "unknown environment 'custom_envs:Nope-v0'"),
        (["train", "custom_envs:DictWithImage-v0"], 2, "observation entry 'camera' is an image"),
        (["train", "custom_envs:NoFrames-v0", "--obs", "pixels"], 2, "cannot render rgb_array frames"),
        (["train", "--obs", "rgb"], 2, "obs must be state or pixels"),
        # options and --set
        (["train", "-q", "rund"], 2, "unknown 'rund'; choose one of: round"),
        (["train", "--preset", "huge"], 2, "unknown preset 'huge'"),
        (["train", "--set", "model.dter=3"], 2, "unknown key 'model.dter'"),
        (["train", "--set", "model.deter=abc"], 2, "model.deter: expected int, got 'abc'"),
        (["train", "--set", "train.steps=1.5"], 2, "train.steps: expected int, got '1.5'"),
        (["train", "--set", "actor_critic.gamma=1.5"], 2, "actor_critic.gamma must be in [0, 1)"),
        (["train", "--set", "actor_critic.horizon=0"], 2, "actor_critic.horizon must be > 0"),
        (["train", "--set", "train.batch=0"], 2, "train.batch must be > 0"),
        (["train", "--set", "train.vector=threads"], 2, "train.vector must be sync or async"),
        (["train", "--set", "model.precision=half"], 2, "model.precision must be auto, float32 or bfloat16"),
        (["train", "--set", "model.deter"], 2, "--set expects key=value"),
        (["train", "--set", "quantizer_options.tua=1"], 2, "quantizer 'categorical' has no option 'tua'"),
        (["train", "-q", "reinmax", "--set", "quantizer_options.tau=0.5"], 2, "reinmax needs tau >= 1"),
        (["train", "-q", "vq", "--set", "quantizer_options.codebook_size=1"], 2, "codebook_size >= 2"),
        (["train", "--steps", "0"], 2, "--steps must be > 0"),
        (["train", "--steps", "-5"], 2, "--steps must be > 0"),
        (["train", "--steps", "500"], 2, "train.steps (500) must be above train.prefill (1,000)"),
        (["train", "--envs", "0"], 2, "train.envs must be > 0"),
        (["train", "--threads", "-1"], 2, "threads must be >= 0"),
        (["train", "--eval-every", "-5"], 2, "train.eval_every must be >= 0"),
        (["train", "--device", "tpu"], 2, "device must be cpu, cuda, cuda:N or mps"),
        (["train", "--device", "cudax"], 2, "device must be cpu, cuda, cuda:N or mps, got 'cudax'"),
        (["train", "--device", "xla"], 2, "device must be cpu, cuda, cuda:N or mps, got 'xla'"),
        (["train", "--resume", str(run), "--device", "cudax"], 2, "device must be cpu, cuda, cuda:N or mps"),
        # run folders
        (["train", "--run-dir", str(tmp / "file")], 2, "is a file, not a folder"),
        (["train", "--run-dir", str(tmp / "file" / "run")], 2, "cannot write to the run folder"),
        (["train", "--run-dir", str(run)], 2, "already holds a run; resume it with --resume"),
        (["train", "--resume", str(tmp / "empty")], 2, "not a run folder (no config.json); nothing to resume"),
        (["train", "--resume", str(tmp / "nowhere")], 2, "no such folder; nothing to resume"),
        (["train", "--resume", str(run), "--set", "model.deter=8"], 2, "cannot change model.deter when resuming"),
        (["train", "--resume", str(run), "-q", "round"], 2, "--quantizer cannot be given with --resume"),
        (["train", "--resume", str(run), "--steps", "120"], 2, "train.steps (120) is below the run's env steps (150)"),
        (["train", "--resume", str(run)], 0, "nothing to do: "),
        # checkpoints
        (["eval", str(tmp / "nowhere")], 2, "no such file or folder"),
        (["eval", str(tmp / "empty")], 2, "no checkpoint found"),
        (["eval", str(tmp / "text.safetensors")], 2, "unreadable or corrupt checkpoint"),
        (["eval", str(cut)], 2, "unreadable or corrupt checkpoint"),
        (["eval", str(run), "--checkpoint", "newest"], 2, "checkpoint must be one of best, last"),
        (["eval", str(run), "--episodes", "0"], 2, "--episodes must be > 0"),
        (["eval", str(run), "--threads", "-2"], 2, "--threads must be >= 0"),
        (["eval", str(run), "--device", "tpu"], 2, "device must be cpu, cuda, cuda:N or mps, got 'tpu'"),
        (["watch", str(run), "--device", "cuda:x"], 2, "device must be cpu, cuda, cuda:N or mps"),
        # pictures
        (["watch", str(run), "--episodes", "0"], 2, "--episodes must be > 0"),
        (["watch", str(run), "--fps", "0"], 2, "--fps must be > 0"),
        (["watch", str(run), "--terminal", "--window"], 2, "choose one of --terminal and --window"),
        (["watch", str(run), "--out", "x.avi"], 2, "unsupported video format .avi"),
        (["dream", str(run), "--context", "0"], 2, "--context must be > 0"),
        (["dream", str(run), "--out", "dream.gif"], 2, "unsupported format .gif here; use .png"),
        (["config", "--preset", "huge"], 2, "unknown preset 'huge'"),
        # experiments
        (["sweep", "--preset", "tiny"], 2, "--dir is required"),
        (["sweep", "--seeds", "two", "--dir", str(tmp / "grid")], 2, "--seeds expects a count or a comma-separated"),
        (["sweep", "--set", "seed=3", "--dir", str(tmp / "grid")], 2, "--set seed: give it as an argument or option"),
        (["sweep", "--dir", str(tmp / "file")], 2, "is a file, not a folder"),
        (["runs", str(tmp / "nowhere")], 2, "no such folder"),
        (["compare", str(tmp / "empty")], 2, "no readable run folders"),
        (["plot", str(run), "--stat", "median", "--terminal"], 2, "--stat must be iqm or mean"),
        (["plot", str(run)], 2, "give --out FILE.png, or --terminal"),
        (["config", "--set", "nonsense"], 2, "--set expects key=value"),
    ]
    if importlib.util.find_spec("minatar") is not None:
        out.append((["train", "MinAtar/Breakout-v1", "--obs", "pixels"], 2, "its own observations are images already"))
    if importlib.util.find_spec("ale_py") is None:
        out.append((["train", "ALE/Pong-v5"], 2, "ALE/ environments need an optional package: pip install ale-py"))
    if importlib.util.find_spec("shimmy") is None:
        out.append((["train", "dm_control/cartpole-swingup-v0"], 2, 'pip install "shimmy[dm-control]" "mujoco<4"'))
    if not torch.cuda.is_available():
        out.append((["train", "--device", "cuda"], 2, "no CUDA device is available"))
    return out


def run_case(args: list[str]) -> tuple[int, str]:
    """(exit code, what the command printed) of `agent ARGS`, run in this process."""
    from typer.testing import CliRunner

    from cli import app

    result = CliRunner().invoke(app, args)
    return result.exit_code, result.output


def main() -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from agent.checkpoint import atomic_write_text

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as folder:
        run = tiny_run(Path(folder))
        records = []
        for args, code, message in cases(run, Path(folder)):
            got, output = run_case(args)
            lines = output.strip().splitlines()
            shown = lines[0] if code else " ".join(line.strip() for line in lines)
            records.append({"args": [a.replace(folder, "<tmp>") for a in args], "expected_exit": code,
                            "exit": got, "lines": len(lines), "message": shown.replace(folder, "<tmp>"),
                            "ok": got == code and message in output and "Traceback" not in output})  # fmt: skip
    table = Table(title=f"{len(records)} bad inputs through the CLI")
    for column in ("agent ...", "exit", "message"):
        table.add_column(column)
    for r in records:
        table.add_row(escape(" ".join(r["args"])), str(r["exit"]) + ("" if r["ok"] else " (!)"), escape(r["message"]))
    Console(width=200).print(table)
    out = Path("benchmarks/results/bad-inputs.json")
    atomic_write_text(out, json.dumps(records, indent=1))
    print(f"{sum(r['ok'] for r in records)}/{len(records)} as expected; wrote {out}")


if __name__ == "__main__":
    main()
