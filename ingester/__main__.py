"""``python -m ingester`` and the ``ingester`` command: Ctrl-C held while it loads."""

from __future__ import annotations

import signal
import sys


def main() -> None:
    """Load the command line and run it; a Ctrl-C while it loads ends the run in one line.

    Loading the command line takes about a tenth of a second. There, Python's own
    handler would raise ``KeyboardInterrupt`` in the middle of some import: a traceback,
    and now and then a run that went on after it as if no Ctrl-C had come. So the
    signal is only noted while it loads; then the run ends as click ends an interrupted
    command (``Aborted!``, exit 1), as a Ctrl-C a moment later would, until the command
    is read (watch, serve, mirror and ingest then hold it for their own clean stop:
    :func:`ingester.runtime.signals.hold_interrupt`). The same holds between the handler
    given back and click's own catch. A SIGINT ignored by the parent (a background job
    of a shell without job control) stays ignored.
    """
    noted: list[int] = []
    held = signal.getsignal(signal.SIGINT) is signal.default_int_handler
    if held:
        signal.signal(signal.SIGINT, lambda signum, _frame: noted.append(signum))
    try:
        from .cli.group import run

        if held:
            signal.signal(signal.SIGINT, signal.default_int_handler)
        if noted:
            raise KeyboardInterrupt
        run()
    except KeyboardInterrupt:
        sys.stderr.write("\nAborted!\n")  # click's words, after its new line past the ^C
        sys.exit(1)


if __name__ == "__main__":
    main()
