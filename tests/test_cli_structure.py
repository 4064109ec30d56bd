"""The command line's structure: one registration list, no import loop between modules."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import click

import ingester
from ingester.cli import COMMANDS, main

PACKAGE = Path(ingester.__file__).parent


def test_every_command_is_registered_once_from_the_one_list() -> None:
    names = [name for name, _module, _attr in COMMANDS]
    assert len(set(names)) == len(names)
    ctx = click.Context(main)
    assert main.list_commands(ctx) == sorted(names)
    for name in names:
        command = main.get_command(ctx, name)
        assert isinstance(command, click.Command) and command.name == name, name
    assert main.get_command(ctx, "no-such-command") is None


_HEAVY = (
    "sorted(m for m in sys.modules if m.split('.')[0] in "
    "('starlette', 'uvicorn', 'boto3', 'prometheus_client') or m in "
    "('pydantic.main', 'ingester.model', 'ingester.queries', 'ingester.serve'))"
)


def test_watch_loads_no_more_than_it_needs() -> None:
    """``watch`` imports neither the server, the reports nor pydantic's model machinery."""
    code = (
        "import sys; from ingester.cli import main; import click; "
        "main.get_command(click.Context(main), 'watch'); "
        f"print({_HEAVY})"
    )
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.strip() == "[]"


def test_a_running_watch_loads_no_more_than_it_needs(tmp_path: Path) -> None:
    """Not only the command's module: a whole ``watch --once`` run, start checks included.

    A drop is taken too, so the drop path's imports are counted.
    """
    (tmp_path / "spool").mkdir()
    sample = Path(__file__).parent / "samples" / "valid" / "full.json"
    (tmp_path / "spool" / "a.json").write_bytes(sample.read_bytes())
    code = (
        "import sys; from ingester.cli import main\n"
        "try:\n"
        f"    main(['--root', {str(tmp_path)!r}, 'watch', '--once'])\n"
        "except SystemExit as exc:\n"
        "    assert not exc.code, exc.code\n"
        f"print({_HEAVY})"
    )
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.strip().splitlines()[-1] == "[]"
    assert len(list((tmp_path / "console-usage-history").glob("*T*.json"))) == 1


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
