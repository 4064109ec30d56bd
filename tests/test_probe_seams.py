"""Probes of the seams between processes around the watcher (adversarial tests).

Each test here FAILS on the code it was written against: it shows a drop lost, stored
twice, a half-written file visible, a traceback or multi-line error, or a promise of the
docs that does not hold, at a seam between processes (a watcher and another watcher,
``serve``, ``submit`` or a writer of the spool). Real CLI processes, real files, real
signals; every wait is on a condition with a deadline.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from support.capabilities import STRACE, strace_problem, traced_program
from support.serveproc import KEY, ServeProcess, fresh_payload
from support.watchproc import WatchProcess, drop, payload, versions


def _valid(seq: int) -> bytes:
    return payload(seq)


def test_serve_never_promises_a_post_to_a_watch_once_that_will_not_take_it(root: Path) -> None:
    """Two processes: ``serve`` alone takes POSTs, and ``watch --once`` (say, from cron)
    drains the spool. A POST that arrives while the ``--once`` run drains its backlog
    is answered 202 ``"waitingForWatcher": false``, "...; the watcher stores it". But a
    ``--once`` run takes only what its start-up scan found: it exits with the drop
    still in the spool ("stopped: N ingested, 0 rejected, 1 waiting"), and nothing stores
    it until some later run.

    docs/serve.md ("One process or two": a POST is "stored within milliseconds while the
    watcher runs; waits in the spool while it does not (and every answer, the log and
    /api/health say so)"; "Without a running watcher, serve never answers a silent
    2xx"). ``WatcherProbe.look`` (ingester/serve/backlog.py) counts any holder that
    noted the purpose ``watch`` and holds the spool's lock as a watcher that will take
    the drop, and ``watch --once`` notes the same ``watch`` (``Watcher.lock_purpose``,
    ingester/intake/watcher.py; ``is_watcher`` in ingester/history/lock.py).
    Expected: a ``--once`` run notes a purpose of its own that ``serve`` does not count
    as a watcher of new drops (the answer then says the drop waits), or the answer's
    promise is kept.
    """
    spool = root / "spool"
    for i in range(2500):  # a backlog of a few seconds for the --once run
        drop(spool, f"b{i:05}.json", _valid(i))
    with ServeProcess(root) as server, WatchProcess(root, "--once") as once:
        once.wait_log("ingested ")  # its start-up scan is behind it: it drains now
        with once.held():  # still running (its lock held) while the POST is answered
            body = fresh_payload(marker="posted during --once")
            answer = server.post(
                "/api/claude/console-usage",
                content=body,
                headers={"X-API-Key": KEY, "Content-Type": "application/json"},
            )
        assert answer.status_code == 202, answer.text
        promised = answer.json()["waitingForWatcher"] is False
        assert once.proc.wait(60) == 0, once.log
        stored = any(p.read_bytes() == body for p in versions(root))
        assert stored or not promised, (
            f"the POST was answered {answer.json()!r}, yet the watch --once run it counted "
            f"on exited without it ({once.log.splitlines()[-1]}); spool: "
            f"{sorted(n for n in os.listdir(spool) if n.endswith('.json'))}"
        )


def test_serve_never_promises_a_post_to_a_watcher_that_is_stopping(root: Path) -> None:
    """Two processes: ``watch`` and ``serve``. The watcher is sent SIGTERM: it stops its
    event source and stops taking drops, runs its last maintenance, logs "stopped: ...",
    and only then lets its locks go. A POST answered in between gets 202
    ``"waitingForWatcher": false`` ("...; the watcher stores it"), and the watcher exits
    without it: it waits in the spool until the next start, with every answer having
    said otherwise.

    docs/serve.md ("One process or two": in the two-process mode a POST is "stored within
    milliseconds while the watcher runs; waits in the spool while it does not (and every
    answer, the log and /api/health say so)"). ``WatcherProbe.look``
    (ingester/serve/backlog.py) counts the lock holder as a watcher that will take the
    drop for as long as the locks are held; ``Watcher._shutdown``
    (ingester/intake/watcher.py) stops the arrivals and runs the final
    ``_maintain(force=True)`` (retention, metadata: seconds on a large history or a slow
    disk) before ``Watcher.run``'s ``finally`` releases the locks, and notes nothing in
    the lock file meanwhile. Here strace delays the spool lock's ``close`` by 3 s to make
    that window wide enough to POST in. Expected: a stopping watcher says so where serve
    looks (its note, or its spool lock given up first), and the answer then says the
    drop waits.
    """
    if strace_problem() is not None:
        pytest.skip(strace_problem() or "")
    (root / "spool").mkdir()
    lock = root / "spool" / ".lock"
    slow_release = (
        STRACE, "-f", "-qq", "-o", "/dev/null", "-P", str(lock),
        "-e", "trace=close", "-e", "inject=close:delay_enter=3000000", "--",
    )  # fmt: skip
    with ServeProcess(root) as server, WatchProcess(root, wrapper=slow_release) as w:
        os.kill(traced_program(w.proc.pid), signal.SIGTERM)
        w.wait_log("stopped: ")  # it takes no drop any more
        body = fresh_payload(marker="posted while the watcher stops")
        answer = server.post(
            "/api/claude/console-usage",
            content=body,
            headers={"X-API-Key": KEY, "Content-Type": "application/json"},
        )
        assert answer.status_code == 202, answer.text
        promised = answer.json()["waitingForWatcher"] is False
        assert w.proc.wait(30) == 0, w.log
        stored = any(p.read_bytes() == body for p in versions(root))
        assert stored or not promised, (
            f"the POST was answered {answer.json()!r} while the watcher was stopping; it "
            f"exited without it; spool: "
            f"{sorted(n for n in os.listdir(root / 'spool') if n.endswith('.json'))}"
        )
