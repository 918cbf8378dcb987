"""Pictures and pixels: videos, the terminal renderer, pixel observations, conv nets, watch and dream."""

import importlib.util
import json

import imageio.v2 as imageio
import numpy as np
import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

import envs
from agent import Agent
from agent.nets import make_codec
from agent.render import HalfBlocks, RenderError, to_rgb, write_video
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


def test_to_rgb_handles_floats_channels_first_and_channel_stacks():
    assert to_rgb(np.ones((5, 6))).shape == (5, 6, 3) and to_rgb(np.ones((5, 6)))[0, 0, 0] == 255
    assert to_rgb(np.zeros((3, 8, 9), np.uint8)).shape == (8, 9, 3)
    stack = np.zeros((10, 10, 4), np.uint8)
    stack[2, 3, 1] = 255
    rgb = to_rgb(stack)
    assert rgb.shape == (10, 10, 3) and rgb[2, 3].sum() > 0 and rgb[0, 0].sum() == 0


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
def cartpole_run(tiny_run):
    return tiny_run


def test_watch_writes_a_video_and_prints_how_each_episode_ended(cartpole_run, tmp_path):
    out = tmp_path / "play.gif"
    result = runner.invoke(app, ["watch", str(cartpole_run), "--episodes", "2", "--out", str(out), "--max-steps", "30"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("episode")]
    assert len(lines) == 2 and all("return" in line and "length" in line for line in lines)
    assert "best.safetensors" in result.output  # says which checkpoint it plays
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
    assert imageio.imread(out).shape[0] == 6 * 110  # 4 observation dims + reward + continuation
    result = runner.invoke(app, ["dream", str(cartpole_run), "--horizon", "4", "--checkpoint", "last"])
    assert result.exit_code == 0 and "imagined step" in result.output and "code usage" in result.output
    assert "last.safetensors" in result.output


@pytest.mark.skipif(not has_minatar, reason="needs the optional minatar package (pip install --no-deps minatar)")
def test_minatar_trains_a_few_hundred_steps_and_dreams_in_three_panels(tmp_path):
    run = tmp_path / "run"
    agent = Agent.create("MinAtar/Breakout-v1", preset="tiny", train={"steps": 300, "eval_every": 300})
    assert agent.obs_shape == (4, 10, 10)
    agent.learn(run_dir=run)
    assert agent.trainer.replay.data["obs"].dtype == np.uint8
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["step"] == 300 and np.isfinite(lines[-1]["loss/decoder"])
    out = tmp_path / "dream.gif"
    result = runner.invoke(app, ["dream", str(run), "--context", "2", "--horizon", "3", "--out", str(out)])
    assert result.exit_code == 0, result.output
    shown = imageio.mimread(out)
    assert len(shown) == 5 and shown[0].shape[1] > 2 * shown[0].shape[0]  # real | imagined | difference
