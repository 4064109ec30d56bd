"""``-q/--quiet``: silent when all is well, for commands run from cron.

cron mails whatever a job prints, whatever its exit code. With ``-q`` a command's
ordinary output is held back and dropped when the command succeeds; when it fails, the
held-back text is written to stderr after all, so the mail says what went wrong.
Informational log lines are dropped too; warnings and errors are not, except the
forecast's word on a ``resetsIn`` it cannot read: every run would repeat it, and the
answer itself shows that limit's reset as unknown. Binary streams
written to the descriptor itself (``snapshot --tar -``) are never held back.
"""

from __future__ import annotations

import io
import logging
import sys

import click

__all__ = ["hold_output", "output_was_fine"]

_KEY = "ingester.cli.quiet"


class _Held:
    def __init__(self) -> None:
        self.text = io.StringIO()
        self.real = sys.stdout
        self.fine = False


def hold_output(ctx: click.Context) -> None:
    """From now on, hold back stdout until the command ends (see the module's words)."""
    held = _Held()
    ctx.meta[_KEY] = held
    sys.stdout = held.text
    logging.getLogger("ingester").setLevel(logging.WARNING)
    logging.getLogger("ingester.forecast").setLevel(logging.ERROR)

    def release() -> None:
        sys.stdout = held.real
        if not held.fine:
            sys.stderr.write(held.text.getvalue())
            sys.stderr.flush()

    ctx.call_on_close(release)


def output_was_fine(ctx: click.Context) -> None:
    """The command returned normally: what it printed is dropped."""
    held = ctx.meta.get(_KEY)
    if isinstance(held, _Held):
        held.fine = True
