"""Pictures and pixels: videos, the terminal renderer, pixel observations, conv nets, watch and dream."""

import importlib.util
import json
import shutil
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

import envs
from agent import Trainer
from agent.nets import make_codec
from agent.render import HalfBlocks, RenderError, obs_to_rgb, to_rgb, write_video
from cli import app

runner = CliRunner()
has_minatar = importlib.util.find_spec("minatar") is not None


def frames(count=7, height=30, width=40):
    rng = np.random.default_rng(0)
    return [rng.integers(0, 255, (height, width, 3), dtype=np.uint8) for _ in range(count)]


@pytest.mark.parametrize("suffix", [".mp4", ".gif"])
def test_videos_are_written_and_read_back_with_their_frame_count_and_size(tmp_path, suffix):
    path = write_video(tmp_path / f"clip{suffix}", frames(7, 30, 40), fps=10)
    # (the ffmpeg reader reports an infinite length, which list() would try to preallocate)
    read = imageio.mimread(path) if suffix == ".gif" else [f for f in imageio.get_reader(path, format="FFMPEG")]
    assert len(read) == 7
    assert read[0].shape[:2] == (30, 40)  # no padding to macro blocks
    assert not list(tmp_path.glob(".*.tmp-*"))


def test_unsupported_video_formats_are_refused(tmp_path):
    with pytest.raises(RenderError, match=r"unsupported video format \.avi"):
        write_video(tmp_path / "clip.avi", frames(2))


def test_terminal_renderer_draws_two_pixels_per_cell_with_their_colours():
    frame = np.zeros((4, 2, 3), np.uint8)
    frame[0, 0], frame[1, 0] = (255, 0, 0), (0, 0, 255)  # top-left cell: red over blue
    console = Console(width=20, color_system="truecolor", record=True)
    console.print(HalfBlocks(frame, width=2, height=2))
    lines = console.export_text(clear=False).splitlines()
    assert lines == ["▀▀", "▀▀"]  # 4 pixel rows -> 2 character rows, 2 columns
    styled = console.export_html(inline_styles=True)
    assert "#ff0000" in styled and "#0000ff" in styled


def test_to_rgb_takes_frames_and_obs_to_rgb_takes_channels_first_observations():
    assert to_rgb(np.ones((5, 6))).shape == (5, 6, 3) and to_rgb(np.ones((5, 6)))[0, 0, 0] == 255
    with pytest.raises(RenderError, match="a frame must be"):
        to_rgb(np.zeros((4, 10, 10), np.uint8))
    rgb = np.zeros((3, 8, 9), np.uint8)
    rgb[0, 2, 5] = 200  # red at row 2, column 5
    assert obs_to_rgb(rgb).shape == (8, 9, 3) and obs_to_rgb(rgb)[2, 5].tolist() == [200, 0, 0]
    # MinAtar: (4, 10, 10) object channels -> a 10x10 picture with the object where it is, not a 4x10 strip
    stack = np.zeros((4, 10, 10), np.uint8)
    stack[1, 3, 7] = 255
    picture = obs_to_rgb(stack)
    assert picture.shape == (10, 10, 3)
    assert picture[3, 7].sum() > 0 and picture.sum() == picture[3, 7].sum()


def test_terminal_frames_keep_thin_lines_and_16_colour_terminals_keep_objects_apart():
    from rich.color import Color, ColorSystem

    frame = np.full((400, 600, 3), 255, np.uint8)  # CartPole-like: white, a 1-pixel black track, a brown pole
    frame[300] = 0
    frame[150:300, 295:305] = (202, 152, 101)
    cells = HalfBlocks(frame, width=60, height=20).pixels
    assert cells.shape == (40, 60, 3)
    assert (cells.sum(-1) == 0).all(-1).any()  # a whole row of black: the track survives the 10x shrink
    pole = cells[cells.shape[0] // 2, 29]

    def standard(rgb):
        return Color.parse("rgb({},{},{})".format(*(int(c) for c in rgb))).downgrade(ColorSystem.STANDARD).number

    assert standard(pole) == standard((255, 255, 255)) - 8  # as is, 16 colours draw it light grey on white
    few = HalfBlocks(frame, width=60, height=20, color_system="standard").pixels
    assert standard(few[few.shape[0] // 2, 29]) not in (standard((255, 255, 255)), 7, 8, 0)  # a colour of its own
    assert (few.sum(-1) == 0).all(-1).any()


def test_pixel_observations_have_the_documented_shape_and_dtype():
    env = envs.make("CartPole-v1", obs="pixels", size=48)
    obs, _ = env.reset(seed=0)
    assert env.observation_space.shape == (3, 48, 48) and obs.shape == (3, 48, 48) and obs.dtype == np.uint8
    obs, *_ = env.step(0)
    assert obs.shape == (3, 48, 48) and 0 < obs.mean() < 255


@pytest.mark.parametrize("shape", [(4, 10, 10), (3, 64, 64), (1, 84, 84), (3, 7, 9)])
def test_conv_encoder_and_decoder_round_trip_shapes(shape):
    encoder, decoder = make_codec(shape, feat_dim=40, hidden=32, layers=1, depth=8)
    images = torch.randint(0, 256, (2, 3, *shape), dtype=torch.uint8)
    embed = encoder(images)
    assert embed.shape == (2, 3, encoder.out_dim)
    dist = decoder(torch.randn(2, 3, 40))
    assert dist.pred.shape == (2, 3, *shape) and dist.mean().dtype == torch.uint8
    assert dist.log_prob(images).shape == (2, 3)


@pytest.fixture
def cartpole_run(tiny_run, tmp_path):
    """A copy of the shared tiny run: `agent watch` writes videos into the run folder."""
    return Path(shutil.copytree(tiny_run, tmp_path / "run"))


def test_watch_writes_a_video_and_prints_how_each_episode_ended(cartpole_run, tmp_path):
    out = tmp_path / "play.gif"
    result = runner.invoke(app, ["watch", str(cartpole_run), "--episodes", "2", "--out", str(out), "--max-steps", "30"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("episode")]
    assert len(lines) == 2 and all("return" in line and "length" in line for line in lines)
    assert "best.safetensors" in result.output.replace("\n", "")  # says which checkpoint it plays (wrapped)
    assert len(imageio.mimread(out)) > 2
    result = runner.invoke(app, ["watch", str(cartpole_run), "--max-steps", "5"])  # default: into the run folder
    assert result.exit_code == 0 and list((cartpole_run / "videos").iterdir())


def test_watch_in_the_terminal_and_without_a_display(cartpole_run, monkeypatch):
    result = runner.invoke(app, ["watch", str(cartpole_run), "--terminal", "--max-steps", "3", "--fps", "1000"])
    assert result.exit_code == 0 and "▀" in result.output and "episode 1: return" in result.output
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    result = runner.invoke(app, ["watch", str(cartpole_run), "--window"])
    assert result.exit_code == 2 and "needs a display" in result.output
    result = runner.invoke(app, ["watch", str(cartpole_run), "--out", "x.avi"])
    assert result.exit_code == 2 and "unsupported video format .avi" in result.output


def test_dream_on_vectors_writes_a_plot_and_an_error_table(cartpole_run, tmp_path):
    out = tmp_path / "dream.png"
    result = runner.invoke(
        app, ["dream", str(cartpole_run), "--context", "3", "--horizon", "5", "--out", str(out), "--json"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert [row["step"] for row in data["errors"]] == [1, 2, 3, 4, 5]
    assert all(np.isfinite(row["obs_mse"]) for row in data["errors"])
    assert 0 < data["code_usage"] <= 1 and data["picture"] == str(out)
    assert data["checkpoint"].endswith("best.safetensors")
    assert imageio.imread(out).shape[2] in (3, 4)
    result = runner.invoke(app, ["dream", str(cartpole_run), "--horizon", "4", "--checkpoint", "last"])
    assert result.exit_code == 0 and "imagined step" in result.output and "code usage" in result.output
    unwrapped = result.output.replace("\n", "")  # rich wraps long paths at the terminal's width
    assert "last.safetensors" in unwrapped and "1 windows" not in result.output
    result = runner.invoke(app, ["dream", str(cartpole_run), "--horizon", "450"])  # longer than the episode
    assert result.exit_code == 0 and "was shortened to" in result.output


def test_the_dream_figure_has_a_panel_per_series_a_legend_ticks_and_a_title():
    from agent.plots import dream_figure

    steps, context = 12, 4
    real = np.random.default_rng(0).normal(size=(steps, 4))
    window = {"real": real, "imagined": real + 0.1, "reward": (np.ones(steps), np.ones(steps) * 0.9),
              "cont": (np.ones(steps), np.ones(steps))}  # fmt: skip
    figure = dream_figure({"first_window": window, "context": context}, "CartPole-v1 · best at 3,000 env steps")
    axes = figure.get_axes()
    assert len(axes) == 4 + 2 and [ax.get_ylabel() for ax in axes[-2:]] == ["reward", "continue"]
    labels = [text.get_text() for text in axes[0].get_legend().get_texts()]
    assert labels[:2] == ["real", "imagined"] and "context" in labels[2]
    assert figure.get_suptitle() == "CartPole-v1 · best at 3,000 env steps"
    assert axes[-1].get_xlabel() and len(axes[-1].get_xticks()) >= 3


@pytest.mark.skipif(not has_minatar, reason="needs the optional minatar package (pip install --no-deps minatar)")
def test_minatar_trains_a_few_hundred_steps_and_dreams_in_three_panels(tmp_path):
    run = tmp_path / "run"
    with Trainer.create(
        "MinAtar/Breakout-v1", preset="tiny", run_dir=run, train={"steps": 300, "eval_every": 300}
    ) as t:
        assert t.agent.obs_shape == (4, 10, 10)
        t.learn()
    assert t.replay.data["obs"].dtype == np.uint8
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["step"] == 300 and np.isfinite(lines[-1]["loss/decoder"])
    out = tmp_path / "dream.gif"
    result = runner.invoke(app, ["dream", str(run), "--context", "2", "--horizon", "3", "--out", str(out)])
    assert result.exit_code == 0, result.output
    shown = imageio.mimread(out)
    assert len(shown) == 5 and shown[0].shape[1] > 2 * shown[0].shape[0]  # real | imagined | difference
    height = shown[0].shape[0]
    scale = height // 10  # three square 10x10 panels and two 4-pixel gaps, upscaled alike
    assert height % 10 == 0 and shown[0].shape[1] == (3 * 10 + 2 * 4) * scale
