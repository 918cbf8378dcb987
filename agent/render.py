"""Pictures: frames to MP4/GIF files, frames to the terminal, side-by-side dream panels, line plots.

Videos: MP4 through imageio's ffmpeg plugin (the imageio-ffmpeg wheel ships its own ffmpeg), GIF
through Pillow; both optional (`pip install -e ".[video]"`). Every file is written to a temporary
name and renamed. The terminal renderer draws two pixels per character cell with the upper
half-block character, foreground = top pixel, background = bottom pixel.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from rich.segment import Segment
from rich.style import Style

from agent.checkpoint import atomic_write

VIDEO_SUFFIXES = (".mp4", ".gif")


class RenderError(ValueError):
    """A picture that cannot be made (unsupported format, missing optional package)."""


def to_rgb(frame: np.ndarray) -> np.ndarray:
    """Any frame -> (H, W, 3) uint8: float frames in [0, 1] are scaled, channels-first images and
    MinAtar-style channel stacks (C != 3) are turned into colour pictures."""
    frame = np.asarray(frame)
    if frame.ndim == 3 and frame.shape[0] in (1, 3) and frame.shape[-1] not in (1, 3):
        frame = frame.transpose(1, 2, 0)  # (C, H, W) -> (H, W, C)
    if frame.dtype != np.uint8:
        frame = (np.clip(frame, 0, 1) * 255).astype(np.uint8)
    if frame.ndim == 2:
        frame = frame[..., None]
    if frame.shape[-1] == 1:
        frame = np.repeat(frame, 3, -1)
    if frame.shape[-1] != 3:  # a stack of object channels: one colour per channel
        palette = (np.array(_palette(frame.shape[-1])) * 255).astype(np.float32)
        weights = frame.astype(np.float32) / 255.0
        frame = np.clip(weights @ palette, 0, 255).astype(np.uint8)
    return frame


def _palette(n: int) -> list[tuple[float, float, float]]:
    import colorsys

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


def write_png(path: Path, image: np.ndarray) -> Path:
    try:
        from PIL import Image
    except ImportError:
        raise RenderError('writing PNGs needs Pillow: pip install -e ".[video]"') from None
    picture = Image.fromarray(to_rgb(image))
    atomic_write(Path(path), lambda tmp: picture.save(tmp, format="PNG"))
    return Path(path)


class HalfBlocks:
    """A frame as rich renderable text: each cell shows two vertically stacked pixels ("▀", the top
    pixel as foreground colour, the bottom one as background), scaled to fit `width` x `height` cells."""

    def __init__(self, frame: np.ndarray, width: int, height: int):
        frame = to_rgb(frame)
        rows, cols = frame.shape[:2]
        scale = min(width / cols, 2 * height / rows, 1.0 if max(rows, cols) > 64 else 8.0)
        out_cols, out_rows = max(1, int(cols * scale)), max(2, int(rows * scale) // 2 * 2)
        ys = (np.arange(out_rows) * rows / out_rows).astype(int)
        xs = (np.arange(out_cols) * cols / out_cols).astype(int)
        self.pixels = frame[ys][:, xs]

    def __rich_console__(self, console, options):
        pixels = self.pixels
        for top, bottom in zip(pixels[0::2], pixels[1::2], strict=True):
            for (r1, g1, b1), (r2, g2, b2) in zip(top, bottom, strict=True):
                yield Segment("▀", Style(color=f"rgb({r1},{g1},{b1})", bgcolor=f"rgb({r2},{g2},{b2})"))
            yield Segment.line()


def line_plots(
    series: list[tuple[str, np.ndarray, np.ndarray]], context: int, width: int = 900, panel_height: int = 110
) -> np.ndarray:
    """One small panel per (title, real, imagined) series over time, real in white and imagined in
    orange, the context (steps given to the model) shaded; drawn with Pillow into an RGB array."""
    try:
        from PIL import Image, ImageDraw
    except ImportError:
        raise RenderError('drawing plots needs Pillow: pip install -e ".[video]"') from None
    image = Image.new("RGB", (width, panel_height * len(series)), (20, 20, 24))
    draw = ImageDraw.Draw(image)
    left, right, pad = 70, width - 10, 14
    for i, (title, real, imagined) in enumerate(series):
        top = i * panel_height + pad
        bottom = (i + 1) * panel_height - pad
        values = np.concatenate([real, imagined])
        values = values[np.isfinite(values)]
        low, high = (float(values.min()), float(values.max())) if len(values) else (0.0, 1.0)
        if high - low < 1e-6:
            low, high = low - 0.5, high + 0.5
        steps = max(len(real), 2)

        def point(t: int, v: float, top=top, bottom=bottom, low=low, high=high, steps=steps) -> tuple[float, float]:
            return left + (right - left) * t / (steps - 1), bottom - (bottom - top) * (v - low) / (high - low)

        draw.rectangle([left, top, right, bottom], outline=(90, 90, 100))
        draw.rectangle([left, top, point(context - 1, low)[0], bottom], fill=(40, 40, 55))
        draw.text((6, top), title[:9], fill=(220, 220, 220))
        draw.text((6, top + 14), f"{high:.3g}", fill=(140, 140, 140))
        draw.text((6, bottom - 12), f"{low:.3g}", fill=(140, 140, 140))
        for data, colour in ((real, (235, 235, 235)), (imagined, (255, 150, 40))):
            pts = [point(t, float(v)) for t, v in enumerate(data) if np.isfinite(v)]
            if len(pts) > 1:
                draw.line(pts, fill=colour, width=2)
    return np.asarray(image)
