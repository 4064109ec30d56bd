"""Owns the command line: ``ingester`` and ``python -m ingester``, one module per command group.

:mod:`.group` holds the command group, its global options (generated from the
settings table) and the one list of commands, each imported when it runs; :mod:`.common`
what every command module shares. The commands: :mod:`.store` (init, adopt, ingest,
cleanup), :mod:`.service` (watch, submit), :mod:`.serve`, :mod:`.status`,
:mod:`.versions` (list, show), :mod:`.verify`, :mod:`.ops` (snapshot, schema, check),
:mod:`.forecast`, :mod:`.export`, :mod:`.mirror` (mirror, restore); :mod:`.quiet` is ``-q``.

May import any room's public names; nothing private (no ``_name``) of another module.
"""

import sys

from ..runtime.signals import hold_stop_signals


def _as_the_program() -> bool:
    """Whether this process is the ``ingester`` command (``python -m ingester`` or the
    script), not a program that imports the package."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    return "ingester.__main__" in sys.modules or getattr(spec, "name", None) == "ingester.__main__"


if _as_the_program():
    # Loading the commands takes a good part of a second: a SIGTERM then (systemctl stop
    # of a service just started) must still be the clean stop its handlers make of it.
    hold_stop_signals()

from .group import COMMANDS, main, run  # noqa: E402  (after the hold: loading is the slow part)

__all__ = ["COMMANDS", "main", "run"]
