"""Plots drawn with matplotlib (its Agg backend: no display needed), written as PNG files atomically.

curves_figure: learning curves of groups of runs (a panel per env), the mean or IQM across seeds
with a shaded 95% bootstrap band. dream_figure: what the world model imagined beside what happened,
one panel per observation dimension, plus reward and continuation.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.checkpoint import atomic_write
from agent.render import RenderError

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def new_figure(rows: int, width: float = 9.0, row_height: float = 1.6) -> tuple[Figure, list]:
    """A figure of `rows` panels stacked over one shared time axis."""
    try:
        from matplotlib.figure import Figure  # the object API: no pyplot state, no display
    except ImportError:
        raise RenderError('plots need matplotlib: pip install -e ".[video]"') from None
    figure = Figure(figsize=(width, row_height * rows + 0.8), layout="constrained")
    axes = figure.subplots(rows, 1, sharex=True, squeeze=False)[:, 0]
    return figure, list(axes)


def save_figure(figure: Figure, path: Path) -> Path:
    atomic_write(Path(path), lambda tmp: figure.savefig(tmp, format="png", dpi=100))
    return Path(path)


def curves_figure(aggregated: dict[str, dict[str, dict[str, Any]]], ylabel: str, title: str) -> Figure:
    """analysis.aggregate_groups' result -> a panel per env, a line per group with its shaded interval."""
    figure, axes = new_figure(len(aggregated), width=8.0, row_height=3.6)
    # a group keeps its colour in every panel, also in one where an earlier group has no runs
    names = dict.fromkeys(name for groups in aggregated.values() for name in groups)
    colors = {name: f"C{index % 10}" for index, name in enumerate(names)}
    for ax, (env_id, groups) in zip(axes, aggregated.items(), strict=True):
        for name, curve in groups.items():
            label = f"{name} (n={curve['runs']})"
            ax.plot(curve["steps"], curve["center"], color=colors[name], linewidth=1.8, label=label)
            ax.fill_between(curve["steps"], curve["low"], curve["high"], color=colors[name], alpha=0.2, linewidth=0)
        ax.set_title(env_id, fontsize="medium")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    axes[-1].set_xlabel("env steps")
    figure.suptitle(title)
    return figure


def dream_figure(result: dict[str, Any], title: str) -> Figure:
    """Real (solid) against imagined (dashed) for each observation dimension, reward and continuation
    over the first window of `agent.dream.dream`'s result; the context the model saw is shaded."""
    window = result["first_window"]
    real = window["real"]
    series = [(f"obs[{d}]", real[:, d], window["imagined"][:, d]) for d in range(real.shape[1])]
    series += [("reward", *window["reward"]), ("continue", *window["cont"])]
    figure, axes = new_figure(len(series))
    context = result["context"]
    steps = range(len(real))
    for ax, (name, truth, imagined) in zip(axes, series, strict=True):
        ax.axvspan(-0.5, context - 0.5, color="0.9", zorder=0)
        ax.plot(steps, truth, color="black", linewidth=1.5, label="real")
        ax.plot(steps, imagined, color="tab:orange", linewidth=1.5, linestyle="--", label="imagined")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    axes[0].plot([], [], color="0.9", linewidth=8, label=f"context ({context} real steps seen)")
    axes[0].legend(loc="upper right", ncols=3, fontsize="small")
    axes[-1].set_xlabel("step of the episode")
    figure.suptitle(title)
    return figure
