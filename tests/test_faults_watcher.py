"""Real storage faults, as root, against the real ``ingester watch`` in a subprocess.

* ``chattr +i`` on the history: EPERM even for root;
* the history on a 4 MB tmpfs filled up: ENOSPC;
* the history on a tmpfs made read-only: EROFS.

While the fault lasts, drops stay in the spool with their bytes unchanged and the log
names the drop, the path and the cause; once it is cleared the watcher heals by itself,
without a restart: every drop stored exactly once, metadata and latest link right. In
the tmpfs cases the spool stays on the ordinary filesystem, so spool and history are on
different filesystems.

The read-only case uses a read-only *bind* mount over the tmpfs (``mount --bind DIR DIR``
then ``mount -o remount,bind,ro DIR``): a plain ``mount -o remount,ro DIR`` fails with
EBUSY while the watcher runs, because it holds ``<history>/.lock`` open for writing.

Skipped, with the reason, when not root or when chattr/mount do not work here.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from support import cli_env, run_cli, wait_for
from support.capabilities import (
    OTHER_UID,
    STRACE,
    fill,
    limited_threads,
    needs_strace_root,
    other_user_problem,
    others_folder,
    tmpfs,
)
from support.serveproc import KEY, ServeProcess
from support.watchproc import WatchProcess, drop, payload, versions
from test_crashpoints import Expect, final_problems, settings_for

from ingester.threads import THREAD_LIMIT

WATCH_ARGS = ("--retry-max", "0.5", "--rescan-interval", "1")
VERBOSE = ("-v",)  # a fault that stands is an ERROR line once; each retry at DEBUG


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)


def drops_for(tag: str, count: int) -> dict[str, bytes]:
    return {f"{tag}-{i}.json": payload(i, fault=tag) for i in range(count)}


def fault_then_heal(
    root: Path,
    watcher: WatchProcess,
    history: Path,
    cause: str,
    start_fault: object,
    clear_fault: object,
    tag: str,
) -> None:
    """Drops while the fault lasts wait untouched and are logged; after it, all are stored."""
    settings = settings_for(
        root, history_dir=str(history), latest_path=str(watcher_latest(root, history))
    )
    before = drops_for("before", 2)
    for name, data in before.items():
        drop(settings.spool_dir, name, data)
    claimed = settings.spool_dir / ".claimed"
    # Stored, not only claimed: a fault between the claim and the commit would put the
    # warm-up drop back first in line, ahead of the drops this test looks at.
    wait_for(
        lambda: (
            not any((settings.spool_dir / n).exists() for n in before) and not os.listdir(claimed)
        ),
        15,
        "warm-up",
    )
    start_fault()  # type: ignore[operator]
    during = drops_for(tag, 3)
    for name, data in during.items():
        drop(settings.spool_dir, name, data)
    first = sorted(during)[0]
    pattern = re.compile(
        rf"cannot store drop {re.escape(first)}: .*{re.escape(str(history))}.*\[{cause}\]"
    )
    wait_for(lambda: pattern.search(watcher.log), 15, f"{cause} logged for {first}")
    # Backing off and retrying: the failure repeats (at DEBUG once its waits are the
    # longest: the watcher runs with -v here), the drops stay where they were.
    count = len(pattern.findall(watcher.log))
    wait_for(lambda: len(pattern.findall(watcher.log)) > count, 15, "a retry")
    assert watcher.proc.poll() is None, watcher.log

    # Each retry may claim the drops (a rename into .claimed/) before its step fails and
    # puts them back: a look that falls within the next retry, on a busy machine, finds
    # a drop gone for that moment. Waited for, then: every drop back in the spool with
    # its bytes (other bytes fail at once).
    def untouched() -> bool:
        for name, data in during.items():
            try:
                seen = (settings.spool_dir / name).read_bytes()
            except FileNotFoundError:
                return False  # claimed by the retry under way
            assert seen == data, f"{name} was touched"
        return True

    wait_for(untouched, 15, "the drops back in the spool between two retries")
    clear_fault()  # type: ignore[operator]
    expect = Expect(settings, [*before.values(), *during.values()], {})
    # While it runs, an empty spare temp file for the next copy may be there.
    wait_for(lambda: not final_problems(expect, running=True), 20, "healed after the fault")
    assert watcher.proc.poll() is None, watcher.log
    assert watcher.stop() == 0, watcher.log
    assert final_problems(expect) == []


def watcher_latest(root: Path, history: Path) -> Path:
    return history.parent / "console-usage-synced.json"


def test_immutable_history_eperm_then_heals(root: Path, can_chattr: None) -> None:
    history = root / "console-usage-history"
    with contextlib.ExitStack() as stack:
        stack.callback(_run, "chattr", "-i", str(history))
        watcher = stack.enter_context(WatchProcess(root, *WATCH_ARGS, global_args=VERBOSE))

        def start() -> None:
            assert _run("chattr", "+i", str(history)).returncode == 0

        def clear() -> None:
            assert _run("chattr", "-i", str(history)).returncode == 0

        fault_then_heal(root, watcher, history, "EPERM", start, clear, "immutable")


def test_a_failing_link_backs_off_doubling_up_to_retry_max(root: Path, can_chattr: None) -> None:
    # The drop is read, judged, claimed and staged every time; only its link fails. The
    # steps that went through must not reset the wait that the link's failure set.
    history = root / "console-usage-history"
    with contextlib.ExitStack() as stack:
        stack.callback(_run, "chattr", "-i", str(history))
        watcher = stack.enter_context(WatchProcess(root, "--retry-max", "2", global_args=VERBOSE))
        assert _run("chattr", "+i", str(history)).returncode == 0
        settings = settings_for(root, history_dir=str(history))
        drop(settings.spool_dir, "linked-late.json", payload(0, fault="link"))
        waits = re.compile(r"cannot store drop linked-late\.json: .*\[EPERM\]; retrying in (\S+) s")
        wait_for(lambda: len(waits.findall(watcher.log)) >= 4, 30, "four failed rounds")
        assert [float(w) for w in waits.findall(watcher.log)[:4]] == [0.5, 1.0, 2.0, 2.0]
        assert _run("chattr", "-i", str(history)).returncode == 0
        wait_for(lambda: "ingested linked-late.json" in watcher.log, 30, "stored once healed")
        assert watcher.stop() == 0, watcher.log


def test_once_says_each_cache_failure_once_and_promises_no_retry(
    root: Path, can_chattr: None
) -> None:
    assert run_cli(root, "init").returncode == 0
    settings = settings_for(root)
    drop(settings.spool_dir, "a.json", payload(0, fault="once"))
    with contextlib.ExitStack() as stack:
        # The root immutable: the version is stored, the latest link cannot be made.
        stack.callback(_run, "chattr", "-i", str(root))
        assert _run("chattr", "+i", str(root)).returncode == 0
        done = run_cli(root, "watch", "--once")
    assert done.returncode == 0, done.stderr
    errors = [line for line in done.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1, done.stderr
    assert "cannot refresh the latest link" in errors[0]
    assert errors[0].endswith("[EPERM]; left for the next start"), errors[0]
    assert "retrying in" not in done.stderr


@pytest.mark.parametrize("step", ["take", "set aside", "store"])
def test_once_leaves_a_drop_it_cannot_finish_and_promises_no_retry(
    root: Path, can_chattr: None, step: str
) -> None:
    # --once never waits out a backoff: a line that promised a retry would be a lie, and
    # the run must still end with its summary and the stop line.
    assert run_cli(root, "init").returncode == 0
    spool = root / "spool"
    if step == "set aside":
        shutil.rmtree(spool / "rejected", ignore_errors=True)
        (spool / "rejected").write_bytes(b"")  # a file where the quarantine belongs
        drop(spool, "a.json", b"{}")
    else:
        drop(spool, "a.json", payload(0))
    frozen = spool / ".claimed" if step == "take" else root / "console-usage-history"
    frozen.mkdir(exist_ok=True)
    with contextlib.ExitStack() as stack:
        stack.callback(_run, "chattr", "-i", str(frozen))
        assert _run("chattr", "+i", str(frozen)).returncode == 0
        done = run_cli(root, "watch", "--once")
    assert done.returncode == 1, done.stderr
    lines = done.stderr.splitlines()
    assert "retrying" not in done.stderr, done.stderr
    said = {"take": "cannot take drop a.json", "set aside": "cannot set aside a.json"}
    (failed,) = [line for line in lines if said.get(step, "cannot store drop a.json") in line]
    assert failed.endswith("; left in the spool for the next start"), failed
    assert " stopped: 0 ingested, 0 rejected, 1 waiting" in lines[-1], done.stderr
    assert (spool / "a.json").exists() and versions(root) == []


def test_a_failure_at_stop_is_left_for_the_next_start(root: Path, can_chattr: None) -> None:
    # The last round at a stop fails as the ones before it did; it must not promise a
    # retry that this process will never make.
    with contextlib.ExitStack() as stack:
        watcher = stack.enter_context(WatchProcess(root))
        stack.callback(_run, "chattr", "-i", str(root))
        assert _run("chattr", "+i", str(root)).returncode == 0  # no latest link can be made
        drop(root / "spool", "a.json", payload(0, fault="stop"))
        watcher.wait_log("cannot refresh the latest link")
        assert watcher.stop() == 0, watcher.log
    lines = watcher.log.splitlines()
    stopped = next(i for i, line in enumerate(lines) if " stopped: 1 ingested" in line)
    errors = [line for line in lines[:stopped] if " ERROR " in line]
    assert errors[-1].endswith("[EPERM]; left for the next start"), watcher.log
    assert lines[stopped - 1] == errors[-1]
    assert [p.read_bytes() for p in versions(root)] == [payload(0, fault="stop")]


def test_full_tmpfs_history_enospc_then_heals(root: Path, tmp_path: Path, can_mount: None) -> None:
    fs = tmp_path / "fs"
    history = fs / "history"
    with contextlib.ExitStack() as stack:
        stack.enter_context(tmpfs(fs))
        watcher = stack.enter_context(
            WatchProcess(
                root,
                *WATCH_ARGS,
                global_args=(
                    *VERBOSE,
                    "--history-dir",
                    str(history),
                    "--latest-path",
                    str(fs / "console-usage-synced.json"),
                ),
            )
        )
        filler: list[Path] = []

        def start() -> None:
            with contextlib.suppress(OSError):
                filler.append(fill(fs))
            if not filler:  # the close may fail too; the file is there all the same
                filler.append(fs / "filler")

        def clear() -> None:
            filler[0].unlink()

        fault_then_heal(root, watcher, history, "ENOSPC", start, clear, "full")


def test_read_only_tmpfs_history_erofs_then_heals(
    root: Path, tmp_path: Path, can_mount: None
) -> None:
    fs = tmp_path / "fs"
    history = fs / "history"
    with contextlib.ExitStack() as stack:
        stack.enter_context(tmpfs(fs))
        watcher = stack.enter_context(
            WatchProcess(
                root,
                *WATCH_ARGS,
                global_args=(
                    *VERBOSE,
                    "--history-dir",
                    str(history),
                    "--latest-path",
                    str(fs / "console-usage-synced.json"),
                ),
            )
        )

        def start() -> None:
            for cmd in (
                ("mount", "--bind", str(fs), str(fs)),
                ("mount", "-o", "remount,bind,ro", str(fs)),
            ):
                result = _run(*cmd)
                assert result.returncode == 0, result.stderr

        def clear() -> None:
            result = _run("mount", "-o", "remount,bind,rw", str(fs))
            assert result.returncode == 0, result.stderr

        fault_then_heal(root, watcher, history, "EROFS", start, clear, "readonly")


@needs_strace_root
@pytest.mark.parametrize(
    ("call", "code", "words"),
    [
        (
            "inotify_init,inotify_init1",
            "EMFILE",
            "out of inotify instances or open files [EMFILE]: raise the sysctl "
            "fs.inotify.max_user_instances (or the open-files limit), or use --polling",
        ),
        (
            "inotify_add_watch",
            "ENOSPC",
            "out of inotify watches [ENOSPC]: raise the sysctl fs.inotify.max_user_watches, "
            "or use --polling",
        ),
    ],
)
def test_a_spool_that_cannot_be_watched_is_said_with_the_limit_to_raise(
    root: Path, call: str, code: str, words: str
) -> None:
    """The user's inotify limits (instances, watches) are met when the watcher starts:
    one line naming the limit and what to do, exit 1, and no drop touched."""
    drop(root / "spool", "waiting.json", payload(1))
    inject = ("-f", "-qq", "-o", "/dev/null", "-e", f"inject={call}:error={code}")
    done = run_cli(root, "watch", wrapper=(STRACE, *inject))
    assert done.returncode == 1, done.stderr
    errors = [line for line in done.stderr.splitlines() if " ERROR " in line]
    assert errors == [errors[0]] and errors[0].endswith(
        f"ERROR cannot watch {root / 'spool'}: {words}"
    ), done.stderr
    assert "Traceback" not in done.stderr and "[Errno" not in done.stderr
    assert (root / "spool" / "waiting.json").read_bytes() == payload(1)
    assert versions(root) == []


PRLIMIT = shutil.which("prlimit")
# Low enough that a full group of 256 drops, each holding a descriptor until the group is
# durable, runs out (as it did), high enough for the process itself to start and run.
FEW_FILES = ("--nofile=64:64", "--")


@pytest.mark.skipif(PRLIMIT is None, reason="prlimit (util-linux) is not installed")
def test_a_backlog_under_a_low_limit_on_open_files_is_stored_whole(root: Path) -> None:
    """Each drop of a group keeps a descriptor open until the group is durable: groups are
    sized to the limit on open files, so a backlog goes through instead of failing on
    the same full group again and again."""
    sent = drops_for("backlog", 300)
    for name, data in sent.items():
        drop(root / "spool", name, data)
    done = run_cli(root, "watch", "--once", wrapper=(PRLIMIT or "prlimit", *FEW_FILES))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Too many open files" not in done.stderr
    assert sorted(p.read_bytes() for p in versions(root)) == sorted(sent.values())
    assert not [p for p in (root / "spool").iterdir() if p.suffix == ".json"]


@pytest.mark.skipif(PRLIMIT is None, reason="prlimit (util-linux) is not installed")
def test_a_burst_under_a_low_limit_on_open_files_is_stored_whole(root: Path) -> None:
    sent = drops_for("burst", 300)
    with WatchProcess(root, *WATCH_ARGS, wrapper=(PRLIMIT or "prlimit", *FEW_FILES)) as watcher:
        for name, data in sent.items():
            drop(root / "spool", name, data)
        wait_for(lambda: len(versions(root)) >= len(sent), 60, "every drop of the burst stored")
        assert watcher.stop() == 0
    assert "Too many open files" not in watcher.log
    assert sorted(p.read_bytes() for p in versions(root)) == sorted(sent.values())


# Its own uid (see limited_threads).
LIMITED_UID = OTHER_UID + 101
API = "/api/claude/console-usage"
POST_HEADERS = {"X-API-Key": KEY, "Content-Type": "application/json"}
WHY_NOT_AS_ANOTHER_USER = other_user_problem()


def _as_limited(threads: int) -> tuple[str, ...]:
    """Run as :data:`LIMITED_UID`, allowed ``threads`` threads (its main one included)."""
    return limited_threads(threads, LIMITED_UID)


def _python_limited(
    threads: int, *args: str, timeout: float, wrapper: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    """``python ARGS`` as :data:`LIMITED_UID`, allowed ``threads`` threads, run under
    ``wrapper`` (strace, say) if given."""
    return subprocess.run(
        [*wrapper, *_as_limited(threads), sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=cli_env(),
        cwd="/",
        check=False,
    )


def _limited(root: Path, threads: int, *args: str, timeout: float) -> tuple[int, str]:
    """``ingester --root ROOT ARGS`` as :data:`LIMITED_UID`, allowed ``threads`` threads;
    its exit code and its stderr."""
    done = _python_limited(threads, "-m", "ingester", "--root", str(root), *args, timeout=timeout)
    return done.returncode, done.stderr


@pytest.mark.skipif(PRLIMIT is None, reason="prlimit (util-linux) is not installed")
@pytest.mark.skipif(WHY_NOT_AS_ANOTHER_USER is not None, reason=WHY_NOT_AS_ANOTHER_USER or "")
def test_a_backlog_is_stored_whole_where_no_thread_can_start() -> None:
    """The group's fsyncs run on worker threads; where none can start, they run one after
    the other on the loop's own: every drop stored once, exit 0, no traceback."""
    sent = drops_for("threads", 20)
    with others_folder("ingester-nproc-") as root:
        os.chown(root, LIMITED_UID, LIMITED_UID)
        for name, data in sent.items():
            drop(root / "spool", name, data, owner=(LIMITED_UID, LIMITED_UID))
        shutil.chown(root / "spool", LIMITED_UID, LIMITED_UID)
        code, stderr = _limited(root, 1, "watch", "--once", timeout=60)
        assert code == 0, stderr[-2000:]
        assert "Traceback" not in stderr
        assert sorted(p.read_bytes() for p in versions(root)) == sorted(sent.values())


@pytest.mark.skipif(PRLIMIT is None, reason="prlimit (util-linux) is not installed")
@pytest.mark.skipif(WHY_NOT_AS_ANOTHER_USER is not None, reason=WHY_NOT_AS_ANOTHER_USER or "")
def test_the_inotify_watcher_needs_no_thread_but_its_own() -> None:
    """The spool's events are read on the loop's own thread: a watcher allowed one thread
    stores drops as they come, and stops cleanly."""
    sent = drops_for("one-thread", 5)
    with others_folder("ingester-nproc-") as root:
        os.chown(root, LIMITED_UID, LIMITED_UID)
        with WatchProcess(root, wrapper=_as_limited(1)) as watcher:
            for count, (name, data) in enumerate(sent.items(), 1):
                drop(root / "spool", name, data, owner=(LIMITED_UID, LIMITED_UID))
                wait_for(lambda n=count: len(versions(root)) == n, 30, f"{name} stored")
            assert watcher.stop() == 0
        assert "Traceback" not in watcher.log and " ERROR " not in watcher.log, watcher.log
        assert sorted(p.read_bytes() for p in versions(root)) == sorted(sent.values())


@pytest.mark.skipif(PRLIMIT is None, reason="prlimit (util-linux) is not installed")
@pytest.mark.skipif(WHY_NOT_AS_ANOTHER_USER is not None, reason=WHY_NOT_AS_ANOTHER_USER or "")
@pytest.mark.parametrize(
    ("threads", "args", "after"),
    [
        (2, ("watch", "--polling"), []),
        (
            # serve's main thread and the watcher's, and one more: the observer needs two,
            # whichever of serve's own threads (its spool checks) starts first.
            3,
            ("serve", "--watch", "--polling", "--listen", "127.0.0.1:0"),
            ["the watcher stopped (exit 1): serve stops too, so that both restart together"],
        ),
    ],
    ids=["watch", "serve-watch"],
)
def test_polling_that_cannot_start_its_threads_is_one_line(
    threads: int, args: tuple[str, ...], after: list[str]
) -> None:
    """watchdog's polling observer needs threads of its own: where none can start, the
    watcher says so in one line naming the limit, and exits 1 (and serve with it)."""
    with others_folder("ingester-nproc-") as root:
        os.chown(root, LIMITED_UID, LIMITED_UID)
        code, stderr = _limited(root, threads, *args, timeout=60)
        spool = root / "spool"
    assert code == 1, stderr[-2000:]
    assert "Traceback" not in stderr
    errors = [line.split(" ERROR ", 1)[1] for line in stderr.splitlines() if " ERROR " in line]
    assert errors == [f"cannot watch {spool}: {THREAD_LIMIT}", *after], stderr


@pytest.mark.skipif(PRLIMIT is None, reason="prlimit (util-linux) is not installed")
@pytest.mark.skipif(WHY_NOT_AS_ANOTHER_USER is not None, reason=WHY_NOT_AS_ANOTHER_USER or "")
def test_serve_where_no_thread_can_start_answers_and_says_so_in_one_line() -> None:
    """serve allowed only its main thread: it starts and says once that its spool checks
    run on its own thread; what needs a worker thread (a POST's write, the metrics) is
    answered 503 in one line naming the limit; the rest is served; SIGTERM stops it,
    exit 0. Never a traceback, an exit 3 or a "please report"."""
    with others_folder("ingester-nproc-") as root:
        os.chown(root, LIMITED_UID, LIMITED_UID)
        with ServeProcess(root, wrapper=_as_limited(1)) as server:
            server.wait_log("the spool checks run on the server's own thread instead")
            assert server.get("/api/health").status_code != 500
            metrics = server.get("/metrics")
            assert metrics.status_code == 503, metrics.text
            assert metrics.json()["message"] == f"{THREAD_LIMIT}; retry"
            posted = server.post(API, content=payload(1), headers=POST_HEADERS)
            assert posted.status_code == 503, posted.text
            assert server.stop() == 0
        log = server.log
    assert "Traceback" not in log and "please report" not in log, log
    errors = [line.split(" ERROR ", 1)[1] for line in log.splitlines() if " ERROR " in line]
    assert errors[0].startswith("client 127.0.0.1:") and errors[0].endswith(
        f": GET /metrics: {THREAD_LIMIT}; answered 503"
    ), log
    assert len(errors) == 2 and f"POST {API}" in errors[1] and THREAD_LIMIT in errors[1], log


@pytest.mark.skipif(PRLIMIT is None, reason="prlimit (util-linux) is not installed")
@pytest.mark.skipif(WHY_NOT_AS_ANOTHER_USER is not None, reason=WHY_NOT_AS_ANOTHER_USER or "")
def test_serve_watch_with_no_thread_to_spare_stores_drops_and_stops_cleanly() -> None:
    """serve --watch allowed its main thread and the watcher's only: drops are stored as
    they come, and at SIGTERM the stop's count of what is left runs on the main thread.
    Exit 0, one line about the limit, never a traceback."""
    sent = drops_for("serve-watch", 3)
    with others_folder("ingester-nproc-") as root:
        os.chown(root, LIMITED_UID, LIMITED_UID)
        with ServeProcess(root, "--watch", wrapper=_as_limited(2)) as server:
            server.wait_log("serve --watch: ready")
            for count, (name, data) in enumerate(sent.items(), 1):
                drop(root / "spool", name, data, owner=(LIMITED_UID, LIMITED_UID))
                wait_for(lambda n=count: len(versions(root)) == n, 30, f"{name} stored")
            assert server.stop() == 0
        log = server.log
        assert sorted(p.read_bytes() for p in versions(root)) == sorted(sent.values())
    assert "Traceback" not in log and " ERROR " not in log, log
    assert log.count(THREAD_LIMIT) == 1, log


@pytest.mark.skipif(PRLIMIT is None, reason="prlimit (util-linux) is not installed")
@pytest.mark.skipif(WHY_NOT_AS_ANOTHER_USER is not None, reason=WHY_NOT_AS_ANOTHER_USER or "")
def test_a_started_pool_has_as_many_threads_as_can_start() -> None:
    """Four asked, room for two besides the main thread: the pool has two, not one or
    none (the threads of the pool that failed have ended before a smaller one is tried)."""
    probe = "from ingester.threads import started_pool; print(started_pool(4, 'w').workers)"
    done = _python_limited(3, "-c", probe, timeout=60)
    assert (done.returncode, done.stdout) == (0, "2\n"), done.stderr


@pytest.mark.skipif(PRLIMIT is None, reason="prlimit (util-linux) is not installed")
@pytest.mark.skipif(WHY_NOT_AS_ANOTHER_USER is not None, reason=WHY_NOT_AS_ANOTHER_USER or "")
@needs_strace_root
def test_a_started_pool_waits_for_the_failed_pools_threads_to_leave_the_kernel() -> None:
    """A thread's ``join`` returns a moment before the kernel lets the thread go, and on
    a busy machine that moment lasts: here strace makes it last (each thread's final
    ``exit`` call is held 0.2 s). The smaller pool is tried once the failed pool's
    threads are gone, so it still gets the two threads there is room for."""
    probe = "from ingester.threads import started_pool; print(started_pool(4, 'w').workers)"
    slow_exit = (STRACE, "-f", "-qq", "-o", os.devnull, "-e", "inject=exit:delay_enter=200000")
    done = _python_limited(3, "-c", probe, timeout=60, wrapper=slow_exit)
    assert (done.returncode, done.stdout) == (0, "2\n"), done.stderr


@needs_strace_root
def test_an_inotify_source_that_keeps_failing_ends_the_watcher_in_lines(root: Path) -> None:
    """Every wait for the spool's events fails (strace makes ``poll`` fail with ENOMEM):
    each time the source is restarted with one line saying why, not a traceback, and
    after a few restarts within a minute the watcher exits 1 (a service manager starts
    it afresh) instead of running deaf. The drop waiting at start is stored all the same."""
    drop(root / "spool", "waiting.json", payload(1))
    inject = ("-f", "-qq", "-o", "/dev/null", "-e", "inject=poll,ppoll:error=ENOMEM")
    done = run_cli(root, "watch", wrapper=(STRACE, *inject))
    assert done.returncode == 1, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    restarted = (
        "ERROR the spool observer stopped (cannot read its inotify events: Cannot allocate "
        "memory [ENOMEM]); restarting it"
    )
    assert done.stderr.count(restarted) == 5, done.stderr
    assert (
        done.stderr.rstrip()
        .splitlines()[-1]
        .endswith(
            "the spool observer stopped 6 times within a minute; exiting, for the service "
            "manager to start it afresh"
        )
    ), done.stderr
    assert [p.read_bytes() for p in versions(root)] == [payload(1)]


# The POSTs' writers: a thread pool whose submit queued the write, failed to start a
# thread for it, raised (the POST was answered 500), and ran the write all the same on a
# thread it had: the client's retry was stored twice. A started pool never starts one.
STARTED_POOL = """
import threading
from concurrent.futures import ThreadPoolExecutor
from ingester.threads import started_pool

writers = started_pool(4, "writers")
plain, release, done = ThreadPoolExecutor(8), threading.Event(), []
plain.submit(release.wait)  # its one thread (the last this process may have), kept busy
try:
    threading.Thread(target=print).start()
except RuntimeError as exc:
    print("no thread left:", exc)
print("submitted:", sum(writers.submit(lambda n=n: n).result() for n in range(20)))
try:
    started_pool(4, "more")
except RuntimeError as exc:
    print("a second pool:", exc)
try:
    plain.submit(done.append, "the write")
except RuntimeError:
    release.set()
    plain.shutdown(wait=True)
    print("a plain pool raised, then ran:", done)
"""


@pytest.mark.skipif(PRLIMIT is None, reason="prlimit (util-linux) is not installed")
@pytest.mark.skipif(WHY_NOT_AS_ANOTHER_USER is not None, reason=WHY_NOT_AS_ANOTHER_USER or "")
def test_a_started_pool_takes_work_where_no_thread_can_start() -> None:
    done = _python_limited(6, "-c", STARTED_POOL, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "no thread left: can't start new thread",
        "submitted: 190",
        "a second pool: can't start new thread",
        "a plain pool raised, then ran: ['the write']",
    ], done.stdout + done.stderr
