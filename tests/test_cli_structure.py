"""The command line's structure: one registration list, no import loop between modules."""

from __future__ import annotations

import ast
from pathlib import Path

import click

import ingester
from ingester.cli import COMMANDS, main

PACKAGE = Path(ingester.__file__).parent


def test_every_command_is_registered_once_from_the_one_list() -> None:
    assert all(isinstance(c, click.Command) for c in COMMANDS)
    assert sorted(main.commands) == sorted(c.name for c in COMMANDS if c.name)
    assert len({c.name for c in COMMANDS}) == len(COMMANDS)


def _imports(path: Path) -> set[str]:
    """The package modules ``path`` imports, anywhere in it (lazily too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(node.module.split(".")[0])
            else:
                found.update(alias.name for alias in node.names)
    return found


def test_no_command_module_imports_the_group() -> None:
    for path in PACKAGE.glob("*.py"):
        if path.name not in ("cli.py", "__main__.py"):
            assert "cli" not in _imports(path), f"{path.name} imports ingester.cli"


def test_the_package_has_no_import_cycle() -> None:
    graph = {
        p.stem: _imports(p) & {q.stem for q in PACKAGE.glob("*.py")} for p in PACKAGE.glob("*.py")
    }
    visiting: list[str] = []
    done: set[str] = set()

    def visit(module: str) -> None:
        assert module not in visiting, " -> ".join([*visiting, module])
        if module in done:
            return
        visiting.append(module)
        for target in sorted(graph.get(module, ())):
            visit(target)
        visiting.pop()
        done.add(module)

    for module in sorted(graph):
        visit(module)
