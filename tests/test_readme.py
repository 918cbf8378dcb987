"""The README's Python examples run as written (on a short budget)."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_the_python_examples_run_as_written_on_a_short_budget(tmp_path, monkeypatch, capsys):
    blocks = python_blocks()
    assert blocks and any("Trainer" in block for block in blocks)
    monkeypatch.chdir(tmp_path)
    for block in blocks:
        assert "15_000" in block or "Trainer" not in block  # the budget this test shortens
        exec(compile(block.replace("15_000", "1_200"), "README.md", "exec"), {})
    printed = capsys.readouterr().out
    assert "eval" in printed  # progress from Python
    assert (tmp_path / "runs" / "mine" / "checkpoints" / "best.safetensors").is_file()
