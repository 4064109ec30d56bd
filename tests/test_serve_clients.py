"""What clients can do to ``serve``, from outside: it answers, stays up, serves others,
and logs each client-caused event as one line naming the client, never a traceback.

Every case is raw bytes on a real TCP connection to a real server process. Each
connection has its own source port, so the log lines of one case are found by it among
those logged since the connection opened.
"""

from __future__ import annotations

import contextlib
import json
import re
import shlex
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from support import wait_for
from support.capabilities import needs_strace_root
from support.serveproc import KEY, ServeProcess, fresh_payload, put_version, version_name
from test_integrity import syscall_delayed

API = "/api/claude/console-usage"
T0 = datetime(2026, 11, 1, 12, 0, 0, tzinfo=UTC)
LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) \S")
CLIENT_HELLO = bytes.fromhex("16030100c4010000c00303") + bytes(32) + b"\x00\x00\x02\x13\x01\x01\x00"
POST_HEAD = (
    f"POST {API} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nX-API-Key: {KEY}\r\n"
).encode()

TRIGGER_HEAD = POST_HEAD.replace(API.encode(), f"{API}/trigger".encode())


def whole_post(data: bytes) -> bytes:
    """A whole POST of ``data`` (its Content-Length given), as one client would send it."""
    return POST_HEAD + f"Content-Length: {len(data)}\r\n\r\n".encode() + data


def two_posts() -> bytes:
    """Two whole POSTs of fresh payloads, back to back: pipelined."""
    return whole_post(fresh_payload(seq=1)) + whole_post(fresh_payload(seq=2))


def add_versions(root: Path) -> None:
    for i in range(3):
        put_version(root, version_name(T0 + timedelta(minutes=i), i), fresh_payload(seq=i))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    """One server for the cases below (each case has its own connection and log lines).

    Its deadlines are far longer than any case, so that only what the client does ends
    a request, however slowly a loaded machine schedules the server.
    """
    root = tmp_path_factory.mktemp("clients") / "root"
    root.mkdir()
    add_versions(root)
    with ServeProcess(root, "--body-timeout", "60", "--head-timeout", "60") as proc:
        yield proc


@pytest.fixture(scope="module")
def impatient(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    """A server with short deadlines, for the cases where what the client sends never
    comes: the deadline is then the only possible end, whatever the load."""
    root = tmp_path_factory.mktemp("impatient") / "root"
    root.mkdir()
    add_versions(root)
    with ServeProcess(root, "--body-timeout", "0.5", "--head-timeout", "3") as proc:
        yield proc


def connect(port: int, source: str = "127.0.0.1", source_port: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.settimeout(10)
        # A port given again, as the kernel does with a closed connection's, is bound
        # even while the server still remembers the old connection.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((source, source_port))
        sock.connect(("127.0.0.1", port))
    except BaseException:
        sock.close()
        raise
    return sock


def read_all(sock: socket.socket, deadline_s: float = 10) -> bytes:
    """Everything until the server closes (or a reset, or the deadline)."""
    got = b""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            chunk = sock.recv(65536)
        except (TimeoutError, ConnectionResetError):
            break
        if not chunk:
            break
        got += chunk
    return got


@dataclass(frozen=True)
class Peer:
    """Our end of one connection, as the server's log names it: its port, and how many
    lines the log had before it opened. The kernel gives a closed connection's port to a
    later one, so the port alone can name an earlier case's client too."""

    port: int
    since: int


def log_mark(server: ServeProcess) -> int:
    """How many lines the server has logged so far."""
    return len(server.log.splitlines())


def exchange(
    server: ServeProcess, data: bytes, *, pieces: int = 1, source_port: int = 0
) -> tuple[bytes, Peer]:
    """Send ``data`` (in ``pieces`` writes) on a new connection; the answer and our end."""
    since = log_mark(server)
    with connect(server.port, source_port=source_port) as sock:
        step = -(-len(data) // pieces)
        try:
            for i in range(0, len(data), step):
                sock.sendall(data[i : i + step])
        except (BrokenPipeError, ConnectionResetError):
            pass
        return read_all(sock), Peer(sock.getsockname()[1], since)


def status(answer: bytes) -> int:
    match = re.match(rb"HTTP/1\.1 (\d{3}) ", answer)
    assert match, answer[:200]
    return int(match[1])


def lines_about(server: ServeProcess, peer: Peer) -> list[str]:
    """The lines the server logged about ``peer``'s connection."""
    lines = server.log.splitlines()[peer.since :]
    return [x for x in lines if f"client 127.0.0.1:{peer.port}:" in x]


def assert_log_is_clean(server: ServeProcess) -> None:
    """No traceback anywhere, and every line is one event in our format."""
    log = server.log
    assert "Traceback" not in log and 'File "' not in log, log
    assert "Exception in ASGI application" not in log
    for line in log.splitlines():
        assert LINE.match(line), f"not one event per line: {line!r}"


# Faults in what the client sends: a clear answer, and one line naming the client and
# the fault.
FAULTS = {
    "malformed request line": (b"NONSENSE\r\n\r\n", "sent a malformed request"),
    "raw bytes that are not ASCII in the target": (
        b"GET " + API.encode() + b"?\xff\xfe=1 HTTP/1.1\r\nHost: x\r\n\r\n",
        "sent a malformed request",
    ),
    "header line without a colon": (
        b"GET / HTTP/1.1\r\nHost x\r\n\r\n",
        "sent a malformed request",
    ),
    "NUL in a header": (b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n", "malformed request"),
    "negative Content-Length": (POST_HEAD + b"Content-Length: -1\r\n\r\n", "bad Content-Length"),
    "two Content-Lengths": (
        POST_HEAD + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\n",
        "malformed request",
    ),
    "bad chunked encoding": (
        POST_HEAD + b"Transfer-Encoding: chunked\r\n\r\nZZ\r\nabc\r\n",
        f"sent a malformed body for POST {API}",
    ),
    "a chunk's size line over the head's limit": (
        POST_HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + b"a" * 20_000,
        f"sent a malformed body for POST {API} (a chunk's size line or trailer over the 16 KiB",
    ),
    "both Transfer-Encoding and Content-Length": (
        POST_HEAD + b"Transfer-Encoding: chunked\r\nContent-Length: 7\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
        "sent a malformed request (both Transfer-Encoding and Content-Length)",
    ),
    "TLS on the plain port": (CLIENT_HELLO, "sent a TLS handshake to the plain HTTP port"),
    "HTTP/1.1 without Host": (b"GET / HTTP/1.1\r\n\r\n", "malformed request"),
}


@pytest.mark.parametrize("case", list(FAULTS))
def test_a_malformed_request_is_400_and_one_line(server: ServeProcess, case: str) -> None:
    data, words = FAULTS[case]
    answer, peer = exchange(server, data)
    assert status(answer) == 400
    line = wait_for(lambda: lines_about(server, peer), 10, f"the line about {case}")
    assert len(line) == 1 and words in line[0] and " WARNING " in line[0], line
    assert "answered 400" in line[0]
    assert server.get(API).status_code == 200
    assert_log_is_clean(server)


def json_of(answer: bytes) -> object:
    """The body of one HTTP/1.1 answer, checked to be declared and parsed as JSON."""
    head, _, body = answer.partition(b"\r\n\r\n")
    assert re.search(rb"(?im)^content-type: application/json\r?$", head), answer[:300]
    assert re.search(rb"(?im)^date: ", head), answer[:300]
    return json.loads(body)


@pytest.mark.parametrize("case", [c for c in FAULTS if c != "TLS on the plain port"])
def test_a_malformed_request_is_answered_in_json_saying_why(
    server: ServeProcess, case: str
) -> None:
    """Every answer is JSON, the 400 for bytes HTTP/1.1 refuses too, and its message says
    what was wrong; a POST whose body broke gets the upload's own shape."""
    answer, _peer = exchange(server, FAULTS[case][0])
    assert status(answer) == 400
    body = json_of(answer)
    assert isinstance(body, dict) and body["error"] == "MalformedRequest", body
    assert body["message"].startswith("malformed "), body
    assert "Invalid HTTP request" not in body["message"]
    if case == "both Transfer-Encoding and Content-Length":
        assert "both Transfer-Encoding and Content-Length" in body["message"]
    if case == "bad chunked encoding":
        assert body["success"] is False and body["timestamp"], body
        assert body["message"].startswith(f"malformed body for POST {API} ("), body


def test_a_client_port_given_again_is_told_from_its_earlier_connection(
    server: ServeProcess,
) -> None:
    """Two cases from one source port, one after the other, as the kernel may give them:
    each finds the one line of its own connection."""
    first, second = FAULTS["malformed request line"], FAULTS["TLS on the plain port"]
    _answer, peer = exchange(server, first[0])
    wait_for(lambda: lines_about(server, peer), 10, "the first connection's line")
    _answer, again = exchange(server, second[0], source_port=peer.port)
    assert again.port == peer.port
    line = wait_for(lambda: lines_about(server, again), 10, "the second connection's line")
    assert len(line) == 1 and second[1] in line[0], line


@pytest.mark.parametrize(
    ("body", "expected"),
    [(None, 202), (b"{not json", 400), (b"", 400)],
)
def test_a_client_that_half_closes_after_its_post_still_gets_the_answer(
    server: ServeProcess, body: bytes | None, expected: int
) -> None:
    """Send the whole request, shut down the sending side, then read: a client that got
    no answer would send the snapshot again, and it would be stored twice."""
    spool = server.root / "spool"
    before = {p.name for p in spool.glob("*.json")}
    data = fresh_payload() if body is None else body
    with connect(server.port) as sock:
        sock.sendall(whole_post(data))
        sock.shutdown(socket.SHUT_WR)
        answer = read_all(sock)
    assert status(answer) == expected, answer[:300]
    added = {p.name for p in spool.glob("*.json")} - before
    assert len(added) == (1 if expected == 202 else 0)
    assert_log_is_clean(server)


def test_a_client_that_pipelines_posts_then_half_closes_gets_every_answer(
    server: ServeProcess,
) -> None:
    """Two POSTs sent at once, then the sending side shut: each is answered before the
    connection ends. A drop stored while its connection is closed under it is a 202
    never read, and the snapshot sent again is stored twice."""
    spool = server.root / "spool"
    before = {p.name for p in spool.glob("*.json")}
    with connect(server.port) as sock:
        sock.sendall(two_posts())
        sock.shutdown(socket.SHUT_WR)
        answer = read_all(sock)
    assert re.findall(rb"HTTP/1\.1 (\d{3}) ", answer) == [b"202", b"202"], answer
    added = {p.name for p in spool.glob("*.json")} - before
    assert len(added) == 2
    assert_log_is_clean(server)


SECRET = "not-to-be-echoed-0451"


@pytest.mark.parametrize(
    ("sent", "shown"),
    [
        # The key under a name padded past any length a pattern for it allows.
        (b"X-API-Key" + b" " * 20 + b": " + SECRET.encode(), "illegal header line: b'X-API-Key"),
        # The key after its name without a colon.
        (b"X-API-Key " + SECRET.encode(), "illegal header line: b'X-API-Key <left out>'"),
        # A secret under a name no list of secret headers holds.
        (b"X-Vault-Token: " + SECRET.encode() + b"\x00", "b'X-Vault-Token: <left out>'"),
        # The body's bytes where a chunk's size was due, or its ending CRLF.
        (
            b"Transfer-Encoding: chunked\r\n\r\n" + SECRET.encode(),
            "illegal chunk header: not a chunk size",
        ),
        (
            b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}" + SECRET.encode(),
            "malformed chunk footer: no CRLF where the chunk's size ended it",
        ),
    ],
)
def test_a_refused_request_shows_no_header_value_and_no_body_byte_in_the_log_or_its_answer(
    server: ServeProcess, sent: bytes, shown: str
) -> None:
    """What broke is named (the header's name, the chunk's fault) in the one line and
    in the 400's message alike; any header's value and the body's bytes are neither."""
    answer, peer = exchange(server, POST_HEAD + sent + b"\r\n\r\n")
    assert status(answer) == 400
    body = json_of(answer)
    assert isinstance(body, dict)
    message = body["message"]
    [said] = wait_for(lambda: lines_about(server, peer), 10, "the line about the client")
    assert shown in said and shown in message, (said, message)
    assert SECRET not in said and SECRET not in message
    assert SECRET[:8] not in server.log and SECRET[:8].encode() not in answer
    assert_log_is_clean(server)


def test_a_body_sent_past_its_content_length_is_never_quoted_as_a_request_line(
    server: ServeProcess,
) -> None:
    """The bytes after a body's Content-Length are read as the next request line: there
    they are the client's payload, not a request. The 400 and its line name the fault,
    and show a request line's method at most, never the rest of its bytes."""
    body = b'{"lastUpdated": "2026-12-07T10:00:00.000Z",\n'
    body += b'  "note": "' + SECRET.encode() + b'"}\r\n\r\n'
    head = f"GET {API} HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n".encode()
    answer, peer = exchange(server, head + body)
    refusal = answer[answer.rindex(b"HTTP/1.1 ") :]  # after the GET's own answer
    assert status(refusal) == 400, answer
    assert SECRET.encode() not in refusal and b"2026-12-07T10" not in refusal, refusal
    [said] = wait_for(lambda: lines_about(server, peer), 10, "the line about the client")
    assert "sent a malformed request (illegal request line: b'<left out>')" in said, said
    assert SECRET not in server.log and "note" not in said
    answer, peer = exchange(server, b"GET /a b " + SECRET.encode() + b" HTTP/1.1\r\n\r\n")
    assert status(answer) == 400 and SECRET.encode() not in answer
    [said] = wait_for(lambda: lines_about(server, peer), 10, "the line about the client")
    assert "(illegal request line: b'GET <left out>')" in said, said
    assert SECRET not in server.log
    assert_log_is_clean(server)


def test_a_pipelined_post_cut_short_by_the_clients_eof_is_never_stored(
    server: ServeProcess,
) -> None:
    """A whole POST, then one whose body the client's EOF cut short: the first is
    answered and stored, the second can never end, so it is neither stored nor left
    waiting for its body; one line says so."""
    spool = server.root / "spool"
    before = {p.name for p in spool.glob("*.json")}
    whole, cut = fresh_payload(seq=1), fresh_payload(seq=2)
    posts = whole_post(whole) + whole_post(cut)[:-5]  # the second one's end never sent
    with connect(server.port) as sock:
        port = sock.getsockname()[1]
        since = log_mark(server)
        sock.sendall(posts)
        sock.shutdown(socket.SHUT_WR)
        answer = read_all(sock)
    assert re.findall(rb"HTTP/1\.1 (\d{3}) ", answer) == [b"202"], answer
    added = {p.name for p in spool.glob("*.json")} - before
    assert len(added) == 1
    [said] = wait_for(
        lambda: [x for x in lines_about(server, Peer(port, since)) if "before its POST" in x],
        10,
        "the line about the body cut short",
    )
    assert "nothing was done with it" in said
    assert_log_is_clean(server)


@pytest.mark.parametrize(
    "line",
    [
        b"X-API-Key : " + KEY.encode(),  # a space before the colon
        b"x-api-key: " + KEY.encode()[:3] + b"\x00" + KEY.encode()[3:],
        b"X-API-Key: " + KEY.encode()[:3] + b"\r" + KEY.encode()[3:],
        b"Authorization : Bearer " + KEY.encode(),
    ],
)
def test_a_refused_header_line_never_puts_the_key_in_the_log(
    server: ServeProcess, line: bytes
) -> None:
    head = f"POST {API} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n".encode()
    answer, peer = exchange(server, head + line + b"\r\nContent-Length: 2\r\n\r\n{}")
    assert status(answer) == 400
    [said] = wait_for(lambda: lines_about(server, peer), 10, "the line about the client")
    assert "sent a malformed request" in said and "<left out>" in said, said
    for part in (KEY, KEY[3:], KEY[:3] + "\\x00"):
        assert part not in server.log, said
    assert_log_is_clean(server)


@pytest.mark.parametrize(
    "data",
    [b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes(9), b"GET / HTTP/2.0\r\nHost: x\r\n\r\n"],
)
def test_another_http_version_is_505_and_one_line(server: ServeProcess, data: bytes) -> None:
    answer, peer = exchange(server, data)
    assert status(answer) == 505
    # The answer says what is served, as the line does: HTTP/1.0 is served too.
    assert b"only HTTP/1.0 and 1.1 are served here" in answer
    line = wait_for(lambda: lines_about(server, peer), 10, "the line")
    assert len(line) == 1 and "sent an HTTP/2.0 request line" in line[0], line
    assert "only HTTP/1.0 and 1.1 are served" in line[0]
    assert_log_is_clean(server)


def test_a_head_over_the_limit_is_refused_in_one_line(server: ServeProcess) -> None:
    head = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000
    answer, peer = exchange(server, head, pieces=10)
    assert answer == b"" or status(answer) == 400
    line = wait_for(lambda: lines_about(server, peer), 10, "the line")
    assert len(line) == 1 and "a request head over the 16 KiB limit" in line[0], line
    assert_log_is_clean(server)


@pytest.mark.parametrize("method", ["GET", "POST", "MADEUP431"])
def test_too_many_headers_are_431_and_one_line(server: ServeProcess, method: str) -> None:
    # Small enough for the head limit, too many for the header limit: the app answers
    # 431, and that refusal is logged like every other, naming the client.
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(150))
    head = f"{method} {API} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n".encode()
    answer, peer = exchange(server, head + many + b"\r\n")
    assert status(answer) == 431
    assert b"\r\nconnection: close\r\n" in answer.lower()  # not kept on for another request
    line = wait_for(lambda: lines_about(server, peer), 10, "the line")
    assert len(line) == 1 and " WARNING " in line[0], line
    assert f"{method} {API}: sent 152 headers, " in line[0]
    assert line[0].endswith("(the limits: 100 headers, 16384 bytes); answered 431")
    # Counted, under "other" for a method a client made up: a label value per made-up
    # token would grow /metrics without bound.
    counted = server.get("/metrics").text
    label = "other" if method == "MADEUP431" else method
    assert "MADEUP431" not in counted
    assert f'ingester_http_requests_total{{method="{label}",route="other",status="431"}}' in counted
    assert_log_is_clean(server)


# Requests that are odd but well-formed: answered by the app, no line needed.
ODD = {
    "HEAD": (b"HEAD " + API.encode() + b" HTTP/1.1\r\nHost: x\r\n", 200),
    "OPTIONS": (b"OPTIONS " + API.encode() + b" HTTP/1.1\r\nHost: x\r\n", 405),
    "OPTIONS *": (b"OPTIONS * HTTP/1.1\r\nHost: x\r\n", 404),
    "an unknown method": (b"BREW " + API.encode() + b" HTTP/1.1\r\nHost: x\r\n", 405),
    "invalid UTF-8 in a query value": (
        b"GET " + API.encode() + b"?version=%ff%fe HTTP/1.1\r\n",
        400,
    ),
    "invalid UTF-8 in a timestamp": (
        b"GET " + API.encode() + b"?timestamp=%C0%AF HTTP/1.1\r\n",
        400,
    ),
    "invalid UTF-8 in a query name": (b"GET " + API.encode() + b"?%ff=1 HTTP/1.1\r\n", 200),
    "invalid UTF-8 in a path": (
        b"GET " + API.encode() + b"/versions/%ff%fe.json HTTP/1.1\r\n",
        404,
    ),
    "invalid UTF-8 in the series bounds": (
        b"GET " + API.encode() + b"/series?since=%ff HTTP/1.1\r\n",
        400,
    ),
    "a NUL in a path": (b"GET /%00 HTTP/1.1\r\n", 404),
    "a key that is not UTF-8": (
        POST_HEAD.replace(KEY.encode(), b"\xff\xfe") + b"Content-Length: 2\r\n",
        401,
    ),
    # What a client sends to a proxy: RFC 9112 has every server accept it.
    "an absolute-form target": (b"GET http://x" + API.encode() + b" HTTP/1.1\r\n", 200),
    "an absolute-form target with a port and a query": (
        b"GET HTTPS://x:4000" + API.encode() + b"?version=1 HTTP/1.1\r\n",
        200,
    ),
    "an absolute-form target with no path": (b"GET http://x:4000 HTTP/1.1\r\n", 200),
    "a malformed Host": (b"GET " + API.encode() + b" HTTP/1.1\r\nHost: [\r\n", 200),
    "a malformed X-Forwarded-For": (
        b"GET " + API.encode() + b" HTTP/1.1\r\nX-Forwarded-For: [::1, ,,%%\r\n"
        b"X-Forwarded-Proto: \xff\r\n",
        200,
    ),
    "a huge Content-Length": (POST_HEAD + b"Content-Length: 99999999999999999999\r\n", 413),
}


@pytest.mark.parametrize("case", list(ODD))
def test_odd_requests_are_answered_without_a_traceback(server: ServeProcess, case: str) -> None:
    head, expected = ODD[case]
    if b"Host:" not in head:
        head += b"Host: x\r\n"
    answer, peer = exchange(server, head + b"Connection: close\r\n\r\n")
    assert status(answer) == expected, answer[:300]
    assert len(lines_about(server, peer)) <= 1
    assert_log_is_clean(server)


def test_an_upgrade_is_answered_as_http_1_1_in_one_line(server: ServeProcess) -> None:
    for protocol in (b"websocket", b"h2c"):
        answer, peer = exchange(
            server,
            b"GET " + API.encode() + b" HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, close\r\n"
            b"Upgrade: " + protocol + b"\r\n\r\n",
        )
        assert status(answer) == 200
        line = wait_for(lambda peer=peer: lines_about(server, peer), 10, "the line")
        assert len(line) == 1 and f"asked to switch to {protocol.decode()}" in line[0], line
    assert "pip install" not in server.log  # uvicorn's advice to its own users
    assert_log_is_clean(server)


def test_a_post_whose_body_never_arrives_is_408_and_one_line(impatient: ServeProcess) -> None:
    expect = POST_HEAD + b"Expect: 100-continue\r\n"
    for head in (POST_HEAD, expect, POST_HEAD.replace(b"Host: x", b"Host: [")):
        answer, peer = exchange(impatient, head + b"Content-Length: 400\r\n\r\n")
        assert b"HTTP/1.1 408 " in answer
        assert b"\r\nconnection: close\r\n" in answer.lower()  # not left open for the rest
        line = wait_for(lambda peer=peer: lines_about(impatient, peer), 10, "the line")
        assert len(line) == 1, line
        assert " WARNING " in line[0]
        assert f"POST {API}: body not received within 0.5 s (0 bytes came)" in line[0]
    assert_log_is_clean(impatient)


@pytest.mark.parametrize(
    ("head", "code"),
    [
        (POST_HEAD.replace(f"X-API-Key: {KEY}\r\n".encode(), b""), 401),
        (POST_HEAD.replace(b"application/json", b"text/plain"), 415),
        (POST_HEAD + b"Content-Encoding: gzip\r\n", 415),
        (TRIGGER_HEAD.replace(f"X-API-Key: {KEY}\r\n".encode(), b""), 401),
        (TRIGGER_HEAD, 501),
        (POST_HEAD.replace(API.encode(), b"/api/health"), 405),
        (POST_HEAD.replace(API.encode(), b"/no/such/path"), 404),
    ],
    ids=[
        "no key",
        "not JSON",
        "compressed",
        "trigger without key",
        "trigger without command",
        "read-only path",
        "no such path",
    ],
)
def test_a_refusal_before_the_body_ends_the_connection(
    server: ServeProcess, head: bytes, code: int
) -> None:
    # A refused client that says its body is a terabyte must not be read from until it
    # has sent it all: the answer ends the connection.
    answer, _peer = exchange(server, head + b"Content-Length: 1000000000000\r\n\r\n{")
    assert status(answer) == code
    assert b"\r\nconnection: close\r\n" in answer.lower()


@pytest.mark.parametrize(
    "head",
    [
        b"GET /api/health HTTP/1.1\r\nHost: x\r\n",
        TRIGGER_HEAD.replace(b"Content-Type: application/json\r\n", b""),
    ],
    ids=["health", "trigger"],
)
def test_an_answer_given_before_the_body_is_read_ends_the_connection(
    root: Path, head: bytes
) -> None:
    """A route that answers without reading the body its request announces (the health;
    the trigger, which ignores any body) ends the connection with that answer. Kept
    open, the rest of the body would be read after the answer, where a fault in it
    (bytes that are no chunk) can get no answer of its own: nothing the client sends
    then may end in a line of the server's own fault, or a line saying it answered."""
    put_version(root, version_name(datetime.now(UTC)), fresh_payload())  # healthy: 200
    command = f"{shlex.quote(sys.executable)} -c pass"
    with ServeProcess(root, "--trigger-command", command) as server:
        with connect(server.port) as sock:
            sock.sendall(head + b"Transfer-Encoding: chunked\r\n\r\n")
            answer = b""
            while b"\r\n\r\n" not in answer:
                got = sock.recv(65536)
                assert got, f"closed before the answer: {answer!r}"
                answer += got
            with contextlib.suppress(OSError):
                sock.sendall(b"zz\r\n")  # no chunk size
            answer += read_all(sock)  # until the server closes
        server.stop()
    assert status(answer) == 200, answer
    assert "ERROR" not in server.log and "answered 400" not in server.log, server.log
    assert_log_is_clean(server)
    assert b"\r\nconnection: close\r\n" in answer.lower(), answer


def test_a_client_that_leaves_mid_body_is_one_line(server: ServeProcess) -> None:
    since = log_mark(server)
    with connect(server.port) as sock:
        sock.sendall(POST_HEAD + b"Content-Length: 400\r\n\r\n" + b'{"lastUpdated":')
        peer = Peer(sock.getsockname()[1], since)
    line = wait_for(lambda: lines_about(server, peer), 10, "the line")
    assert len(line) == 1
    assert f"closed the connection before its POST {API} body was complete" in line[0]
    assert "(Content-Length 400)" in line[0]
    assert_log_is_clean(server)


def test_clients_that_reset_mid_answer_leave_no_traceback(server: ServeProcess) -> None:
    for path in ("/metrics", API, "/", "/openapi.json"):
        for _ in range(5):
            sock = connect(server.port)
            # A tiny receive window and an abortive close (RST) while the answers are
            # being written: a pipelined batch of requests, then gone.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode() * 20)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
    assert server.get(API).status_code == 200
    assert_log_is_clean(server)


def test_heads_cut_off_at_the_deadline_are_summarised(impatient: ServeProcess) -> None:
    silent = connect(impatient.port)
    partial = connect(impatient.port)
    partial.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    try:
        for sock in (silent, partial):
            answer = read_all(sock)
            assert answer.startswith(b"HTTP/1.1 408 ")
            # A 4xx like any other: JSON, and dated (RFC 9110 6.6.1).
            assert json_of(answer) == {
                "error": "RequestTimeout",
                "message": "request head not received within 3 s",
            }
    finally:
        silent.close()
        partial.close()
    wait_for(lambda: "without a request head within 3 s" in impatient.log, 15, "the summary")
    assert_log_is_clean(impatient)


# -- one client cannot lock out the others --------------------------------------------------


def half_heads(port: int, count: int, source: str) -> list[socket.socket]:
    """``count`` connections from ``source``, each with half a request head sent."""
    socks = []
    for _ in range(count):
        sock = connect(port, source)
        try:
            sock.sendall(b"GET " + API.encode() + b" HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused and closed already
        socks.append(sock)
    return socks


def scrape(port: int, source: str) -> str:
    transport = httpx.HTTPTransport(local_address=source)
    with httpx.Client(transport=transport, base_url=f"http://127.0.0.1:{port}", timeout=10) as c:
        return c.get("/metrics").text


def sample(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(match[1]) if match else -1.0


def refusal_counts(log: str) -> list[int]:
    return [int(m[1]) for m in re.finditer(r"WARNING refused (\d+) connections?\b", log)]


def test_one_slow_address_cannot_take_every_slot(root: Path) -> None:
    """300 half-open heads from one address (the defaults: 256 in all, 32 per address)."""
    add_versions(root)
    # A head deadline far beyond the test's length: the slots stay taken throughout.
    with ServeProcess(root, "--head-timeout", "120") as server:
        slow = half_heads(server.port, 300, "127.0.0.1")
        try:
            refused = 'ingester_http_connections_refused_total{reason="per_client"}'
            wait_for(
                lambda: sample(scrape(server.port, "127.0.0.2"), refused) == 268,
                30,
                "every connection over the share to be refused",
            )
            # Other addresses are served meanwhile, within the head deadline or not.
            for source in ("127.0.0.2", "127.0.0.3", "127.0.0.4"):
                transport = httpx.HTTPTransport(local_address=source)
                with httpx.Client(transport=transport, base_url=server.base, timeout=10) as c:
                    assert c.get(API).status_code == 200
            # The slow address itself is told why it is refused, at once.
            answer = read_all(slow[-1])
            assert status(answer) == 503 and b"TooManyConnections" in answer
            assert b"this address holds 32 connections" in answer
            text = scrape(server.port, "127.0.0.2")
            assert sample(text, "ingester_http_connections_open") >= 32
        finally:
            for sock in slow:
                sock.close()
        assert server.stop() == 0
    log = server.log
    assert "Exceeded concurrency limit" not in log
    counts = refusal_counts(log)
    # One line at once, then at most one per 10 s interval and a last one at stop.
    assert 1 <= len(counts) <= 3, log
    assert sum(counts) == 268
    assert "most from 127.0.0.1 (" in log
    assert re.search(
        r"serve: stopped: \d+ requests answered, 0 POSTs accepted, 268 connections refused", log
    )
    assert_log_is_clean(server)


def test_when_every_slot_is_taken_new_clients_are_refused_at_once(root: Path) -> None:
    add_versions(root)
    args = ("--max-connections", "12", "--max-connections-per-client", "4")
    with ServeProcess(root, *args, "--head-timeout", "30") as server:
        held = [
            s
            for source in ("127.0.0.2", "127.0.0.3", "127.0.0.4")
            for s in half_heads(server.port, 4, source)
        ]
        try:
            with connect(server.port, "127.0.0.5") as sock:
                sock.sendall(b"GET " + API.encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n")
                answer = read_all(sock)
            assert status(answer) == 503
            assert b"all 12 connections are taken" in answer
        finally:
            for sock in held:
                sock.close()
        # Slots come back as soon as connections close.
        wait_for(lambda: server.get(API).status_code == 200, 10, "room again")
        assert server.stop() == 0
    assert "1 with every slot taken" in server.log
    assert_log_is_clean(server)


# -- stopping ---------------------------------------------------------------------------------


def test_a_body_still_awaited_at_stop_is_one_line_and_a_503(root: Path) -> None:
    add_versions(root)
    server = ServeProcess(root, "--body-timeout", "60").start()
    since = log_mark(server)
    with connect(server.port) as sock:
        sock.sendall(POST_HEAD + b"Content-Length: 400\r\n\r\n{")
        peer = Peer(sock.getsockname()[1], since)
        # Open: this POST's connection and the scrape's own.
        opened = "ingester_http_connections_open"
        wait_for(lambda: sample(server.get("/metrics").text, opened) >= 2, 10, "the POST")
        assert server.stop() == 0
        answer = read_all(sock)
    assert status(answer) == 503 and b"ServerStopping" in answer
    # The upload's own shape, which the scraper reads: nothing was kept.
    body = json.loads(answer.split(b"\r\n\r\n", 1)[1])
    assert body["success"] is False and body["timestamp"].endswith("Z"), body
    assert body["message"] == "the server is stopping; retry"
    line = lines_about(server, peer)
    assert len(line) == 1 and " WARNING " in line[0]
    assert f"POST {API} was still sending its request body when the server stopped" in line[0]
    assert " ERROR " not in server.log
    assert "serve: stopped: " in server.log.splitlines()[-1]
    assert_log_is_clean(server)


@needs_strace_root
def test_a_drop_still_being_written_when_the_grace_period_ends_is_answered_as_kept(
    root: Path,
) -> None:
    """The stop's grace period ends while a POST's drop is being made durable (every
    fsync of the server held up 4 s by strace): the answer must say what became of the
    drop, never "stopping; retry" for a snapshot kept after all (its retry would be
    stored a second time)."""
    add_versions(root)
    server = ServeProcess(root, "--body-timeout", "60").start()
    staged = root / "spool" / "tmp"
    answer: list[httpx.Response] = []
    try:
        with syscall_delayed(server.proc.pid, "fsync", 4_000_000, every_thread=True):
            data = fresh_payload(seq=9)

            def post() -> None:
                headers = {"Content-Type": "application/json", "X-API-Key": KEY}
                with httpx.Client(base_url=server.base, timeout=120) as client:
                    answer.append(client.post(API, content=data, headers=headers))

            poster = threading.Thread(target=post)
            poster.start()
            wait_for(
                lambda: staged.is_dir() and any(staged.iterdir()), 30, "the drop being written"
            )
            server.proc.send_signal(signal.SIGTERM)
            poster.join(120)
            assert server.proc.wait(120) == 0, server.log
    finally:
        server.stop()
    drops = sorted(p.name for p in (root / "spool").glob("*.json"))
    assert len(drops) == 1, server.log  # the write went through
    assert answer and answer[0].status_code == 202, (answer, server.log)
    assert answer[0].json()["drop"] == drops[0]
    assert "was being written when the server stopped; it is kept" in server.log
    assert_log_is_clean(server)


@needs_strace_root
def test_pipelined_posts_then_a_half_close_then_a_stop_store_exactly_what_is_answered(
    root: Path,
) -> None:
    """Two whole POSTs sent at once, the client's sending side shut, and a stop while the
    first's drop is being made durable (every fsync held up 1 s by strace): each drop
    stored is answered 202, and each 202 names a drop stored. A POST stored without its
    answer would be sent again and stored twice; one answered and not stored is lost."""
    add_versions(root)
    server = ServeProcess(root).start()
    spool, staged = root / "spool", root / "spool" / "tmp"
    try:
        with syscall_delayed(server.proc.pid, "fsync", 1_000_000, every_thread=True):
            with connect(server.port) as sock:
                sock.sendall(two_posts())
                sock.shutdown(socket.SHUT_WR)
                wait_for(lambda: staged.is_dir() and any(staged.iterdir()), 30, "a drop written")
                server.proc.send_signal(signal.SIGTERM)
                answer = read_all(sock, 60)
            assert server.proc.wait(60) == 0, server.log
    finally:
        server.stop()
    stored = sorted(p.name for p in spool.glob("*.json"))
    answered = re.findall(rb'"drop":"([^"]+)"', answer)
    assert sorted(name.decode() for name in answered) == stored, (answer, server.log)
    assert stored, server.log  # the first, under way at the stop, is seen through
    assert re.findall(rb"HTTP/1\.1 (\d{3}) ", answer).count(b"202") == len(stored)
    assert_log_is_clean(server)
