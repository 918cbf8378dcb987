"""Dependencies run one way: no import circles, and the policy imports no trainer and no rendering."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROJECT = ("agent", "envs", "cli")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Project modules a file imports anywhere in it: function-level imports and imports for type hints
    count too (a module that names another's types depends on it)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in found if name.split(".")[0] in PROJECT}


def reexports() -> dict[str, str]:
    """agent.<Name> -> the module that agent/__init__.py takes Name from (`from agent import Trainer`)."""
    tree = ast.parse((ROOT / "agent" / "__init__.py").read_text())
    return {
        f"agent.{alias.name}": node.module
        for node in tree.body
        if isinstance(node, ast.ImportFrom) and node.module
        for alias in node.names
    }


def graph() -> dict[str, set[str]]:
    files = [*ROOT.glob("agent/*.py"), *ROOT.glob("envs/*.py"), ROOT / "cli.py"]
    modules = {module_name(path): path for path in files}
    through = reexports()
    edges = {}
    for name, path in modules.items():
        targets = {through.get(t, t) for t in imports(path)}
        edges[name] = {t for t in targets if t in modules and t != name} - {"agent"}  # __init__ only re-exports
    return edges


def reachable(edges: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for target in edges.get(todo.pop(), ()):
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def test_no_module_imports_itself_through_others():
    edges = graph()
    circles = [name for name in edges if name in reachable(edges, name)]
    assert circles == []


def test_the_policy_imports_no_trainer_evaluation_playing_or_rendering():
    reached = reachable(graph(), "agent.agent")
    assert not reached & {"agent.trainer", "agent.evaluate", "agent.play", "agent.render", "agent.plots", "cli"}
    assert "agent.world_model" in reached and "envs" in reached  # the checker does follow imports
    assert "agent.trainer" in graph()["agent.sweep"]  # ... and the package's re-exports (from agent import Trainer)


def test_the_model_modules_know_nothing_of_files_terminals_or_the_cli():
    edges = graph()
    for name in ("agent.quantize", "agent.nets", "agent.world_model", "agent.behavior"):
        assert not reachable(edges, name) & {"agent.checkpoint", "agent.render", "agent.runs", "cli"}, name
