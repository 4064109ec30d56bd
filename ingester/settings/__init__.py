"""Settings: the one table of every path and limit, and where each value comes from.

Owns the ranges numbers may take (:mod:`.bounds`), the table of settings, one row each
with its option, variable, parser, default and help (:mod:`.table`), the resolved
:class:`~ingester.settings.resolved.Settings` and the store they describe
(:mod:`.resolved`), where a value comes from: option > ``INGESTER_*`` environment >
``--config`` TOML file > default (:mod:`.sources`), the folders' layout, refused where
they overlap (:mod:`.layout`), and the knobs of the commands that watch the spool
(:mod:`.watch`).

May import: :mod:`ingester.errors`, :mod:`ingester.clock`, :mod:`ingester.threads`,
:mod:`ingester.payload`, :mod:`ingester.history`, :mod:`ingester.runtime`,
:mod:`ingester.usage` and :mod:`ingester.mirror` (the last two only inside the parsers
and hooks that need them, so that a command that never reads a time zone or a mirror's
state never loads them).
"""
