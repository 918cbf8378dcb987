"""Pictures: frames to MP4/GIF files, frames to the terminal, side-by-side dream panels.

Videos: MP4 through imageio's ffmpeg plugin (the imageio-ffmpeg wheel ships its own ffmpeg), GIF
through Pillow; both optional (`pip install -e ".[video]"`). Every file is written to a temporary
name and renamed. The terminal renderer draws two pixels per character cell with the upper
half-block character, foreground = top pixel, background = bottom pixel.
"""

from __future__ import annotations

import colorsys
from pathlib import Path

import numpy as np
from rich.segment import Segment
from rich.style import Style

from agent.checkpoint import atomic_write

VIDEO_SUFFIXES = (".mp4", ".gif")


class RenderError(ValueError):
    """A picture that cannot be made (unsupported format, missing optional package)."""


def to_rgb(frame: np.ndarray) -> np.ndarray:
    """A frame laid out (H, W), (H, W, 1) or (H, W, 3) -> (H, W, 3) uint8; float frames in [0, 1] are scaled."""
    frame = np.asarray(frame)
    if frame.dtype != np.uint8:
        frame = (np.clip(frame, 0, 1) * 255).astype(np.uint8)
    if frame.ndim == 2:
        frame = frame[..., None]
    if frame.ndim != 3 or frame.shape[-1] not in (1, 3):
        raise RenderError(f"a frame must be (H, W), (H, W, 1) or (H, W, 3), got shape {frame.shape}")
    return np.repeat(frame, 3, -1) if frame.shape[-1] == 1 else frame


def obs_to_rgb(obs: np.ndarray) -> np.ndarray:
    """An image observation as the envs give it, (C, H, W) uint8, -> (H, W, 3) uint8: one channel is grey,
    three are RGB, any other number is a stack of object channels (MinAtar's) with a colour each."""
    obs = np.asarray(obs)
    if obs.ndim != 3:
        raise RenderError(f"an image observation must be (C, H, W), got shape {obs.shape}")
    channels = obs.shape[0]
    if channels in (1, 3):
        return to_rgb(obs.transpose(1, 2, 0))
    palette = (np.array(_palette(channels)) * 255).astype(np.float32)  # (C, 3)
    weights = obs.astype(np.float32).transpose(1, 2, 0) / 255.0  # (H, W, C)
    return np.clip(weights @ palette, 0, 255).astype(np.uint8)


def _palette(n: int) -> list[tuple[float, float, float]]:
    return [colorsys.hsv_to_rgb(i / max(n, 1), 0.75, 1.0) for i in range(n)]


def upscale(frame: np.ndarray, min_size: int = 160) -> np.ndarray:
    """Nearest-neighbour upscaling of small frames (MinAtar's 10x10) to at least `min_size` pixels."""
    factor = max(1, int(np.ceil(min_size / max(frame.shape[:2]))))
    return frame.repeat(factor, 0).repeat(factor, 1) if factor > 1 else frame


def side_by_side(*frames: np.ndarray, gap: int = 4) -> np.ndarray:
    """Frames of equal height next to each other with a dark gap."""
    height = max(f.shape[0] for f in frames)
    parts = []
    for i, frame in enumerate(frames):
        pad = np.zeros((height, frame.shape[1], 3), np.uint8)
        pad[: frame.shape[0]] = frame
        parts.append(pad)
        if i < len(frames) - 1:
            parts.append(np.full((height, gap, 3), 40, np.uint8))
    return np.concatenate(parts, 1)


def has_ffmpeg() -> bool:
    """Whether MP4s can be written (imageio-ffmpeg ships its own ffmpeg)."""
    try:
        import imageio_ffmpeg  # noqa: F401
    except ImportError:
        return False
    return True


def write_video(path: Path, frames: list[np.ndarray], fps: float = 30.0) -> Path:
    """Write (H, W, 3) uint8 frames to an .mp4 (imageio + ffmpeg) or .gif (Pillow) file, atomically."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in VIDEO_SUFFIXES:
        raise RenderError(f"{path}: unsupported video format {suffix or '(none)'}; use .mp4 or .gif")
    if not frames:
        raise RenderError(f"{path}: no frames to write")
    frames = [to_rgb(f) for f in frames]
    if suffix == ".gif":
        try:
            from PIL import Image
        except ImportError:
            raise RenderError('writing GIFs needs Pillow: pip install -e ".[video]"') from None
        images = [Image.fromarray(f) for f in frames]

        def write(tmp: str) -> None:
            images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:],
                           duration=round(1000 / fps), loop=0)  # fmt: skip
    else:
        try:
            import imageio.v2 as imageio
        except ImportError:
            raise RenderError('writing MP4s needs imageio and imageio-ffmpeg: pip install -e ".[video]"') from None

        def write(tmp: str) -> None:
            # macro_block_size=1 keeps the frame size (ffmpeg would pad 600 to 608 otherwise)
            with imageio.get_writer(tmp, format="FFMPEG", mode="I", fps=fps, codec="libx264",
                                    macro_block_size=1, pixelformat="yuv420p") as writer:  # fmt: skip
                for frame in frames:
                    writer.append_data(frame)

    atomic_write(path, write)
    return path


class HalfBlocks:
    """A frame as rich renderable text: each cell shows two vertically stacked pixels ("▀", the top
    pixel as foreground colour, the bottom one as background), scaled to fit `width` x `height` cells.
    For terminals of 16 colours (color_system "standard" or "windows") the colours are first pushed
    apart (see `few_colours`): the nearest of 16 would merge most of a frame into grey and white."""

    def __init__(self, frame: np.ndarray, width: int, height: int, color_system: str | None = "truecolor"):
        frame = to_rgb(frame)
        rows, cols = frame.shape[:2]
        scale = min(width / cols, 2 * height / rows, 1.0 if max(rows, cols) > 64 else 8.0)
        out_cols, out_rows = max(1, int(cols * scale)), max(2, int(rows * scale) // 2 * 2)
        self.pixels = resize_keeping_details(frame, out_rows, out_cols)
        if color_system in ("standard", "windows"):
            self.pixels = few_colours(self.pixels)

    def __rich_console__(self, console, options):
        pixels = self.pixels
        for top, bottom in zip(pixels[0::2], pixels[1::2], strict=True):
            for (r1, g1, b1), (r2, g2, b2) in zip(top, bottom, strict=True):
                yield Segment("▀", Style(color=f"rgb({r1},{g1},{b1})", bgcolor=f"rgb({r2},{g2},{b2})"))
            yield Segment.line()


def resize_keeping_details(frame: np.ndarray, out_rows: int, out_cols: int) -> np.ndarray:
    """(H, W, 3) -> (out_rows, out_cols, 3). Enlarging repeats pixels; shrinking keeps, from each block of
    pixels, the one that differs most from the background (the commonest colour of the frame's border),
    so that a 1-pixel line (CartPole's track) survives where sampling every n-th pixel would skip it."""
    rows, cols = frame.shape[:2]
    row_starts = (np.arange(out_rows) * rows / out_rows).astype(int)
    col_starts = (np.arange(out_cols) * cols / out_cols).astype(int)
    border = np.concatenate([frame[0], frame[-1], frame[:, 0], frame[:, -1]])
    colours, counts = np.unique(border, axis=0, return_counts=True)
    distance = np.abs(frame.astype(np.int64) - colours[counts.argmax()]).sum(-1)  # (H, W)
    # each block's largest distance, with the pixel's flat index packed into the same number
    key = distance * (rows * cols) + np.arange(rows * cols).reshape(rows, cols)
    best = np.maximum.reduceat(np.maximum.reduceat(key, row_starts, axis=0), col_starts, axis=1)
    return frame.reshape(-1, 3)[best % (rows * cols)]


def few_colours(pixels: np.ndarray) -> np.ndarray:
    """Colours that stay apart in a 16-colour terminal: coloured pixels keep their hue at full saturation
    and brightness, grey ones become black or white."""
    rgb = pixels.astype(np.float32) / 255.0
    high, low = rgb.max(-1, keepdims=True), rgb.min(-1, keepdims=True)
    saturation = (high - low) / np.maximum(high, 1e-6)
    hue = (rgb - low) / np.maximum(high - low, 1e-6)
    grey = np.broadcast_to((high > 0.5).astype(np.float32), rgb.shape)
    return (np.where(saturation > 0.2, hue, grey) * 255).round().astype(np.uint8)
