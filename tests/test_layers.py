"""The import layers (COMMON.md / README "Module map"): imports only point down or sideways.

    plumbing < storage < data < models < reports < stages < commands < cli

Walks every module of lpld_cli with `ast` (function-level imports included) and fails on an
edge that points up the order, on a stage importing another stage, and on a core module
(anything below commands) importing typer or rich.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "lpld_cli"
LAYERS = ["plumbing", "storage", "data", "models", "reports", "stages", "commands", "cli"]
STAGES = {"squeeze", "recover", "relabel", "prune", "train"}
PACKAGES = {"storage", "data", "models", "reports", "commands"}
UI_LIBRARIES = {"typer", "rich", "click"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> str:
    """The layer of `lpld_cli.<...>`: its package, a stage, the cli, else plumbing."""
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else ""
    if top in PACKAGES:
        return top
    if top in STAGES:
        return "stages"
    if top in ("cli", "__main__"):
        return "cli"
    return "plumbing"  # lpld_cli itself, errors, device, progress, dist, config, registry


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) of every import in a file, relative ones resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(
        ".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.append((node.lineno, base))
            # `from lpld_cli import squeeze`: the name may itself be a module
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names
                      if base == "lpld_cli" and alias.name in STAGES]
    return found


def edges() -> list[tuple[str, int, str]]:
    return [(module_name(path), line, target)
            for path in sorted(ROOT.rglob("*.py")) for line, target in imports(path)]


def test_the_walk_sees_known_edges() -> None:
    """The walker itself: it must see the commands' lazy imports and relative imports."""
    found = {(source, target) for source, _, target in edges()}
    assert ("lpld_cli.cli", "lpld_cli.commands") in found or any(
        s == "lpld_cli.cli" and t.startswith("lpld_cli.commands") for s, t in found)
    assert any(s.startswith("lpld_cli.commands.") and t == "lpld_cli.train" for s, t in found)
    assert layer("lpld_cli.storage.store") == "storage" and layer("lpld_cli.train") == "stages"
    assert layer("lpld_cli.errors") == "plumbing"


def _violations() -> list[str]:
    bad = []
    for source, line, target in edges():
        where = f"{source}:{line} imports {target}"
        root = target.split(".")[0]
        if root in UI_LIBRARIES and LAYERS.index(layer(source)) < LAYERS.index("commands"):
            bad.append(f"{where} (core modules never import typer/rich)")
        if root != "lpld_cli" or target == "lpld_cli":
            continue
        src, dst = layer(source), layer(target)
        if LAYERS.index(dst) > LAYERS.index(src):
            bad.append(f"{where} ({src} → {dst} points up)")
        elif src == dst == "stages" and source.split(".")[1] != target.split(".")[1]:
            bad.append(f"{where} (a stage never imports another stage)")
    return bad


def test_no_upward_imports() -> None:
    bad = _violations()
    assert not bad, "import edges against the layer order:\n" + "\n".join(bad)


@pytest.mark.parametrize("source,target,expected", [
    ("lpld_cli.storage.labels", "lpld_cli.data.augment", "points up"),
    ("lpld_cli.train", "lpld_cli.prune", "another stage"),
    ("lpld_cli.models.teacher", "lpld_cli.storage.store", None),
])
def test_the_rule_catches_a_planted_edge(source: str, target: str, expected: str | None,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """An oracle for the rule: planted edges are flagged (or not) as the order says."""
    monkeypatch.setattr(__import__(__name__, fromlist=["edges"]), "edges",
                        lambda: [(source, 1, target)])
    bad = _violations()
    assert (expected is None and not bad) or (expected and expected in bad[0]), bad
