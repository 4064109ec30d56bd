"""Owns the command line: ``ingester`` and ``python -m ingester``, one module per command group.

:mod:`.group` holds the command group, its global options (generated from the
settings table) and the one list of commands, each imported when it runs; :mod:`.common`
what every command module shares. The commands: :mod:`.store` (init, adopt, ingest,
cleanup), :mod:`.service` (watch, submit), :mod:`.serve`, :mod:`.status`,
:mod:`.versions` (list, show), :mod:`.verify`, :mod:`.ops` (snapshot, schema, check),
:mod:`.forecast`, :mod:`.export`, :mod:`.mirror` (mirror, restore); :mod:`.quiet` is ``-q``.

May import any room's public names; nothing private (no ``_name``) of another module.
"""

from .group import COMMANDS, main, run

__all__ = ["COMMANDS", "main", "run"]
