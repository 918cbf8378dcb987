"""The `agent` command line: parse, validate, call the library, render with rich."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Annotated, Any

import torch
import typer
from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

import agent as agent_package
from agent import Agent
from agent.checkpoint import CheckpointError
from agent.config import ConfigError, make_config, parse_overrides
from agent.quantize import QUANTIZERS
from envs import EnvError

app = typer.Typer(
    help="A discrete world-model RL agent: Dreamer-style learning with straight-through latent codes.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
errors = Console(stderr=True, soft_wrap=True)  # an error stays on one line


@app.callback()
def main() -> None:
    """Train, evaluate and inspect discrete world-model agents."""


@app.command()
def version() -> None:
    """Print the package version."""
    console.print(f"stdreamer {agent_package.__version__}")


@contextlib.contextmanager
def user_errors():
    """Mistakes a user can make end the command with one line on stderr and exit code 2."""
    try:
        yield
    except (ConfigError, EnvError, CheckpointError) as error:
        errors.print(f"[bold red]error:[/] {error}", highlight=False)
        raise typer.Exit(2) from None


def check_device(device: str) -> None:
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: no CUDA device is available (torch {torch.__version__})")
    if device == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("--device mps: no MPS device is available")


# --- agent train --------------------------------------------------------------------------------------

SHOWN = {
    "train/episode_return": "episode return (last 10)",
    "eval_return_mean": "eval return",
    "eval_return_best": "best eval return",
    "loss/world_model": "world-model loss",
    "loss/decoder": "  decoder",
    "loss/reward": "  reward",
    "loss/cont": "  continuation",
    "loss/kl": "  KL(post || prior)",
    "loss/actor": "actor loss",
    "loss/critic": "critic loss",
    "actor/entropy": "policy entropy",
}


class TrainView:
    """A progress bar with ETA and a table of the latest metrics, redrawn on every log line."""

    def __init__(self, total: int, start: int):
        self.progress = Progress(
            TextColumn("[bold]training"), BarColumn(), MofNCompleteColumn(), TextColumn("env steps"),
            TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=console,
        )  # fmt: skip
        self.task = self.progress.add_task("train", total=total, completed=start)
        self.start = start
        self.last: dict[str, Any] = {}
        self.live = Live(self.render(), console=console, refresh_per_second=4)

    def render(self) -> Group:
        table = Table(show_header=False, box=None, pad_edge=False)
        table.add_column(style="dim")
        table.add_column(justify="right")
        seconds = self.last.get("time/seconds", 0.0)
        if self.last:
            table.add_row("env steps / s", f"{self.last['time/sps']:.1f}")
            table.add_row("updates / s", f"{self.last['updates'] / max(seconds, 1e-9):.2f}")
        for key, label in SHOWN.items():
            if key in self.last:
                table.add_row(
                    label, f"{self.last[key]:.3f}" if "loss" in key or "/" in key else f"{self.last[key]:.1f}"
                )
        return Group(self.progress, table)

    def __call__(self, line: dict[str, Any]) -> None:
        self.last = {**self.last, **line}
        self.progress.update(self.task, completed=line["step"])
        self.live.update(self.render())


def default_run_dir(env_id: str, quantizer: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{env_id.replace('/', '_')}-{quantizer}-{stamp}"


@app.command()
def train(
    env_id: Annotated[str, typer.Argument(help="A Gymnasium environment id.")] = "CartPole-v1",
    steps: Annotated[int | None, typer.Option(help="Env steps to train for (default: the preset's).")] = None,
    quantizer: Annotated[str, typer.Option("--quantizer", "-q", help=f"One of: {', '.join(QUANTIZERS)}.")] = (
        "categorical"
    ),
    preset: Annotated[str, typer.Option(help="Sizes and schedule: default, tiny, large.")] = "default",
    seed: Annotated[int, typer.Option(help="Random seed (runs are reproducible on the CPU).")] = 0,
    run_dir: Annotated[
        Path | None, typer.Option(help="Where to write the run (default runs/<env>-<q>-<time>).")
    ] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda or cuda:N.")] = "cpu",
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a config value: key=value (repeatable).")
    ] = None,
    quiet: Annotated[bool, typer.Option(help="No live view: print one line per evaluation.")] = False,
) -> None:
    """Train an agent; writes config.json, metrics.jsonl and best/last checkpoints to the run folder."""
    with user_errors():
        overrides = parse_overrides(set_ or [])
        if steps is not None:
            if steps <= 0:
                raise ConfigError(f"--steps must be > 0, got {steps}")
            overrides["train.steps"] = steps
        config = make_config(preset, overrides, env_id=env_id, quantizer=quantizer, seed=seed, device=device)
        check_device(config.device)
        run_dir = run_dir or default_run_dir(config.env_id, config.quantizer)
        if (run_dir / "config.json").exists():
            raise ConfigError(f"{run_dir} already holds a run; choose another --run-dir")
        agent = Agent.from_config(config)
        total = config.train.steps
        console.print(
            f"[bold]{config.env_id}[/] · quantizer [bold]{config.quantizer}[/] · preset {preset} · seed {config.seed}"
            f" · {total:,} env steps · run folder [cyan]{run_dir}[/]"
        )
        if quiet:
            agent.learn(total, run_dir, on_log=print_eval_line)
        else:
            view = TrainView(total, 0)
            with view.live:
                agent.learn(total, run_dir, on_log=view)
    print_summary(agent, run_dir)


def print_eval_line(line: dict[str, Any]) -> None:
    if "eval_return_mean" in line:
        console.print(
            f"step {line['step']:>8,}  eval return {line['eval_return_mean']:8.1f}  "
            f"best {line['eval_return_best']:8.1f}  {line['time/seconds']:7.1f} s"
        )


def print_summary(agent: Agent, run_dir: Path) -> None:
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [m for m in metrics if "eval_return_mean" in m]
    table = Table(title="summary", show_header=False)
    table.add_row("env steps", f"{agent.counters['env_steps']:,}")
    table.add_row("updates", f"{agent.counters['updates']:,}")
    table.add_row("episodes", f"{agent.counters['episodes']:,}")
    table.add_row("wall-clock", f"{metrics[-1]['time/seconds']:.1f} s")
    if evals:
        table.add_row("last eval return", f"{evals[-1]['eval_return_mean']:.1f}")
        table.add_row("best eval return", f"{max(e['eval_return_mean'] for e in evals):.1f}")
    table.add_row("run folder", str(run_dir))
    console.print(table)
    console.print(f"evaluate it with: [bold]agent eval {run_dir}[/]")


# --- agent eval ---------------------------------------------------------------------------------------


@app.command("eval")
def evaluate(
    run_dir: Annotated[Path, typer.Argument(help="A run folder (or a checkpoint file).")],
    episodes: Annotated[int, typer.Option(help="Episodes to run.")] = 10,
    seed: Annotated[int, typer.Option(help="Seed of the first episode (training never uses these).")] = 12345,
    checkpoint: Annotated[str, typer.Option(help="best or last.")] = "best",
    device: Annotated[str, typer.Option(help="cpu, cuda or cuda:N.")] = "cpu",
    json_: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a table.")] = False,
) -> None:
    """Run the saved policy without exploration and report its returns."""
    with user_errors():
        if episodes <= 0:
            raise ConfigError(f"--episodes must be > 0, got {episodes}")
        check_device(device)
        agent = Agent.load(run_dir, which=checkpoint, device=device)
        result = agent.evaluate(episodes, seed)
    result["checkpoint"] = str(agent.loaded_from)
    if json_:
        print(json.dumps(result))
        return
    console.print(f"checkpoint: [cyan]{agent.loaded_from}[/] (env steps {agent.counters['env_steps']:,})")
    table = Table(title=f"{result['env_id']}: {episodes} episodes, seeds {seed}..{seed + episodes - 1}")
    for column in ("mean return", "std", "min", "max", "mean length"):
        table.add_column(column, justify="right")
    table.add_row(
        *(f"{result[k]:.1f}" for k in ("mean_return", "std_return", "min_return", "max_return", "mean_length"))
    )
    console.print(table)


if __name__ == "__main__":
    app()
