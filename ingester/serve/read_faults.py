"""One fault that every read meets, logged as one line, not one line per request.

When the history cannot be read (a folder made unreadable, a failing disk), every GET
that needs it is answered 503. A dashboard and a Prometheus server polling it would
otherwise write an ERROR line each time, burying the one that says what happened. So
the first request to meet a fault logs it (naming the client, the request and the
cause); while the same cause lasts, the requests meeting it are counted and said in
one line at most once a minute; the first read of the same thing (the history, or
one version) that goes through again says so, with the count since the last line.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from starlette.requests import Request

from ..errors import describe_os_error
from ..runtime.admission import format_peer

__all__ = ["HISTORY", "REPEAT_EVERY", "ReadFaults", "version_fault"]

log = logging.getLogger("ingester.serve")

REPEAT_EVERY = 60.0
"""Seconds between two lines about one lasting fault (the count of reads it failed)."""


HISTORY = "the history cannot be read"
"""What fails when the history's listing cannot be read (every read needs it)."""


def version_fault(name: str) -> str:
    """What fails when version ``name``'s file cannot be read."""
    return f"the version {name} cannot be read"


@dataclass
class _Fault:
    cause: str  # "<what>: <path>: <strerror> [ERRNO]"
    said: float  # when the last line about it was written (monotonic)
    unsaid: int = 0  # reads answered 503 since that line


class ReadFaults:
    """The faults reads are meeting now, each by what fails (see the module's words).

    ``clock`` is monotonic seconds; ``every`` the seconds between two lines about one
    lasting fault.
    """

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, every: float = REPEAT_EVERY
    ) -> None:
        self.clock = clock
        self.every = every
        self._faults: dict[str, _Fault] = {}

    def failed(self, request: Request, what: str, exc: OSError) -> None:
        """A read of ``request`` was answered 503 because ``what`` (:data:`HISTORY`,
        :func:`version_fault`) failed with ``exc``: log it, or count it while it lasts."""
        cause = f"{what}: {describe_os_error(exc)}"
        now = self.clock()
        fault = self._faults.get(what)
        if fault is not None and fault.cause == cause:
            fault.unsaid += 1
            if now - fault.said >= self.every:
                log.error(
                    "%s; %d more read(s) answered 503 since the last line",
                    cause.replace(" cannot ", " still cannot ", 1),
                    fault.unsaid,
                )
                fault.said, fault.unsaid = now, 0
            return
        if fault is not None and fault.unsaid:
            log.error("%s; %d more read(s) answered 503", fault.cause, fault.unsaid)
        self._faults[what] = _Fault(cause, now)
        log.error(
            "client %s: %s %s: %s; answered 503 (reads meeting this fault are counted, "
            "and said once a minute while it lasts)",
            format_peer(request.client and tuple(request.client)),
            request.method,
            request.scope["path"],
            cause,
            extra={"event": "read-fault", "status": 503},
        )

    def passed(self, what: str) -> None:
        """A read of ``what`` went through: end its fault, if any, in one line."""
        if not self._faults:
            return
        fault = self._faults.pop(what, None)
        if fault is None:
            return
        more = f"; {fault.unsaid} more read(s) were answered 503" if fault.unsaid else ""
        log.info("reads go through again (last fault: %s)%s", fault.cause, more)
