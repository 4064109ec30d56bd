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
import time
from pathlib import Path

import pytest
from support import wait_for
from support.capabilities import STRACE, strace_problem, traced_program
from support.serveproc import KEY, ServeProcess, fresh_payload
from support.watchproc import WatchProcess, drop, payload, versions


def _valid(seq: int) -> bytes:
    return payload(seq)


def test_polling_takes_an_in_place_drop_soon_after_its_writer_closes_it(root: Path) -> None:
    """``--polling``: a drop written in place whose writer keeps it open a little while
    (it wrote everything, then closed it a few seconds later) is taken only at the next
    full rescan (``--rescan-interval``, 30 s by default; here an hour), not once it has
    settled after the close.

    docs/operations.md (``--polling``: "files written in place are taken once their size
    and mtime are --settle s old") and SPEC section 3 ("with the polling observer, once
    its size and mtime have been stable for the settle time") promise it is taken within
    about ``--settle`` of being finished. What happens: ``Readiness.check``
    (ingester/intake/readiness.py) finds the file open for writing (a read lease is
    refused) and returns ``Wait(None)``, "look again when an event says so", which is
    right for inotify (its close-write comes) but the polling observer reports no event
    for a close that changes neither size nor mtime; the drop is left out of
    ``pending`` and ``deferred`` (``Backlog.apply``, ingester/intake/groups.py) until a
    rescan finds it. Expected: under polling, a drop found open for writing is looked at
    again after ``--settle`` (as a hard-linked one is), and taken within seconds of the
    close.
    """
    spool = root / "spool"
    with WatchProcess(root, "--polling", "--settle", "0.5", "--rescan-interval", "3600") as w:
        path = spool / "inplace.json"
        with path.open("wb") as writer:
            writer.write(_valid(1))
            writer.flush()
            # Everything is written; the writer holds the file a little longer, past the
            # settle time and several polls, then closes it. (This pause is the writer's
            # behaviour under test, not a synchronisation.)
            time.sleep(2.0)
        closed = time.monotonic()
        try:
            wait_for(lambda: len(versions(root)) == 1, 15, "the drop stored after its close")
        except AssertionError:
            raise AssertionError(
                f"the in-place drop is still waiting {time.monotonic() - closed:.0f} s after "
                f"its writer closed it (settle 0.5 s, polling); spool: "
                f"{sorted(os.listdir(spool))}; log:\n{w.log}"
            ) from None
        assert w.stop() == 0


def test_a_drop_linked_in_by_a_writer_that_then_drops_its_own_name_is_taken_after_its_close(
    root: Path,
) -> None:
    """A writer publishes with ``link(2)`` (the no-clobber way FIELD-NOTES recommends:
    link, then unlink the temp name) while it still holds the file open, and finishes
    writing and closes it a moment later. Its close-write comes under the name it was
    opened by, in ``spool/tmp/`` (not watched); the spool hears only the link's
    IN_CREATE. The drop is taken only at the next full rescan (``--rescan-interval``,
    30 s by default; here an hour): seconds after its close, it still waits.

    docs/design.md: a file "still open for writing ... waits for its close-write (one
    hard-linked in, whose close-write comes under its writer's name elsewhere, is looked
    at again after --settle s)". ``Readiness.check`` (ingester/intake/readiness.py,
    ``linked = st.st_nlink > 1``) tells a hard-linked drop by its link count at the
    moment it looks; once the writer has removed its temp name the count is 1, so the
    drop is taken for one written in place and left to wait for a close-write in the
    spool (``Wait(None)``, which ``Backlog.apply`` in ingester/intake/groups.py keeps
    neither pending nor deferred) that never comes. Expected: a drop that inotify saw
    created by a link (or any drop found open for writing) is looked at again after
    ``--settle``, and stored within seconds of its close.
    """
    spool = root / "spool"
    with WatchProcess(root, "--settle", "0.5", "--rescan-interval", "3600") as w:
        data = _valid(7)
        temp = spool / "tmp" / "writer.part"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, data[:10])
            os.link(temp, spool / "linked.json")  # published, no-clobber
            os.unlink(temp)  # the temp name goes, as the recipe says
            # The writer is a second slower than that (its pause is the behaviour under
            # test, not a synchronisation): the watcher hears of the link meanwhile and
            # finds the file open for writing. Had it not looked by then, it would take
            # the closed file at once and this test would pass: never a false failure.
            time.sleep(1.0)
            os.write(fd, data[10:])
        finally:
            os.close(fd)
        closed = time.monotonic()
        try:
            wait_for(lambda: len(versions(root)) == 1, 10, "the drop stored after its close")
        except AssertionError:
            raise AssertionError(
                f"the drop is still waiting {time.monotonic() - closed:.0f} s after its "
                f"writer closed it (settle 0.5 s); spool: {sorted(os.listdir(spool))}; "
                f"log:\n{w.log}"
            ) from None
        assert versions(root)[0].read_bytes() == data
        assert w.stop() == 0


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
