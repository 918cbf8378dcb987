"""The `agent` command line: parse, validate, call the library, render with rich."""

from __future__ import annotations

import typer
from rich.console import Console

import agent

app = typer.Typer(
    help="A discrete world-model RL agent: Dreamer-style learning with straight-through latent codes.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()


@app.callback()
def main() -> None:
    """Train, evaluate and inspect discrete world-model agents."""


@app.command()
def version() -> None:
    """Print the package version."""
    console.print(f"stdreamer {agent.__version__}")


if __name__ == "__main__":
    app()
