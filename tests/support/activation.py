"""Socket activation without systemd: hand descriptors to a command as systemd does.

:func:`activation_wrapper` gives a command prefix that moves the descriptors it is given
to 3, 4, ..., sets ``LISTEN_FDS``, ``LISTEN_PID`` (its own pid, which the command keeps
because the wrapper execs it) and ``LISTEN_FDNAMES``, then execs the rest of its
arguments. Start it with ``pass_fds`` holding the same descriptors.
"""

from __future__ import annotations

import json
import sys

__all__ = ["activation_wrapper"]

_WRAPPER = r"""
import fcntl, json, os, sys
spec = json.loads(sys.argv[1])
# Lift each descriptor above the target range first, so none is overwritten on the way.
lifted = [fcntl.fcntl(fd, fcntl.F_DUPFD, 100) for fd in spec["fds"]]
for fd in spec["fds"]:
    os.close(fd)
for i, fd in enumerate(lifted):
    os.dup2(fd, 3 + i, inheritable=True)
    os.close(fd)
env = dict(os.environ)
env["LISTEN_FDS"] = spec["count"]
env["LISTEN_PID"] = spec["pid"] if spec["pid"] is not None else str(os.getpid())
if spec["names"] is not None:
    env["LISTEN_FDNAMES"] = spec["names"]
os.execve(sys.argv[2], sys.argv[2:], env)
"""


def activation_wrapper(
    fds: list[int],
    *,
    names: str | None = None,
    count: str | None = None,
    pid: str | None = None,
) -> tuple[str, ...]:
    """The prefix that passes ``fds`` as 3, 4, ... (``count``, ``pid``: override the
    variables, e.g. a malformed ``LISTEN_FDS`` or another process's pid)."""
    spec = {
        "fds": fds,
        "names": names,
        "count": str(len(fds)) if count is None else count,
        "pid": pid,
    }
    return (sys.executable, "-c", _WRAPPER, json.dumps(spec))
