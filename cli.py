"""The `agent` command line: parse, validate, call the library, render with rich."""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Annotated, Any

import torch
import typer
from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

import agent as agent_package
from agent import Agent
from agent.checkpoint import CheckpointError
from agent.config import ConfigError, make_config, parse_overrides
from agent.dream import dream as run_dream
from agent.dream import dream_frames, dream_plot
from agent.quantize import QUANTIZERS
from agent.render import VIDEO_SUFFIXES, HalfBlocks, RenderError, write_png, write_video
from agent.trainer import TrainingError
from envs import EnvError

app = typer.Typer(
    help="A discrete world-model RL agent: Dreamer-style learning with straight-through latent codes.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
errors = Console(stderr=True, soft_wrap=True)  # an error stays on one line


DEBUG = {"on": False}


@app.callback()
def main(
    debug: Annotated[bool, typer.Option("--debug", help="Show full Python tracebacks on errors.")] = False,
) -> None:
    """Train, evaluate and inspect discrete world-model agents."""
    DEBUG["on"] = debug


@app.command()
def version() -> None:
    """Print the package version."""
    console.print(f"stdreamer {agent_package.__version__}")


def fail(message: str, code: int) -> typer.Exit:
    errors.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    return typer.Exit(code)


@contextlib.contextmanager
def user_errors():
    """Every error a user can cause ends the command with one line on stderr: exit code 2 for bad
    input, 1 for a failure while running (a full disk, divergence); --debug shows the traceback."""
    try:
        yield
    except (ConfigError, EnvError, CheckpointError, RenderError) as error:
        if DEBUG["on"]:
            raise
        raise fail(str(error), 2) from None
    except (OSError, TrainingError) as error:
        if DEBUG["on"]:
            raise
        raise fail(str(error), 1) from None
    except KeyboardInterrupt:
        raise fail("interrupted", 130) from None


def check_device(device: str) -> None:
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: no CUDA device is available (torch {torch.__version__})")
    if device == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("--device mps: no MPS device is available")


# --- agent train --------------------------------------------------------------------------------------

SHOWN = {
    "train/episode_return": "episode return (last 10)",
    "eval_return_mean": "eval return",
    "eval_return_best": "best eval return (confirmed)",
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
    env_id: Annotated[str | None, typer.Argument(help="A Gymnasium environment id [default: CartPole-v1].")] = None,
    steps: Annotated[int | None, typer.Option(help="Total env steps of the run (default: the preset's).")] = None,
    quantizer: Annotated[
        str | None, typer.Option("--quantizer", "-q", help=f"One of: {', '.join(QUANTIZERS)} [default: categorical].")
    ] = None,
    preset: Annotated[str | None, typer.Option(help="Sizes and schedule: default, tiny, large.")] = None,
    seed: Annotated[
        int | None, typer.Option(help="Random seed (runs are reproducible on the CPU) [default: 0].")
    ] = None,
    run_dir: Annotated[
        Path | None, typer.Option(help="Where to write the run (default runs/<env>-<q>-<time>).")
    ] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda or cuda:N [default: cpu].")] = None,
    obs: Annotated[
        str | None, typer.Option(help="state (the env's observations) or pixels (its rendered frames).")
    ] = None,
    envs_: Annotated[int | None, typer.Option("--envs", help="Environments stepped together [default: 1].")] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a config value: key=value (repeatable).")
    ] = None,
    resume: Annotated[
        Path | None, typer.Option(help="Continue the run in this folder from its last checkpoint.")
    ] = None,
    quiet: Annotated[bool, typer.Option(help="No live view: print one line per evaluation.")] = False,
) -> None:
    """Train an agent; writes config.json, metrics.jsonl, checkpoints and replay to the run folder."""
    with user_errors():
        overrides = parse_overrides(set_ or [])
        if steps is not None:
            if steps <= 0:
                raise ConfigError(f"--steps must be > 0, got {steps}")
            overrides["train.steps"] = steps
        if envs_ is not None:
            overrides["train.envs"] = envs_
        if obs is not None:
            overrides["obs"] = obs
        if resume is not None:
            fixed = {
                "ENV_ID": env_id,
                "--quantizer": quantizer,
                "--preset": preset,
                "--seed": seed,
                "--run-dir": run_dir,
            }
            given = [name for name, value in fixed.items() if value is not None]
            if given:
                raise ConfigError(f"{', '.join(given)} cannot be given with --resume: the run keeps its own")
            check_device(device or "cpu")
            agent = Agent.resume(resume, overrides, device=device)
            run_dir = resume
            changes = ", ".join(f"{k}={v}" for k, v in overrides.items()) or "none"
            console.print(
                f"resuming [cyan]{run_dir}[/] at env step {agent.counters['env_steps']:,} "
                f"(update {agent.counters['updates']:,}); changes: {changes}"
            )
        else:
            config = make_config(
                preset or "default", overrides, env_id=env_id or "CartPole-v1", quantizer=quantizer or "categorical",
                seed=seed or 0, device=device or "cpu",
            )  # fmt: skip
            check_device(config.device)
            run_dir = run_dir or default_run_dir(config.env_id, config.quantizer)
            check_run_dir(run_dir)
            agent = Agent.from_config(config)
        config = agent.config
        console.print(
            f"[bold]{config.env_id}[/] · quantizer [bold]{config.quantizer}[/] · seed {config.seed}"
            f" · {config.train.steps:,} env steps · run folder [cyan]{run_dir}[/]"
        )
        if quiet:
            agent.learn(None, run_dir, on_log=print_eval_line)
        else:
            view = TrainView(config.train.steps, agent.counters["env_steps"])
            with view.live:
                agent.learn(None, run_dir, on_log=view)
    print_summary(agent, run_dir)


def check_run_dir(run_dir: Path) -> None:
    """A new run needs a folder it can write, without a run in it already."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"{run_dir} is a file, not a folder")
    if (run_dir / "config.json").exists():
        raise ConfigError(
            f"{run_dir} already holds a run; resume it with --resume {run_dir}, or choose another --run-dir"
        )
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise ConfigError(f"cannot write to the run folder {run_dir}: {error.strerror or error}") from None


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
        table.add_row("best eval return (confirmed)", f"{evals[-1]['eval_return_best']:.1f}")
    table.add_row("run folder", str(run_dir))
    console.print(table)
    console.print(f"evaluate it with: [bold]agent eval {run_dir}[/]")


# --- agent eval ---------------------------------------------------------------------------------------


def checkpoint_line(agent: Agent) -> str:
    return f"checkpoint: [cyan]{agent.loaded_from}[/] (env steps {agent.counters['env_steps']:,})"


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
    console.print(checkpoint_line(agent))
    table = Table(title=f"{result['env_id']}: {episodes} episodes, seeds {seed}..{seed + episodes - 1}")
    for column in ("mean return", "std", "min", "max", "mean length"):
        table.add_column(column, justify="right")
    table.add_row(
        *(f"{result[k]:.1f}" for k in ("mean_return", "std_return", "min_return", "max_return", "mean_length"))
    )
    console.print(table)


# --- agent watch --------------------------------------------------------------------------------------


def episode_line(number: int, episode) -> str:
    return f"episode {number + 1}: return {episode.total_reward:.1f}, length {episode.length}, {episode.ending}"


@app.command()
def watch(
    run_dir: Annotated[Path, typer.Argument(help="A run folder (or a checkpoint file).")],
    episodes: Annotated[int, typer.Option(help="Episodes to play.")] = 1,
    out: Annotated[Path | None, typer.Option(help="Video file to write (.mp4 or .gif).")] = None,
    fps: Annotated[float, typer.Option(help="Frames per second of the video / the live view.")] = 30.0,
    terminal: Annotated[bool, typer.Option(help="Play live in this terminal (half-block pixels).")] = False,
    window: Annotated[bool, typer.Option(help="Play in the environment's own window (needs a display).")] = False,
    seed: Annotated[int, typer.Option(help="Seed of the first episode.")] = 12345,
    checkpoint: Annotated[str, typer.Option(help="best or last.")] = "best",
    max_steps: Annotated[int | None, typer.Option(help="Stop an episode after this many steps.")] = None,
) -> None:
    """Play the saved policy and show it: a video file (default), the terminal, or a window."""
    with user_errors():
        if episodes <= 0 or fps <= 0:
            raise ConfigError(f"--episodes and --fps must be > 0, got {episodes} and {fps}")
        if terminal and window:
            raise ConfigError("choose one of --terminal and --window")
        if out is not None and out.suffix.lower() not in VIDEO_SUFFIXES:
            raise ConfigError(f"{out}: unsupported video format {out.suffix or '(none)'}; use .mp4 or .gif")
        if window and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
            raise ConfigError("--window needs a display, and none is set (DISPLAY); use --terminal or --out instead")
        agent = Agent.load(run_dir, which=checkpoint)
        console.print(checkpoint_line(agent))
        if window:
            played = agent.play(episodes, seed, render="human", max_steps=max_steps)
        elif terminal:
            played = play_in_terminal(agent, episodes, seed, fps, max_steps)
        else:
            played = agent.play(episodes, seed, render="rgb_array", max_steps=max_steps)
            frames = [frame for episode in played for frame in episode.frames]
            out = out or default_video_path(agent, run_dir)
            write_video(out, frames, fps)
    for number, episode in enumerate(played):
        console.print(episode_line(number, episode))
    if out is not None:
        console.print(f"video: [cyan]{out}[/] ({sum(len(e.frames) for e in played)} frames at {fps:g} fps)")


def default_video_path(agent: Agent, run_dir: Path) -> Path:
    folder = (run_dir if run_dir.is_dir() else run_dir.parent) / "videos"
    return folder / f"{agent.loaded_from.stem}-{time.strftime('%Y%m%d-%H%M%S')}.{'mp4' if has_ffmpeg() else 'gif'}"


def has_ffmpeg() -> bool:
    try:
        import imageio_ffmpeg  # noqa: F401

        return True
    except ImportError:
        return False


def play_in_terminal(agent: Agent, episodes: int, seed: int, fps: float, max_steps: int | None):
    """Live playback: each frame drawn with half-block characters, fitted to the terminal."""
    width, height = console.size.width, max(4, console.size.height - 3)
    with Live(console=console, refresh_per_second=fps, transient=False) as live:

        def show(frame, number, step, total):
            caption = f"episode {number + 1} · step {step} · return {total:.1f}"
            live.update(Group(HalfBlocks(frame, width, height), caption))
            time.sleep(1 / fps)

        return agent.play(episodes, seed, render="rgb_array", max_steps=max_steps, on_frame=show)


# --- agent dream --------------------------------------------------------------------------------------


@app.command()
def dream(
    run_dir: Annotated[Path, typer.Argument(help="A run folder (or a checkpoint file).")],
    context: Annotated[int, typer.Option(help="Real steps the model sees before it imagines.")] = 5,
    horizon: Annotated[int, typer.Option(help="Steps it imagines with the actions actually taken.")] = 45,
    seed: Annotated[int, typer.Option(help="Seed of the real episode.")] = 12345,
    out: Annotated[Path | None, typer.Option(help="Picture to write: .png (vectors) or .gif/.mp4 (images).")] = None,
    checkpoint: Annotated[str, typer.Option(help="best or last.")] = "best",
    json_: Annotated[bool, typer.Option("--json", help="Print the errors as one JSON object.")] = False,
) -> None:
    """What the world model imagines beside what really happened, with its error per imagined step."""
    with user_errors():
        if context < 1 or horizon < 1:
            raise ConfigError(f"--context and --horizon must be >= 1, got {context} and {horizon}")
        agent = Agent.load(run_dir, which=checkpoint)
        images = len(agent.obs_shape) == 3
        allowed = VIDEO_SUFFIXES if images else (".png",)
        if out is not None and out.suffix.lower() not in allowed:
            raise ConfigError(f"{out}: unsupported format {out.suffix or '(none)'} here; use {' or '.join(allowed)}")
        (episode,) = agent.play(1, seed)
        try:
            result = run_dream(agent, episode, context, horizon)
        except ValueError as error:
            raise ConfigError(str(error)) from None
        folder = (run_dir if run_dir.is_dir() else run_dir.parent) / "dreams"
        stamp = time.strftime("%Y%m%d-%H%M%S")
        if images:
            out = write_video(out or folder / f"dream-{stamp}.gif", dream_frames(result), fps=8)
        else:
            out = write_png(out or folder / f"dream-{stamp}.png", dream_plot(result))
    summary = {k: v for k, v in result.items() if k != "first_window"}
    summary |= {"picture": str(out), "checkpoint": str(agent.loaded_from)}
    if json_:
        print(json.dumps(summary))
        return
    console.print(checkpoint_line(agent))
    table = Table(title=f"open-loop prediction: {context} real steps, then imagined ({result['windows']} windows)")
    for column in ("imagined step", "obs MSE", "|reward error|", "|continue error|"):
        table.add_column(column, justify="right")
    for row in result["errors"]:
        table.add_row(str(row["step"]), f"{row['obs_mse']:.4g}", f"{row['reward_abs_error']:.3f}",
                      f"{row['cont_abs_error']:.3f}")  # fmt: skip
    console.print(table)
    console.print(
        f"reconstruction MSE (context) {result['reconstruction_mse']:.4g} · code usage over the episode: "
        f"{result['code_usage']:.1%} of {result['alphabet_size']} symbols, perplexity {result['code_perplexity']:.2f}"
    )
    console.print(f"picture: [cyan]{out}[/]")


if __name__ == "__main__":
    app()
