"""Probes of ``ingester serve`` (``--watch`` included) found by an adversarial review.

Each test runs a real server on 127.0.0.1 in a subprocess over a real folder and fails
on the code it was written against; each docstring says which promise it holds the
server to. Those marked DOUBTFUL show behaviour that is arguably wrong rather than a
broken promise.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from support.serveproc import ServeProcess, fresh_payload, put_version, version_name

API = "/api/claude/console-usage"


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
