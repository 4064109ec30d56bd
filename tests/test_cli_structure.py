"""The command line's structure: one registration list, no import loop between modules."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click

from ingester.cli.group import COMMANDS, main


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
    "('pydantic.main', 'ingester.payload.model', 'ingester.ops.queries', 'ingester.ops.verify', "
    "'ingester.serve'))"
)


def test_watch_loads_no_more_than_it_needs() -> None:
    """``watch`` imports neither the server, the reports nor pydantic's model machinery."""
    code = (
        "import sys; from ingester.cli.group import main; import click; "
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
        "import sys; from ingester.cli.group import main\n"
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
