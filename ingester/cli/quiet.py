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

__all__ = ["SkipEvent", "hold_output", "output_was_fine"]

_KEY = "ingester.cli.quiet"


class _Held:
    def __init__(self) -> None:
        self.real = sys.stdout
        # Bytes underneath, as a real stdout has: commands that write bytes (show,
        # export) write to its buffer.
        self.raw = io.BytesIO()
        self.text = io.TextIOWrapper(
            self.raw,
            encoding=getattr(self.real, "encoding", None) or "utf-8",
            errors=getattr(self.real, "errors", None) or "strict",
            write_through=True,
        )
        self.fine = False


class SkipEvent(logging.Filter):
    """Leaves out the log records whose ``event`` (given as ``extra``) is ``event``."""

    def __init__(self, event: str) -> None:
        super().__init__()
        self.event = event

    def filter(self, record: logging.LogRecord) -> bool:
        return getattr(record, "event", None) != self.event


def hold_output(ctx: click.Context) -> None:
    """From now on, hold back stdout until the command ends (see the module's words)."""
    from ..usage.usage_history import RESETS_UNREAD_EVENT  # the forecast's, loaded if used

    held = _Held()
    ctx.meta[_KEY] = held
    sys.stdout = held.text
    logging.getLogger("ingester").setLevel(logging.WARNING)
    logging.getLogger("ingester.forecast").addFilter(SkipEvent(RESETS_UNREAD_EVENT))

    def release() -> None:
        sys.stdout = held.real
        held.text.flush()
        if not held.fine:
            sys.stderr.flush()
            err = getattr(sys.stderr, "buffer", None)
            if err is not None:
                err.write(held.raw.getvalue())
                err.flush()
            else:
                sys.stderr.write(held.raw.getvalue().decode(held.text.encoding, "replace"))
                sys.stderr.flush()

    ctx.call_on_close(release)


def output_was_fine(ctx: click.Context) -> None:
    """The command returned normally: what it printed is dropped."""
    held = ctx.meta.get(_KEY)
    if isinstance(held, _Held):
        held.fine = True
