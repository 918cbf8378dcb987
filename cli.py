"""The `agent` command line: parse, validate, call the library, render with rich.

The library (and torch, which takes seconds to import) is imported inside the commands, so that
`agent --help` answers at once.
"""

from __future__ import annotations

import collections
import contextlib
import json
import shlex
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.progress_bar import ProgressBar
from rich.table import Table

if TYPE_CHECKING:
    from agent import Agent, Trainer

app = typer.Typer(
    help="A discrete world-model RL agent: Dreamer-style learning with straight-through latent codes.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    rich_markup_mode=None,  # help texts are plain: "[...]" in them is text, not markup
)
console = Console()
errors = Console(stderr=True, soft_wrap=True)  # an error stays on one line

# names for the help texts (tests check them against agent.quantize.QUANTIZERS and agent.config.PRESETS)
QUANTIZER_NAMES = "categorical (default), round, fsq, binary, gumbel, reinmax, gumbel_rao, vq"
PRESET_NAMES = "default, tiny (smoke runs), xs (sheeprl's DreamerV3-XS layout), large (GPU)"


def package_version() -> str:
    try:
        return version("stdreamer")
    except PackageNotFoundError:  # running from a checkout that is not installed
        from agent import __version__

        return __version__


def show_version(value: bool) -> None:
    if value:
        console.print(f"stdreamer {package_version()}")
        raise typer.Exit()


@app.callback()
def main(
    debug: Annotated[bool, typer.Option("--debug", help="Show full Python tracebacks on errors.")] = False,
    version_: Annotated[
        bool, typer.Option("--version", callback=show_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Train, evaluate and inspect discrete world-model agents."""


@app.command("version")
def version_command() -> None:
    """Print the package version."""
    console.print(f"stdreamer {package_version()}")


def fail(message: str, code: int) -> typer.Exit:
    errors.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    return typer.Exit(code)


def exit_code(error: BaseException) -> int | None:
    """2 for bad input, 1 for a failure while running (a full disk, divergence), None: not a user error."""
    from agent.checkpoint import CheckpointError
    from agent.config import ConfigError
    from agent.render import RenderError
    from agent.runs import RunFolderError
    from agent.sweep import SweepError
    from agent.trainer import TrainingError
    from envs import EnvError

    if isinstance(error, ConfigError | EnvError | CheckpointError | RenderError | RunFolderError | SweepError):
        return 2
    if isinstance(error, OSError | TrainingError):
        return 1
    return None


@contextlib.contextmanager
def user_errors(ctx: typer.Context):
    """Every error a user can cause ends the command with one line on stderr (see exit_code); --debug
    shows the traceback instead."""
    debug = ctx.find_root().params.get("debug", False)
    try:
        yield
    except KeyboardInterrupt:
        if debug:
            raise
        raise fail("interrupted", 130) from None
    except Exception as error:
        code = exit_code(error)
        if code is None or debug:
            raise
        raise fail(str(error), code) from None


def check_positive(**values: float | None) -> None:
    from agent.config import ConfigError

    for name, value in values.items():
        if value is not None and value <= 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be > 0, got {value:g}")


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
    "actor/return_scale": "return scale",
}


class TrainView:
    """The live view of `agent train`: a progress bar, the phase, rates over the last 30 seconds, an ETA
    and the latest metrics. Rich redraws it four times a second from its own thread, reading the
    trainer's counters, so it moves during prefill and during bursts of updates too."""

    window = 30.0  # seconds of history behind the rates

    def __init__(self, trainer: Trainer):
        self.trainer = trainer
        self.samples: collections.deque[tuple[float, int, int]] = collections.deque()
        self.last: dict[str, Any] = {}

    def on_log(self, line: dict[str, Any]) -> None:
        self.last = {**self.last, **line}

    def rates(self) -> tuple[float, float, float] | None:
        """(env steps/s, updates/s, seconds covered) since the oldest sample of the window."""
        (t0, s0, u0), (t1, s1, u1) = self.samples[0], self.samples[-1]
        return ((s1 - s0) / (t1 - t0), (u1 - u0) / (t1 - t0), t1 - t0) if t1 - t0 >= 1.0 else None

    def __rich__(self) -> Group:
        counters, cfg = self.trainer.counters, self.trainer.agent.config
        steps, total, now = counters["env_steps"], cfg.train.steps, time.monotonic()
        prefill = steps < cfg.train.prefill
        if prefill:  # random actions: far faster than training, so they say nothing of the ETA
            self.samples.clear()
        self.samples.append((now, steps, counters["updates"]))
        while now - self.samples[0][0] > self.window:
            self.samples.popleft()
        rates = self.rates()
        if prefill:
            eta = "after prefill"
        elif rates is None or rates[0] <= 0 or rates[2] < 5:
            eta = "measuring"
        else:
            eta = time.strftime("%H:%M:%S", time.gmtime((total - steps) / rates[0]))
        phase = "prefill (random actions)" if prefill else "training"
        bar = Table.grid(padding=(0, 1))
        bar.add_row(ProgressBar(total=total, completed=steps, width=30), f"{steps:,}/{total:,} env steps",
                    f"eta {eta}")  # fmt: skip
        table = Table(show_header=False, box=None, pad_edge=False)
        table.add_column(style="dim")
        table.add_column(justify="right")
        table.add_row("phase", phase)
        table.add_row("updates", f"{counters['updates']:,}")
        if rates is not None:
            table.add_row("env steps / s (last 30 s)", f"{rates[0]:.1f}")
            table.add_row("updates / s (last 30 s)", f"{rates[1]:.2f}")
        for key, label in SHOWN.items():
            if key in self.last:
                table.add_row(label, f"{self.last[key]:.3f}" if "/" in key else f"{self.last[key]:.1f}")
        return Group(bar, table)


def plain_line(line: dict[str, Any], total: int) -> str:
    """One log line as text, for output that is not a terminal (a file, a pipe, a CI log)."""
    parts = [f"step {line['step']:,}/{total:,}", f"{line['time/seconds']:.0f} s", f"{line['time/sps']:.1f} env steps/s",
             f"{line['updates']:,} updates"]  # fmt: skip
    if "train/episode_return" in line:
        parts.append(f"episode return {line['train/episode_return']:.1f}")
    if "eval_return_mean" in line:
        parts.append(f"eval {line['eval_return_mean']:.1f} (best {line['eval_return_best']:.1f})")
    return " · ".join(parts)


def default_run_dir(env_id: str, quantizer: str) -> Path:
    from agent.runs import safe_name

    return Path("runs") / f"{safe_name(env_id)}-{quantizer}-{time.strftime('%Y%m%d-%H%M%S')}"


def resume_command(run_dir: Path) -> str:
    return f"agent train --resume {shlex.quote(str(run_dir))}"


@app.command()
def train(
    ctx: typer.Context,
    env_id: Annotated[
        str | None, typer.Argument(help="A Gymnasium id, or module:EnvId for a custom env (default: CartPole-v1).")
    ] = None,
    steps: Annotated[
        int | None, typer.Option(help="Total env steps of the run (default: the preset's, 15000).")
    ] = None,
    quantizer: Annotated[str | None, typer.Option("--quantizer", "-q", help=f"One of: {QUANTIZER_NAMES}.")] = None,
    preset: Annotated[str | None, typer.Option(help=f"Sizes and schedule: {PRESET_NAMES}.")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed; runs repeat exactly on the CPU (default: 0).")] = None,
    run_dir: Annotated[
        Path | None, typer.Option(help="Where to write the run (default: runs/<env>-<q>-<time>).")
    ] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:N or mps (default: cpu).")] = None,
    threads: Annotated[
        int | None, typer.Option(help="torch threads; 0: one per core (default: 1, see README: Threads).")
    ] = None,
    obs: Annotated[
        str | None, typer.Option(help="state (the env's observations) or pixels (its rendered frames).")
    ] = None,
    envs_: Annotated[int | None, typer.Option("--envs", help="Environments stepped together (default: 1).")] = None,
    eval_every: Annotated[
        int | None, typer.Option(help="Env steps between evaluations; 0: never (default: 1000).")
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set", metavar="KEY=VALUE", help="Override a config value: key=value (repeatable; see agent config)."
        ),
    ] = None,
    resume: Annotated[
        Path | None, typer.Option(help="Continue the run in this folder from its last checkpoint.")
    ] = None,
    quiet: Annotated[bool, typer.Option(help="No live view: print one line per evaluation.")] = False,
    tensorboard: Annotated[
        bool, typer.Option("--tensorboard", help="Also write the metrics to <run>/tb for TensorBoard.")
    ] = False,
) -> None:
    """Train an agent; writes config.json, metrics.jsonl, checkpoints and replay to the run folder."""
    with user_errors(ctx):
        from agent import Trainer
        from agent.config import ConfigError, parse_overrides

        overrides = parse_overrides(set_ or [])
        check_positive(steps=steps)
        options = {"train.steps": steps, "train.envs": envs_, "obs": obs, "threads": threads,
                   "train.eval_every": eval_every, "train.tensorboard": tensorboard or None}  # fmt: skip
        overrides.update({key: value for key, value in options.items() if value is not None})
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
            trainer = Trainer.resume(resume, overrides, device=device)
            changes = ", ".join(f"{k}={v}" for k, v in overrides.items()) or "none"
            if trainer.restarted:
                console.print(
                    f"{escape(str(resume))} has no checkpoint yet: starting the run again from its config.json"
                )
            elif not trainer.finished:
                console.print(
                    f"resuming [cyan]{escape(str(resume))}[/] at env step {trainer.counters['env_steps']:,} "
                    f"(update {trainer.counters['updates']:,}); changes: {escape(changes)}"
                )
        else:
            from agent import Agent
            from agent.agent import make_env_config

            config = make_env_config(
                preset or "default", overrides, env_id=env_id or "CartPole-v1", quantizer=quantizer or "categorical",
                seed=seed or 0, device=device or "cpu",
            )  # fmt: skip

            trainer = Trainer(Agent.from_config(config), run_dir or default_run_dir(config.env_id, config.quantizer))
        with trainer:
            run(trainer, quiet)


def run(trainer: Trainer, quiet: bool) -> None:
    """Train to the run's budget with a live view (a terminal), plain lines (not a terminal) or one line
    per evaluation (--quiet); then a summary. Ctrl-C: a checkpoint and the command that resumes."""
    from agent import TrainingInterrupted

    config, run_dir = trainer.agent.config, trainer.run_dir
    total = config.train.steps
    if trainer.finished:
        console.print(
            f"nothing to do: {run_dir} has reached its {total:,} env steps; "
            f"extend it with {resume_command(run_dir)} --steps N (N > {total:,})",
            markup=False,
        )
        return
    console.print(f"[bold]{escape(config.env_id)}[/] · {config.quantizer} · seed {config.seed} · {total:,} env steps")
    console.print(f"run folder: [cyan]{escape(str(run_dir))}[/]")
    last_eval: dict[str, Any] = {}

    def logged(show: Any) -> Any:
        def on_log(line: dict[str, Any]) -> None:
            if "eval_return_mean" in line:
                last_eval.update(line)
            show(line)

        return on_log

    try:
        if quiet:
            trainer.learn(on_log=logged(print_eval_line))
        elif not console.is_terminal:
            trainer.learn(on_log=logged(lambda line: console.print(plain_line(line, total), highlight=False)))
        else:
            view = TrainView(trainer)
            with Live(view, console=console, refresh_per_second=4):
                trainer.learn(on_log=logged(view.on_log))
    except TrainingInterrupted as stop:
        errors.print(
            f"interrupted at env step {stop.step:,}; checkpoint written. Resume with: {resume_command(run_dir)}",
            highlight=False,
            markup=False,
        )
        raise typer.Exit(130) from None
    except KeyboardInterrupt:
        errors.print(f"aborted; the run keeps its last checkpoint. Resume with: {resume_command(run_dir)}",
                     highlight=False, markup=False)  # fmt: skip
        raise typer.Exit(130) from None
    print_summary(trainer, last_eval)


def print_eval_line(line: dict[str, Any]) -> None:
    if "eval_return_mean" in line:
        console.print(
            f"step {line['step']:>8,}  eval return {line['eval_return_mean']:8.1f}  "
            f"best {line['eval_return_best']:8.1f}  {line['time/seconds']:7.1f} s",
            highlight=False,
        )


def print_summary(trainer: Trainer, last_eval: dict[str, Any]) -> None:
    run_dir = trainer.run_dir
    table = Table(title="summary", show_header=False)
    table.add_row("env steps", f"{trainer.counters['env_steps']:,}")
    table.add_row("updates", f"{trainer.counters['updates']:,}")
    table.add_row("episodes", f"{trainer.counters['episodes']:,}")
    table.add_row("wall-clock", f"{trainer.seconds():.1f} s")
    if last_eval:
        table.add_row("last eval return", f"{last_eval['eval_return_mean']:.1f}")
        table.add_row("best eval return (confirmed)", f"{last_eval['eval_return_best']:.1f}")
    table.add_row("run folder", escape(str(run_dir)))
    console.print(table)
    console.print(f"evaluate it with: [bold]agent eval {escape(shlex.quote(str(run_dir)))}[/]")


# --- agent config -------------------------------------------------------------------------------------


@app.command("config")
def show_config(
    ctx: typer.Context,
    env_id: Annotated[str, typer.Argument(help="A Gymnasium id; it is made once to read its spaces.")] = "CartPole-v1",
    quantizer: Annotated[str, typer.Option("--quantizer", "-q", help=f"One of: {QUANTIZER_NAMES}.")] = "categorical",
    preset: Annotated[str, typer.Option(help=f"Sizes and schedule: {PRESET_NAMES}.")] = "default",
    set_: Annotated[
        list[str] | None, typer.Option("--set", metavar="KEY=VALUE", help="Override a config value: key=value.")
    ] = None,
    json_: Annotated[bool, typer.Option("--json", help="Print the config as JSON (as config.json holds it).")] = False,
) -> None:
    """The resolved config of a preset and overrides: every key that --set takes, its value and its meaning."""
    with user_errors(ctx):
        from agent.agent import make_env_config
        from agent.config import describe, parse_overrides

        config = make_env_config(preset, parse_overrides(set_ or []), env_id=env_id, quantizer=quantizer)
    if json_:
        print(config.to_json())
        return
    table = Table(title=f"config: preset {preset}, quantizer {quantizer}")
    for column in ("key (--set key=value)", "value", "meaning"):
        table.add_column(column)
    for key, value, doc in describe(config):
        table.add_row(key, escape(json.dumps(value)), escape(doc))
    console.print(table)


# --- agent eval ---------------------------------------------------------------------------------------

DEVICE_HELP = "cpu, cuda, cuda:N or mps."
THREADS_HELP = "torch threads (0: one per core)."


def load_agent(run_dir: Path, checkpoint: str, device: str, threads: int) -> Agent:
    """The policy of a run folder or checkpoint file, on `device`, with `threads` torch threads."""
    from agent import Agent
    from agent.config import ConfigError
    from agent.trainer import set_threads

    if threads < 0:
        raise ConfigError(f"--threads must be >= 0, got {threads}")
    set_threads(threads)
    return Agent.load(run_dir, which=checkpoint, device=device)


def print_checkpoint(agent: Agent) -> None:
    console.print(
        f"checkpoint: [cyan]{escape(str(agent.loaded_from))}[/] (env steps {agent.trained_env_steps:,})",
        highlight=False,
    )


@app.command("eval")
def evaluate(
    ctx: typer.Context,
    run_dir: Annotated[Path, typer.Argument(help="A run folder (or a checkpoint file).")],
    episodes: Annotated[int, typer.Option(help="Episodes to run.")] = 10,
    seed: Annotated[int, typer.Option(help="Seed of the first episode (training never uses these).")] = 12345,
    checkpoint: Annotated[str, typer.Option(help="best or last.")] = "best",
    sample: Annotated[
        bool, typer.Option(help="Sample actions from the policy (DreamerV3's evaluation), not its most likely ones.")
    ] = False,
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "cpu",
    threads: Annotated[int, typer.Option(help=THREADS_HELP)] = 1,
    json_: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a table.")] = False,
) -> None:
    """Run the saved policy without exploration (or sampling from it: --sample) and report its returns."""
    with user_errors(ctx):
        from agent.evaluate import evaluate as evaluate_policy

        check_positive(episodes=episodes)
        agent = load_agent(run_dir, checkpoint, device, threads)
        result = evaluate_policy(agent, episodes, seed, sample=sample)
    result["checkpoint"] = str(agent.loaded_from)
    if json_:
        print(json.dumps(result))
        return
    print_checkpoint(agent)
    how = "sampled actions" if sample else "most likely actions"
    table = Table(title=f"{escape(result['env_id'])}: {episodes} episodes, seeds {seed}..{seed + episodes - 1}, {how}")
    for column in ("mean return", "std", "min", "max", "mean length"):
        table.add_column(column, justify="right")
    table.add_row(
        *(f"{result[k]:.1f}" for k in ("mean_return", "std_return", "min_return", "max_return", "mean_length"))
    )
    console.print(table)
    if result["action_share"] is not None:
        shares = ", ".join(f"{i}: {share:.0%}" for i, share in enumerate(result["action_share"]))
        console.print(f"actions taken (share of steps): {shares}")


# --- agent watch --------------------------------------------------------------------------------------


def output_folder(run_dir: Path, name: str) -> Path:
    """Where pictures of a run go: <run>/<name>, beside the checkpoint when given a file."""
    return (run_dir if run_dir.is_dir() else run_dir.parent) / name


@app.command()
def watch(
    ctx: typer.Context,
    run_dir: Annotated[Path, typer.Argument(help="A run folder (or a checkpoint file).")],
    episodes: Annotated[int, typer.Option(help="Episodes to play.")] = 1,
    out: Annotated[Path | None, typer.Option(help="Video file to write (.mp4 or .gif).")] = None,
    fps: Annotated[float, typer.Option(help="Frames per second of the video / the live view.")] = 30.0,
    terminal: Annotated[bool, typer.Option(help="Play live in this terminal (half-block pixels).")] = False,
    window: Annotated[bool, typer.Option(help="Play in the environment's own window (needs a display).")] = False,
    seed: Annotated[int, typer.Option(help="Seed of the first episode.")] = 12345,
    checkpoint: Annotated[str, typer.Option(help="best or last.")] = "best",
    max_steps: Annotated[int | None, typer.Option(help="Stop an episode after this many steps.")] = None,
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "cpu",
    threads: Annotated[int, typer.Option(help=THREADS_HELP)] = 1,
) -> None:
    """Play the saved policy and show it: a video file (default), the terminal, or a window."""
    with user_errors(ctx):
        import envs
        from agent.config import ConfigError
        from agent.play import play
        from agent.render import VIDEO_SUFFIXES, write_video

        check_positive(episodes=episodes, fps=fps, max_steps=max_steps)
        if terminal and window:
            raise ConfigError("choose one of --terminal and --window")
        if out is not None and out.suffix.lower() not in VIDEO_SUFFIXES:
            raise ConfigError(f"{out}: unsupported video format {out.suffix or '(none)'}; use .mp4 or .gif")
        if window and not envs.has_display():
            raise ConfigError("--window needs a display, and none is set (DISPLAY); use --terminal or --out instead")
        agent = load_agent(run_dir, checkpoint, device, threads)
        print_checkpoint(agent)
        if window:
            played = play(agent, episodes, seed, render="human", max_steps=max_steps)
        elif terminal:
            played = play_in_terminal(agent, episodes, seed, fps, max_steps)
        else:
            played = play(agent, episodes, seed, render="rgb_array", max_steps=max_steps)
            frames = [frame for episode in played for frame in episode.frames]
            out = out or default_video_path(agent, run_dir)
            write_video(out, frames, fps)
    for number, episode in enumerate(played):
        console.print(
            f"episode {number + 1}: return {episode.total_reward:.1f}, length {episode.length}, {episode.ending}"
        )
    if out is not None:
        console.print(
            f"video: [cyan]{escape(str(out))}[/] ({sum(len(e.frames) for e in played)} frames at {fps:g} fps)"
        )


def default_video_path(agent: Agent, run_dir: Path) -> Path:
    from agent.render import has_ffmpeg

    suffix = "mp4" if has_ffmpeg() else "gif"
    return output_folder(run_dir, "videos") / f"{agent.loaded_from.stem}-{time.strftime('%Y%m%d-%H%M%S')}.{suffix}"


def play_in_terminal(agent: Agent, episodes: int, seed: int, fps: float, max_steps: int | None):
    """Live playback: each frame drawn with half-block characters, fitted to the terminal."""
    from agent.play import play
    from agent.render import HalfBlocks

    width, height = console.size.width, max(4, console.size.height - 3)
    with Live(console=console, refresh_per_second=fps, transient=False) as live:

        def show(frame, number, step, total):
            caption = f"episode {number + 1} · step {step} · return {total:.1f}"
            live.update(Group(HalfBlocks(frame, width, height, console.color_system), caption))
            time.sleep(1 / fps)

        return play(agent, episodes, seed, render="rgb_array", max_steps=max_steps, on_frame=show)


# --- agent dream --------------------------------------------------------------------------------------


@app.command()
def dream(
    ctx: typer.Context,
    run_dir: Annotated[Path, typer.Argument(help="A run folder (or a checkpoint file).")],
    context: Annotated[int, typer.Option(help="Real steps the model sees before it imagines.")] = 5,
    horizon: Annotated[int, typer.Option(help="Steps it imagines with the actions actually taken.")] = 45,
    seed: Annotated[int, typer.Option(help="Seed of the real episode.")] = 12345,
    out: Annotated[Path | None, typer.Option(help="Picture to write: .png (vectors) or .gif/.mp4 (images).")] = None,
    checkpoint: Annotated[str, typer.Option(help="best or last.")] = "best",
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "cpu",
    threads: Annotated[int, typer.Option(help=THREADS_HELP)] = 1,
    json_: Annotated[bool, typer.Option("--json", help="Print the errors as one JSON object.")] = False,
) -> None:
    """What the world model imagines beside what really happened, with its error per imagined step."""
    with user_errors(ctx):
        from agent.config import ConfigError
        from agent.dream import dream as run_dream
        from agent.dream import dream_frames
        from agent.play import play
        from agent.plots import dream_figure, save_figure
        from agent.render import VIDEO_SUFFIXES, write_video

        check_positive(context=context, horizon=horizon)
        agent = load_agent(run_dir, checkpoint, device, threads)
        images = len(agent.obs_shape) == 3
        allowed = VIDEO_SUFFIXES if images else (".png",)
        if out is not None and out.suffix.lower() not in allowed:
            raise ConfigError(f"{out}: unsupported format {out.suffix or '(none)'} here; use {' or '.join(allowed)}")
        (episode,) = play(agent, 1, seed)
        try:
            result = run_dream(agent, episode, context, horizon)
        except ValueError as error:
            raise ConfigError(str(error)) from None
        folder, stamp = output_folder(run_dir, "dreams"), time.strftime("%Y%m%d-%H%M%S")
        if images:
            out = write_video(out or folder / f"dream-{stamp}.gif", dream_frames(result), fps=8)
        else:
            title = (f"{agent.config.env_id} · {agent.config.quantizer} · {agent.loaded_from.name} "
                     f"at {agent.trained_env_steps:,} env steps · episode seed {seed}")  # fmt: skip
            out = save_figure(dream_figure(result, title), out or folder / f"dream-{stamp}.png")
    summary = {k: v for k, v in result.items() if k != "first_window"}
    summary |= {"picture": str(out), "checkpoint": str(agent.loaded_from)}
    if json_:
        print(json.dumps(summary))
        return
    print_checkpoint(agent)
    if result["horizon"] < result["horizon_requested"]:
        console.print(
            f"note: the episode has {episode.length + 1} observations, so --horizon {result['horizon_requested']} "
            f"was shortened to {result['horizon']} (context {context} + horizon must fit in it)"
        )
    windows = result["windows"]
    table = Table(
        title=f"open-loop prediction: {context} real steps, then {result['horizon']} imagined "
        f"(mean over {windows} window{'s' if windows != 1 else ''} of the episode)"
    )
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
    console.print(f"picture: [cyan]{escape(str(out))}[/]")


# --- agent sweep --------------------------------------------------------------------------------------


@app.command()
def sweep(
    ctx: typer.Context,
    env_ids: Annotated[list[str] | None, typer.Argument(help="Gymnasium ids (default: CartPole-v1).")] = None,
    quantizer: Annotated[str, typer.Option("--quantizer", "-q", help="Comma-separated quantizers.")] = "categorical",
    seeds: Annotated[str, typer.Option(help="A count (3: seeds 0, 1, 2) or a comma-separated list.")] = "1",
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", metavar="KEY=V1,V2", help="A value for every run, or values to sweep (repeatable)."),
    ] = None,
    steps: Annotated[int | None, typer.Option(help="Env steps of every run (default: the preset's).")] = None,
    preset: Annotated[str, typer.Option(help=f"Sizes and schedule: {PRESET_NAMES}.")] = "default",
    dir_: Annotated[Path | None, typer.Option("--dir", help="The sweep's folder (required).")] = None,
    address: Annotated[str | None, typer.Option(help="A Ray cluster to run on (default: this machine).")] = None,
    cpus_per_run: Annotated[int, typer.Option(help="CPUs (and torch threads) of every run.")] = 1,
) -> None:
    """A grid of runs (env ids x quantizers x seeds x swept values) trained in parallel on Ray; running
    the same command again continues unfinished runs and skips finished ones."""
    with user_errors(ctx):
        from agent.config import ConfigError, parse_overrides
        from agent.sweep import Grid, import_ray, open_sweep, run_sweep

        import_ray()
        if dir_ is None:
            raise ConfigError("--dir is required: the sweep's folder (the same command with it continues the sweep)")
        check_positive(steps=steps, cpus_per_run=cpus_per_run)
        grid = Grid.from_options(env_ids or ["CartPole-v1"], quantizer, seeds, parse_overrides(set_ or []), steps,
                                 preset)  # fmt: skip
        opened = open_sweep(dir_, grid)  # every config and env id checked before anything starts
        where = address or "this machine"
        console.print(f"sweep of {len(opened.runs)} runs in [cyan]{escape(str(dir_))}[/] on Ray ({escape(where)})")
        if opened.changed_defaults:
            console.print(f"its runs keep the configs recorded when it began; today's defaults differ in: "
                          f"{'; '.join(opened.changed_defaults)}", highlight=False, markup=False)  # fmt: skip
        view = SweepView(dir_, opened.runs)
        try:
            started = time.perf_counter()
            with Live(view, console=console, refresh_per_second=1, transient=not console.is_terminal):
                results = run_sweep(opened, address, cpus_per_run, on_update=view.update)
            wall = time.perf_counter() - started
        except KeyboardInterrupt:
            results = None
    if results is None or any(result["status"] == "stopped" for result in results.values()):
        if results is not None:
            view.update(results)
            console.print(view.table())
        errors.print(f"stopped; the runs keep their checkpoints. Continue with the same command (--dir {dir_})",
                     highlight=False, markup=False)  # fmt: skip
        raise typer.Exit(130)
    view.update(results)
    console.print(view.table())
    trained = [result["task_seconds"] for result in results.values() if "task_seconds" in result]
    if trained:  # the parallel speed-up: the runs' own training time against the sweep's wall-clock
        console.print(f"trained {len(trained)} runs in {wall:,.0f} s (Ray's start included); their own times "
                      f"add up to {sum(trained):,.0f} s ({sum(trained) / wall:.2f}x in parallel)")  # fmt: skip
    failed = [name for name, result in results.items() if result["status"] == "failed"]
    if failed:
        errors.print(f"error: {len(failed)} of {len(results)} runs failed (see the table)", highlight=False,
                     markup=False)  # fmt: skip
        raise typer.Exit(1)


class SweepView:
    """A table of a sweep's runs: state, env steps, last and best evaluation; redrawn as runs progress."""

    def __init__(self, folder: Path, runs: list):
        self.folder, self.runs = folder, runs
        self.results: dict[str, dict] = {}

    def update(self, results: dict[str, dict]) -> None:
        self.results = dict(results)

    def table(self) -> Table:
        from agent.runs import RunFolderError, read_run

        table = Table(title=f"sweep {escape(str(self.folder))}")
        for column in ("run", "state", "env steps", "last eval", "best eval"):
            table.add_column(column, justify="left" if column in ("run", "state") else "right")
        for run in self.runs:
            state, steps, last, best = "queued", "—", "—", "—"
            try:
                summary = read_run(self.folder / run.name).summary()
                state = "running" if summary["status"] == "running" else state
                steps = f"{max(summary['env_steps'], summary['logged_steps']):,}/{summary['total_steps']:,}"
                if summary["last_eval"] is not None:
                    last, best = f"{summary['last_eval']:.1f}", f"{summary['best_eval']:.1f}"
            except RunFolderError:
                pass
            result = self.results.get(run.name)
            if result is not None:
                state = result["status"] + (f": {result['error']}" if result.get("error") else "")
            table.add_row(escape(run.name), escape(state), steps, last, best)
        return table

    def __rich__(self) -> Table:
        return self.table()


# --- agent runs, plot, compare -----------------------------------------------------------------------


def format_age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds:.0f} s"


def readable_runs(paths: list[Path]) -> list:
    """The readable runs under `paths`; a warning line for each unreadable folder; ConfigError if none."""
    from agent.config import ConfigError
    from agent.runs import read_runs

    infos, unreadable = read_runs(paths)
    for path, why in unreadable:
        errors.print(f"warning: left out {path}: {why}", highlight=False, markup=False)
    if not infos:
        raise ConfigError(f"no readable run folders under {', '.join(map(str, paths))}")
    return infos


@app.command("runs")
def list_runs(
    ctx: typer.Context,
    folder: Annotated[Path, typer.Argument(help="A folder of runs (searched below), or a run folder.")] = Path("runs"),
    json_: Annotated[bool, typer.Option("--json", help="Print one JSON list instead of a table.")] = False,
) -> None:
    """A table of runs: env, quantizer, seed, env steps done / total, best and last evaluation, state, age."""
    with user_errors(ctx):
        from agent.runs import read_runs

        infos, unreadable = read_runs([folder])
    rows = [info.summary() for info in infos] + [{"run": str(path), "status": "unreadable", "error": why}
                                                  for path, why in unreadable]  # fmt: skip
    if json_:
        print(json.dumps(rows))
        return
    table = Table(title=f"{len(rows)} runs under {escape(str(folder))}")
    for column in ("run", "env", "quantizer", "seed", "env steps", "best eval", "last eval", "state", "age"):
        justify = "right" if column in ("seed", "env steps", "best eval", "last eval") else "left"
        table.add_column(column, justify=justify)
    for r in rows:
        path = Path(r["run"])  # shown under the folder the title names; --json keeps whole paths
        name = escape(str(path.relative_to(folder)) if path.is_relative_to(folder) and path != folder else path.name)
        if r["status"] == "unreadable":
            table.add_row(name, "", "", "", "", "", "", "unreadable", "")
            continue
        table.add_row(name, escape(r["env_id"]), escape(r["quantizer"]), str(r["seed"]),
                      f"{r['env_steps']:,}/{r['total_steps']:,}",
                      "—" if r["best_eval"] is None else f"{r['best_eval']:.1f}",
                      "—" if r["last_eval"] is None else f"{r['last_eval']:.1f}", r["status"],
                      format_age(r["age_seconds"]))  # fmt: skip
    console.print(table)


@app.command()
def plot(
    ctx: typer.Context,
    paths: Annotated[list[Path], typer.Argument(help="Run folders or sweep folders.")],
    out: Annotated[Path | None, typer.Option(help="PNG to write.")] = None,
    group: Annotated[str, typer.Option(help="Config key whose values make the groups.")] = "quantizer",
    metric: Annotated[str, typer.Option(help="A metrics.jsonl key.")] = "eval_return_mean",
    stat: Annotated[str, typer.Option(help="iqm or mean across seeds.")] = "iqm",
    terminal: Annotated[bool, typer.Option(help="Show the curves in this terminal instead.")] = False,
) -> None:
    """Learning curves per group: the IQM (or mean) across seeds with a shaded 95% bootstrap band."""
    with user_errors(ctx):
        from agent.analysis import aggregate_groups, curves_by_group
        from agent.config import ConfigError
        from agent.plots import curves_figure, save_figure

        if stat not in ("iqm", "mean"):
            raise ConfigError(f"--stat must be iqm or mean, got {stat!r}")
        if out is None and not terminal:
            raise ConfigError("give --out FILE.png, or --terminal")
        if out is not None and out.suffix.lower() != ".png":
            raise ConfigError(f"{out}: plots are written as .png")
        curves = curves_by_group(readable_runs(paths), group, metric)
        if not curves:
            raise ConfigError(f"no run has any {metric!r} in its metrics.jsonl")
        aggregated = aggregate_groups(curves, stat)
        label = f"{stat.upper() if stat == 'iqm' else stat} of seeds"
        if out is not None:
            figure = curves_figure(aggregated, f"{metric}\n({label}, 95% CI)", f"{metric} by {group}")
            save_figure(figure, out)
            console.print(f"plot: [cyan]{escape(str(out))}[/]")
    if terminal:
        for env_id, groups in aggregated.items():
            table = Table(title=f"{escape(env_id)}: {escape(metric)} by {escape(group)} ({label})")
            for column in ("group", "curve", "last value [95% CI]"):
                table.add_column(column, justify="right" if column.startswith("last") else "left")
            for name, curve in groups.items():
                low, center, high = curve["low"][-1], curve["center"][-1], curve["high"][-1]
                table.add_row(escape(f"{name} (n={curve['runs']})"), sparkline(curve["center"]),
                              f"{center:.1f} [{low:.1f}, {high:.1f}] at {curve['steps'][-1]:,}")  # fmt: skip
            console.print(table)


def sparkline(values) -> str:
    import numpy as np

    ticks = "▁▂▃▄▅▆▇█"
    finite = values[np.isfinite(values)]
    if not len(finite):
        return ""
    low, high = float(finite.min()), float(finite.max())
    scale = (high - low) or 1.0
    return "".join(" " if not np.isfinite(v) else ticks[int((v - low) / scale * (len(ticks) - 1))] for v in values)


@app.command("compare")
def compare_runs(
    ctx: typer.Context,
    paths: Annotated[list[Path], typer.Argument(help="A sweep folder (or run folders).")],
    group: Annotated[str, typer.Option(help="Config key whose values make the groups.")] = "quantizer",
    metric: Annotated[str, typer.Option(help="A metrics.jsonl key.")] = "eval_return_mean",
    threshold: Annotated[float | None, typer.Option(help="Also report env steps to this value.")] = None,
    reps: Annotated[int, typer.Option(help="Bootstrap resamples.")] = 2000,
    json_: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables.")] = False,
) -> None:
    """Per group, over finished runs: seeds, IQM and mean of the final value and of the area under the curve
    with 95% bootstrap intervals, env steps to --threshold, and the probability of improvement."""
    with user_errors(ctx):
        from agent.analysis import compare, with_interval
        from agent.config import ConfigError

        check_positive(reps=reps)
        report = compare(readable_runs(paths), group, metric, threshold, reps)
        if not report["envs"]:
            raise ConfigError(f"no finished run has any {metric!r} in its metrics.jsonl")
    if json_:
        print(json.dumps(report))
        return
    if report["left_out_unfinished"]:
        names = ", ".join(Path(path).name for path in report["left_out_unfinished"])
        console.print(f"left out {len(report['left_out_unfinished'])} unfinished runs: {escape(names)}")
    for env_id, result in report["envs"].items():
        table = Table(title=f"{escape(env_id)}: {escape(metric)} by {escape(group)} (95% bootstrap CIs)")
        columns = ["group", "seeds", "final IQM", "final mean", "AUC IQM", "AUC mean"]
        columns += ["reached", "median steps (of those)"] if threshold is not None else []
        for column in columns:
            table.add_column(column, justify="left" if column == "group" else "right")
        for name, row in result["groups"].items():
            cells = [escape(name), str(row["seeds"])]
            cells += [with_interval(row, key) for key in ("final_iqm", "final_mean", "auc_iqm", "auc_mean")]
            if threshold is not None:
                median = row["median_steps_of_those_reaching"]
                cells += [f"{row['reached']}/{row['seeds']}", "—" if median is None else f"{median:,.0f}"]
            table.add_row(*cells)
        console.print(table)
        pairs = Table(title=f"{escape(env_id)}: probability of improvement P(A > B)")
        for column in ("A > B", "P, final", "final 95% CI", "P, area under curve", "area 95% CI"):
            pairs.add_column(column, justify="left" if column == "A > B" else "right")
        for pair, value in result["probability_of_improvement"].items():
            pairs.add_row(escape(pair), f"{value['p']:.2f}", f"[{value['ci'][0]:.2f}, {value['ci'][1]:.2f}]",
                          f"{value['auc_p']:.2f}", f"[{value['auc_ci'][0]:.2f}, {value['auc_ci'][1]:.2f}]")  # fmt: skip
        console.print(pairs)


if __name__ == "__main__":
    app()
