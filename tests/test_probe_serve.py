"""Probes of ``ingester serve`` (``--watch`` included) found by an adversarial review.

Each test runs a real server on 127.0.0.1 in a subprocess over a real folder and fails
on the code it was written against; each docstring says which promise it holds the
server to. Those marked DOUBTFUL show behaviour that is arguably wrong rather than a
broken promise.
"""

from __future__ import annotations

import os
import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path

from support.serveproc import ServeProcess, fresh_payload, put_version, version_name

API = "/api/claude/console-usage"


def _raw_post(port: int, key: bytes, body: bytes) -> int:
    """A POST whose ``X-API-Key`` header is ``key``'s bytes as they are on the wire."""
    head = (
        b"POST " + API.encode() + b" HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
        b"Content-Type: application/json\r\nX-API-Key: " + key + b"\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(head + body)
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    return int(answer.split(b" ", 2)[1])


def test_a_key_with_a_byte_that_is_not_utf8_in_the_environment_is_one_clear_line(
    root: Path,
) -> None:
    """``CLAUDE_SYNC_API_KEY`` holding a byte that is not UTF-8 (a ``.env`` saved in
    Latin-1: ``clé`` as ``cl\\xe9``) stops the start with ``error: 'utf-8' codec can't
    encode character '\\udce9' in position 2: surrogates not allowed``: it names neither
    the variable nor what to do. The same bytes in ``--api-key-file`` are taken as the
    key (auth.py: the file is read as bytes, the variable's text is ``.encode()``d).
    The promise: every error one clear line (and auth.py's own control-character
    refusal names its source). Either the key is taken as its bytes, as from the file,
    or the line names the variable."""
    env = {"CLAUDE_SYNC_API_KEY": os.fsdecode(b"cl\xe9-key")}
    server = ServeProcess(root, key=None, env=env)
    try:
        server.start()
    except AssertionError:
        server.stop()
        assert "CLAUDE_SYNC_API_KEY" in server.log, server.log
        return
    try:
        assert _raw_post(server.port, b"cl\xe9-key", fresh_payload()) == 202
    finally:
        server.stop()


def test_doubtful_a_latin1_key_a_node_client_sends_is_refused(root: Path) -> None:
    """DOUBTFUL (compatibility): a key with a non-ASCII Latin-1 character (``clé``),
    set in ``CLAUDE_SYNC_API_KEY`` (UTF-8, as every ``.env`` is), sent by a Node.js
    scraper: Node writes header values as Latin-1 (one byte, ``0xE9``) and the original
    Express server read them back as Latin-1 and compared the strings, so it matched.
    Here the header's Latin-1 bytes are compared with the key's UTF-8 bytes
    (``auth.key_matches``), so the same scraper and the same ``.env`` get 401. README:
    "answering the original's requests with the original's answers ... the scraper's and
    the card's configuration stay as they are"."""
    with ServeProcess(root, key="clé-key", key_variable="CLAUDE_SYNC_API_KEY") as server:
        status = _raw_post(server.port, "clé-key".encode("latin-1"), fresh_payload())
        assert status == 202, server.log


def test_doubtful_health_says_no_data_while_the_latest_serves_a_future_dated_version(
    root: Path,
) -> None:
    """DOUBTFUL: the history holds only versions named more than a day ahead of the clock
    (stored before the clock was set back by more than a day: docs/serve.md names the
    case). GET latest serves the oldest of them, with fresh data (docs/serve.md: "Only
    future-dated versions: the oldest of them"); /api/health answers 503 ``"reason": "no
    data stored yet"``, ``latestData`` all null, beside ``"versionCount": 1``. The reason
    is untrue (and the card shows data the health calls absent); it should name the
    future-dated version (as check's ``dated_ahead`` words do), not "no data"."""
    ahead = datetime.now(UTC) + timedelta(days=3)
    put_version(root, version_name(ahead), fresh_payload())
    with ServeProcess(root) as server:
        latest = server.get(API)
        assert latest.status_code == 200 and latest.json()["isStale"] is False
        health = server.get("/api/health").json()
        assert health["versionCount"] == 1
        assert "no data stored yet" not in health["reason"], health


def test_doubtful_serve_over_an_unadopted_history_hides_the_newest_snapshot_silently(
    root: Path,
) -> None:
    """DOUBTFUL: a history as the original server left it, whose
    ``console-usage-synced.json`` is a regular file holding a newer snapshot than any
    version (docs/migrating.md: "the original served the file as its newest snapshot").
    ``serve --watch``, ``watch``, ``init``... refuse with "run 'ingester adopt' first";
    ``serve`` alone (the two-process form's HTTP half) starts without a word and answers
    the card the older version, while /api/health calls the data over 30 minutes old.
    The original's clients get another latest than the original gave them, and nothing
    says why: at least a start-up WARNING naming ``ingester adopt`` (as ``status`` and
    ``verify`` give) is expected."""
    put_version(
        root,
        version_name(datetime.now(UTC) - timedelta(hours=1)),
        fresh_payload(timedelta(hours=1)),
    )
    (root / "console-usage-synced.json").write_bytes(fresh_payload())
    with ServeProcess(root) as server:
        latest = server.get(API).json()
        server.stop()
        assert latest["isStale"] is False or "adopt" in server.log, (latest, server.log)
