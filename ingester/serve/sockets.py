"""The sockets ``serve`` listens on: the ones systemd passes in, or one it binds itself.

Socket activation (``sd_listen_fds(3)``): a ``.socket`` unit makes systemd hold the
listening sockets and start the service with them as file descriptors 3, 4, ... and
three variables::

    LISTEN_PID=<the pid they are meant for>  LISTEN_FDS=<how many>  [LISTEN_FDNAMES=a:b]

    if LISTEN_FDS is not set, or LISTEN_PID names another process:  bind --listen
    else: every passed descriptor must be a listening stream socket (TCP or Unix),
          else refuse to start, naming the descriptor and what it is;
          serve all of them, and never bind one of our own
    unset the three variables and mark the descriptors close-on-exec, as
    sd_listen_fds(unset_environment=1) does: a child process (a trigger command)
    must neither inherit the sockets nor believe it was activated

One ``.socket`` unit may hold several ``ListenStream=`` lines (IPv4 and IPv6, or a TCP
port and a Unix socket): each is served. ``LISTEN_FDNAMES`` (``FileDescriptorName=``)
only labels them in the log.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import re
import socket
import stat
from collections.abc import MutableMapping
from dataclasses import dataclass

from ..errors import IngesterError
from .query import whole_number

__all__ = [
    "ActivationError",
    "Listener",
    "activated_sockets",
    "bind_listener",
    "ipv6_loopback_beside",
    "listeners",
]

log = logging.getLogger("ingester.serve")

SD_LISTEN_FDS_START = 3  # the first passed descriptor (sd-daemon.h)
# More than this is not a unit anyone wrote on purpose; it also bounds the loop below.
MAX_PASSED_FDS = 64
_ACTIVATION_VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


class ActivationError(IngesterError):
    """systemd passed descriptors that cannot be served; the message says which and why."""


@dataclass(frozen=True)
class Listener:
    """One listening socket, and where it came from.

    ``fd`` and ``name`` are set for a socket systemd passed (``name`` from
    ``LISTEN_FDNAMES``, ``None`` when none was given).
    """

    sock: socket.socket
    fd: int | None = None
    name: str | None = None

    @property
    def url(self) -> str:
        """``http://127.0.0.1:8080``, ``http://[::1]:8080`` or ``unix:/run/x.sock``."""
        address = self.sock.getsockname()
        if self.sock.family == socket.AF_UNIX:
            path = address.decode(errors="replace") if isinstance(address, bytes) else address
            # An abstract socket's name starts with a NUL byte; "@" is how ss(8) shows it.
            return "unix:" + (("@" + path[1:]) if path.startswith("\0") else path)
        host, port = address[0], address[1]
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    @property
    def origin(self) -> str:
        """Where it came from, for the log: ``fd 3 'http'`` or ``bound by serve``."""
        if self.fd is None:
            return "bound by serve"
        return f"fd {self.fd}" + (f" {self.name!r}" if self.name else "")


def _describe_fd(fd: int) -> str:
    """What a descriptor that is not a socket is, in the words of a unit file."""
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return "not open"
    kinds = (
        (stat.S_ISREG, "a regular file"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO or pipe (ListenFIFO=?)"),
        (stat.S_ISCHR, "a character device (ListenSpecial=?)"),
        (stat.S_ISBLK, "a block device"),
    )
    for test, words in kinds:
        if test(mode):
            return words
    return "not a socket"


def _check_passed(fd: int, label: str) -> socket.socket:
    """The socket object for passed descriptor ``fd``; ActivationError when unusable."""
    try:
        is_socket = stat.S_ISSOCK(os.fstat(fd).st_mode)
    except OSError:
        is_socket = False
    if not is_socket:
        raise ActivationError(
            f"{label} is {_describe_fd(fd)}, not a socket: serve takes listening stream "
            "sockets (ListenStream= in the .socket unit)"
        )
    sock = socket.socket(fileno=fd)  # family and type are read from the descriptor
    if sock.type != socket.SOCK_STREAM:
        sock.detach()
        raise ActivationError(
            f"{label} is a {sock.type.name} socket, not a stream socket: serve speaks HTTP "
            "over TCP or Unix stream sockets (ListenStream=, not ListenDatagram=)"
        )
    if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        sock.detach()
        raise ActivationError(
            f"{label} is a connected socket, not a listening one: serve needs Accept=no "
            "in the .socket unit (Accept=yes starts one service per connection)"
        )
    if sock.family not in (socket.AF_INET, socket.AF_INET6, socket.AF_UNIX):
        family = sock.family.name
        sock.detach()
        raise ActivationError(f"{label} is an {family} socket: serve takes TCP or Unix sockets")
    return sock


def activated_sockets(
    environ: MutableMapping[str, str], pid: int | None = None
) -> list[Listener] | None:
    """The sockets systemd passed to this process, or ``None`` when it passed none.

    ``environ`` is read and then cleared of ``LISTEN_PID``, ``LISTEN_FDS`` and
    ``LISTEN_FDNAMES`` (pass ``os.environ``); ``pid`` defaults to this process's.
    Raises :class:`ActivationError` when the variables are malformed or a passed
    descriptor is not a listening TCP or Unix stream socket (a regular file, a pipe,
    a datagram socket, a connection from ``Accept=yes``).
    """
    pid = os.getpid() if pid is None else pid
    count_text = environ.get("LISTEN_FDS")
    pid_text = environ.get("LISTEN_PID")
    names_text = environ.get("LISTEN_FDNAMES")
    for key in _ACTIVATION_VARIABLES:
        environ.pop(key, None)
    if count_text is None:
        return None
    if pid_text is None or pid_text.strip() != str(pid):
        # sd_listen_fds' rule: the descriptors were meant for another process (a wrapper
        # that forked instead of exec'ing, or variables inherited from a parent).
        log.warning(
            "serve: LISTEN_FDS=%s is set but LISTEN_PID=%s is not this process (%d): "
            "not using passed sockets (a wrapper that forks breaks socket activation; "
            "exec the command instead)",
            count_text,
            pid_text if pid_text is not None else "(unset)",
            pid,
        )
        return None
    count = whole_number(count_text.strip())
    if count is None or count > MAX_PASSED_FDS:
        raise ActivationError(
            f"LISTEN_FDS={count_text!r} is not a number of passed sockets (0 to {MAX_PASSED_FDS})"
        )
    if count == 0:
        return None
    names: list[str | None] = [None] * count
    if names_text is not None:
        given = names_text.split(":")
        if len(given) == count:
            names = [name or None for name in given]
        else:
            log.warning(
                "serve: LISTEN_FDNAMES names %d descriptors but LISTEN_FDS=%d: names ignored",
                len(given),
                count,
            )
    out: list[Listener] = []
    try:
        for i in range(count):
            fd = SD_LISTEN_FDS_START + i
            label = f"passed descriptor {i + 1} of {count} (fd {fd}" + (
                f", name {names[i]!r})" if names[i] else ")"
            )
            sock = _check_passed(fd, label)
            os.set_inheritable(fd, False)
            sock.setblocking(False)
            out.append(Listener(sock, fd, names[i]))
    except BaseException:
        for listener in out:
            listener.sock.detach()
        raise
    return out


def bind_listener(host: str, port: int) -> Listener:
    """A new TCP socket bound to ``host:port`` and listening; raises ``OSError``."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto must say TCP: asyncio turns Nagle off (TCP_NODELAY) only on sockets that do,
    # and with Nagle on, a response's body waits ~40 ms behind its head for an ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(1024)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return Listener(sock)


def ipv6_loopback_beside(port: int) -> Listener | None:
    """``[::1]:port``, to serve beside ``127.0.0.1:port``; ``None`` where it cannot be.

    A client that resolves ``localhost`` to ``::1`` first and does not fall back to
    ``127.0.0.1`` (Node.js 17 to 19 by default, for one) would otherwise be refused. A
    machine without IPv6 on its loopback is no error (an INFO line); an address already
    taken is a WARNING: such clients then reach whatever holds it.
    """
    try:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    except OSError as exc:
        log.info("serve: no IPv6 here (%s): listening on 127.0.0.1 only", exc.strerror)
        return None
    try:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("::1", port))
        sock.listen(1024)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        if exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
            log.info(
                "serve: no IPv6 loopback here (::1: %s): listening on 127.0.0.1 only", exc.strerror
            )
        else:
            log.warning(
                "serve: cannot listen on [::1]:%d as well (%s): a client that reaches "
                "localhost over IPv6 does not reach this server; name the address with "
                "--listen to listen on one address only",
                port,
                exc.strerror,
            )
        return None
    return Listener(sock)


def listeners(
    host: str, port: int, environ: MutableMapping[str, str], *, ipv6_loopback: bool = False
) -> list[Listener]:
    """The passed sockets under socket activation, else one bound to ``host:port``, and
    with ``ipv6_loopback`` also ``[::1]`` on the same port where it can be bound
    (:func:`ipv6_loopback_beside`).

    Raises :class:`ActivationError` (passed descriptors unusable) or ``OSError`` (the
    address cannot be bound). While systemd passes sockets, nothing is bound here.
    """
    passed = activated_sockets(environ)
    if passed is not None:
        return passed
    first = bind_listener(host, port)
    if not ipv6_loopback:
        return [first]
    second = ipv6_loopback_beside(first.sock.getsockname()[1])
    return [first] if second is None else [first, second]


_HOST_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?\Z", re.ASCII)


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:8080`` for IPv6; an empty host is 127.0.0.1) ->
    ``(host, port)``.

    HOST is a name, an IPv4 address, or an IPv6 address in brackets; PORT is 0 to 65535
    in ASCII digits. Raises ``ValueError`` naming what is malformed, so that a typo is a
    usage error rather than a name lookup that fails, or an address that was not meant.
    """
    if "://" in text:
        raise ValueError(f"{text!r}: give HOST:PORT, without a scheme such as http://")
    host, sep, port_text = text.rpartition(":")
    port = whole_number(port_text) if sep else None
    if port is None or not 0 <= port <= 65535:
        raise ValueError(f"{text!r} is not HOST:PORT (a port from 0 to 65535)")
    if host.startswith("[") or host.endswith("]"):
        inner = host[1:-1] if host.startswith("[") and host.endswith("]") else None
        try:
            ipaddress.IPv6Address(inner or "")
        except ValueError:
            raise ValueError(f"{text!r}: brackets hold an IPv6 address, as in [::1]:8080") from None
        return inner or "", port
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{text!r} is not HOST:PORT") from None
        raise ValueError(f"{text!r}: write an IPv6 address in brackets, as in [::1]:8080")
    if host and not _HOST_NAME.match(host):
        raise ValueError(f"{text!r}: {host!r} is not a host name or an IPv4 address")
    return host or "127.0.0.1", port
