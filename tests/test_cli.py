"""The command line end to end."""

from typer.testing import CliRunner

import agent
from cli import app

runner = CliRunner()


def test_help_and_version():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0 and "version" in result.output
    result = runner.invoke(app, ["version"])
    assert result.exit_code == 0 and agent.__version__ in result.output
