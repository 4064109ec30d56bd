"""Crash-point injection, in process (in the spirit of SQLite's crash tests and ALICE).

Every durable step the watcher and the store take goes through a handful of ``os``
functions (write, fsync, rename, link, replace, symlink, unlink). We count them, and for
every k we let the k-th one "kill the process": it raises :class:`SimulatedCrash`, a
``BaseException`` that no ``except OSError``/``except Exception`` catches, and every later
call raises it too (nothing after the crash reaches the disk). Then a fresh, unpatched
watcher (or store) is started on the same folders, as systemd would after ``kill -9``,
and the invariants are checked: nothing lost, nothing stored twice,
every version complete and read-only, the spool empty, each invalid drop quarantined
once with its reason, no temp files, metadata and latest link equal to a scan.

The model is a process crash (what ``kill -9`` does), not a power cut: a step that
returned is on disk. The same loop is run with ``OSError(EIO)`` at step k instead of a
crash, against a watcher kept running in a thread: it must log, back off and heal by
itself, ending in the same invariants.

``INGESTER_LONG_TESTS=1`` adds rounds with more drops (marked ``slow``).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import stat
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from support import INVALID_SAMPLES, VALID_SAMPLES, wait_for
from support.capabilities import tmpfs

from ingester.history import durable
from ingester.history.durable import FSYNC_THREAD_PREFIX
from ingester.history.durable import fsyncs as durable_fsyncs
from ingester.history.durable import steps as durable_steps
from ingester.history.names import format_timestamp, is_version_name, parse_timestamp_from_filename
from ingester.history.retention import FUTURE_SLACK, RetentionPolicy
from ingester.history.store import HistoryStore
from ingester.runtime.notify import SystemdNotifier
from ingester.settings.resolved import Settings
from ingester.settings.sources import resolve_settings

LONG = os.environ.get("INGESTER_LONG_TESTS") == "1"
skip_unless_long = pytest.mark.skipif(not LONG, reason="long mode: set INGESTER_LONG_TESTS=1")

DURABLE_OPS = ("write", "fsync", "rename", "link", "replace", "symlink", "unlink")

_UMASK = os.umask(0)
os.umask(_UMASK)
VERSION_MODE = 0o444 & ~_UMASK


# -- fault injection --------------------------------------------------------------------


class SimulatedCrash(BaseException):
    """The process dies here: not an error anyone may catch and handle."""


@dataclass
class Plan:
    """Which step fails, how, and what was seen; ``at=0`` only counts."""

    at: int = 0
    mode: str = "crash"  # "crash": step k and all after raise SimulatedCrash; "eio": step k fails
    thread: int | None = None  # count only this thread's calls (None: the installing thread)
    # (and those of durable's workers, which run a group's fsyncs and removals for it)
    calls: int = 0
    crashed: bool = False
    fired: str | None = None  # the step that failed, described
    trace: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def reached(self) -> bool:
        return self.fired is not None


def _describe(name: str, args: tuple[Any, ...]) -> str:
    parts = []
    for arg in args[:2]:
        if isinstance(arg, int) and not isinstance(arg, bool):
            parts.append(f"fd{arg}" if name in ("write", "fsync", "fchmod") else str(arg))
        elif isinstance(arg, str | bytes | os.PathLike):
            path = os.fsdecode(arg)
            parts.append(
                os.path.join(os.path.basename(os.path.dirname(path)), os.path.basename(path))
            )
        else:
            parts.append(type(arg).__name__)
    return f"{name}({', '.join(parts)})"


def _fd_target(args: tuple[Any, ...]) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{args[0]}")
    except (OSError, IndexError, TypeError):
        return "?"


def _is_file_fd(fd: int) -> bool:
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return True
    return stat.S_ISREG(mode) or stat.S_ISDIR(mode)


def _each_in_order(step: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
    """``durable``'s ``each_at_once`` one item after the other, on the calling thread."""
    return [step(item) for item in items]


@contextlib.contextmanager
def inject(
    plan: Plan, ops: tuple[str, ...] = DURABLE_OPS, *, concurrent: bool = False
) -> Iterator[Plan]:
    """Patch the durable ``os`` functions (``ops``) for the duration; always restores them.

    A group's fsyncs (and its claims' removals) run one after the other in their given
    order unless ``concurrent``: the same steps, counted in the same order every time,
    so that step k is always the same step. (Each step's result is its own either way;
    concurrent rounds show that which of a group's steps were done when the crash came
    makes no difference.)
    """
    originals = {name: getattr(os, name) for name in ops}
    if plan.thread is None:
        plan.thread = threading.get_ident()

    def wrap(name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def patched(*args: Any, **kwargs: Any) -> Any:
            # A group's fsyncs and removals run on durable's worker threads, for the plan's.
            on_worker = threading.current_thread().name.startswith(FSYNC_THREAD_PREFIX)
            if not (on_worker or threading.get_ident() == plan.thread):
                return real(*args, **kwargs)
            if on_worker and not concurrent:
                # A round in order must count its steps in one order: a step on a worker
                # means a caller reached durable's workers past the patch below.
                raise AssertionError(f"{name} ran on a worker thread in a round in order")
            if plan.crashed:
                raise SimulatedCrash(f"already dead, {name} never ran")
            if name in ("write", "fsync", "fchmod") and not _is_file_fd(args[0]):
                return real(*args, **kwargs)  # a wake-up pipe, not storage
            what = _describe(name, args)
            if name in ("write", "fsync", "fchmod"):
                target = _fd_target(args)
                what += f" [{os.path.basename(os.path.dirname(target))}/{os.path.basename(target)}]"
            with plan.lock:  # steps on several threads are counted one at a time
                plan.calls += 1
                plan.trace.append(what)
                fires = plan.calls == plan.at
            if fires:
                plan.fired = what
                if plan.mode == "crash":
                    plan.crashed = True
                    raise SimulatedCrash(f"crash at step {plan.at}: {what}")
                path = (
                    os.fsdecode(args[0]) if isinstance(args[0], str | bytes | os.PathLike) else None
                )
                raise OSError(errno.EIO, os.strerror(errno.EIO), path)
            return real(*args, **kwargs)

        return patched

    for name, real in originals.items():
        setattr(os, name, wrap(name, real))
    # A rename that never replaces is a call through libc (renameat2), past the os
    # functions: counted as the rename step it is.
    real_no_clobber = durable_steps._rename_no_clobber
    if "rename" in ops:
        durable_steps._rename_no_clobber = wrap("rename", real_no_clobber)
    real_each_at_once = durable_fsyncs.each_at_once
    if not concurrent:
        # Callers find it in the package; fsync_each and fsync_dirs in its own module.
        durable.each_at_once = durable_fsyncs.each_at_once = _each_in_order
    try:
        yield plan
    finally:
        for name, real in originals.items():
            setattr(os, name, real)
        durable_steps._rename_no_clobber = real_no_clobber
        durable.each_at_once = durable_fsyncs.each_at_once = real_each_at_once


# -- the watcher, in process --------------------------------------------------------------


class FakeNotifier(SystemdNotifier):
    """The real notifier, switched off (no NOTIFY_SOCKET), that also records READY."""

    def __init__(self) -> None:
        super().__init__(None)
        self.is_ready = threading.Event()

    def ready(self, status: str | None = None) -> None:
        self.is_ready.set()


def settings_for(root: Path, **extra: Any) -> Settings:
    return resolve_settings({"root": str(root), **extra}, environ={})


def run_once(settings: Settings) -> int:
    from ingester.intake.watcher import Watcher, WatchOptions

    return Watcher(settings, WatchOptions(once=True), notifier=FakeNotifier()).run()


class LogList(logging.Handler):
    """Collects the ``ingester`` loggers' records (any thread)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def text(self, level: int = logging.DEBUG) -> str:
        return "\n".join(r.getMessage() for r in self.records if r.levelno >= level)


@contextlib.contextmanager
def capture_logs() -> Iterator[LogList]:
    logger = logging.getLogger("ingester")
    handler = LogList()
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


# -- the invariants -----------------------------------------------------------------------


@dataclass
class Expect:
    """What the folders must hold once everything was taken."""

    settings: Settings
    valid: list[bytes]  # every valid payload ever dropped (seed included), each stored once
    invalid: dict[str, bytes]  # drop name -> bytes of every invalid drop

    @property
    def history(self) -> Path:
        return self.settings.history_dir

    @property
    def spool(self) -> Path:
        return self.settings.spool_dir


def version_files(history: Path) -> list[Path]:
    try:
        names = sorted(n for n in os.listdir(history) if is_version_name(n))
    except FileNotFoundError:
        return []
    return [history / n for n in names]


def spool_drops(spool: Path) -> list[str]:
    """Entries in the spool that are drops (what the watcher must take)."""
    try:
        return sorted(n for n in os.listdir(spool) if n.endswith(".json") and not n.startswith("."))
    except FileNotFoundError:
        return []


def rejected_entries(rejected: Path) -> tuple[list[str], list[str], list[str]]:
    """(quarantined drops, reason files, dot-files such as temp files)."""
    try:
        names = sorted(os.listdir(rejected))
    except FileNotFoundError:
        return [], [], []
    dots = [n for n in names if n.startswith(".")]
    reasons = [n for n in names if n.endswith(".reason.json") and n not in dots]
    drops = [n for n in names if n not in dots and n not in reasons]
    return drops, reasons, dots


def crashed_state_problems(e: Expect) -> list[str]:
    """What must hold even at the instant of a crash, before any recovery."""
    problems = []
    allowed = Counter(e.valid)
    stored: Counter[bytes] = Counter()
    for path in version_files(e.history):
        data = path.read_bytes()
        if data not in allowed:
            problems.append(f"{path.name} is not a complete dropped payload: {data[:60]!r}")
        stored[data] += 1
    for data, n in stored.items():
        if n > allowed[data]:
            problems.append(f"payload stored {n} times: {data[:60]!r}")
    waiting = {(e.spool / n).read_bytes() for n in spool_drops(e.spool) if (e.spool / n).is_file()}
    for data in waiting & set(stored):
        problems.append(f"payload both stored and still in the spool: {data[:60]!r}")
    latest = e.settings.latest_path
    if os.path.lexists(latest):
        try:
            shown = latest.read_bytes()
        except FileNotFoundError:
            problems.append(f"latest link dangles: {os.readlink(latest)}")
        else:
            if shown not in allowed:
                problems.append(f"latest shows a partial or unknown file: {shown[:60]!r}")
    return problems


def _is_spare(folder: Path, name: str) -> bool:
    """An empty temp file a running watcher keeps ready for its next copy (SpareFile)."""
    path = folder / name
    if not name.startswith(".tmp-w-"):
        return False
    try:
        st = path.lstat()
    except FileNotFoundError:
        return True  # taken for a copy since it was listed: it was the spare
    return stat.S_ISREG(st.st_mode) and st.st_size == 0


def final_problems(e: Expect, *, strict_rejected: bool = False, running: bool = False) -> list[str]:
    """The invariants after a (re)start has finished its work.

    ``strict_rejected`` also demands that ``rejected/`` holds nothing but drops and their
    reason files (no orphan reason file, no temp file): see the tests for them below.
    """
    problems = []
    versions = version_files(e.history)
    try:
        stored = Counter(p.read_bytes() for p in versions)
    except FileNotFoundError as exc:
        if not running:
            raise
        # A running watcher takes back the names of a group whose fsync failed: a
        # version listed a moment ago may be gone. Not settled yet: look again.
        return [f"a version was taken back while being read: {exc.filename}"]
    want = Counter(e.valid)
    if stored != want:
        lost = want - stored
        twice = stored - want
        problems.append(
            f"stored payloads differ: {sum(lost.values())} lost, {sum(twice.values())} extra"
        )
    for path in versions:
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode):
            problems.append(f"{path.name} is not a regular file")
        elif stat.S_IMODE(st.st_mode) != VERSION_MODE:
            problems.append(f"{path.name} has mode {stat.S_IMODE(st.st_mode):o}")
    left = spool_drops(e.spool)
    if left:
        problems.append(f"drops left in the spool: {left}")
    claimed = e.settings.claimed_dir
    if claimed.is_dir() and os.listdir(claimed):
        problems.append(f"claims left: {os.listdir(claimed)}")
    drops, reasons, dots = rejected_entries(e.settings.rejected_dir)
    quarantined = Counter((e.settings.rejected_dir / n).read_bytes() for n in drops)
    if quarantined != Counter(e.invalid.values()):
        problems.append(f"rejected/ holds {drops}, expected one of each of {sorted(e.invalid)}")
    for name in drops:
        reason = e.settings.rejected_dir / f"{name}.reason.json"
        try:
            record = json.loads(reason.read_bytes())
        except (OSError, ValueError) as exc:
            problems.append(f"no readable reason file for {name}: {exc}")
            continue
        if (
            set(record) < {"file", "rejectedAt", "reason", "errors"}
            or record["file"] not in e.invalid
        ):
            problems.append(f"reason file of {name} is wrong: {record}")
    if strict_rejected:
        orphans = [r for r in reasons if r.removesuffix(".reason.json") not in drops]
        if orphans:
            problems.append(f"reason files without a quarantined drop: {orphans}")
        if dots:
            problems.append(f"temp files left in rejected/: {dots}")
    for folder in {e.history, e.settings.latest_path.parent}:
        temps = [
            n
            for n in os.listdir(folder)
            if n.startswith(".tmp-") and not (running and _is_spare(folder, n))
        ]
        if temps:
            problems.append(f"temp files left in {folder.name}: {temps}")
    problems += metadata_problems(e.settings)
    return problems


def metadata_problems(settings: Settings, *, now: datetime | None = None) -> list[str]:
    """``_metadata.json`` and the latest link against a scan of the version files."""
    problems = []
    now = now or datetime.now(UTC)
    names = [p.name for p in version_files(settings.history_dir)]
    try:
        meta = json.loads((settings.history_dir / "_metadata.json").read_bytes())
    except (OSError, ValueError) as exc:
        return [f"metadata unreadable: {exc}"]
    stamps = [parse_timestamp_from_filename(n) for n in names]
    want = {
        "versionCount": len(names),
        "oldestTimestamp": format_timestamp(stamps[0]) if names else None,
        "newestTimestamp": format_timestamp(stamps[-1]) if names else None,
    }
    got = {k: meta.get(k) for k in want}
    if got != want:
        problems.append(f"metadata {got} != scan {want}")
    horizon = now + FUTURE_SLACK
    present = [n for n, s in zip(names, stamps, strict=True) if s is not None and s <= horizon]
    link = settings.latest_path
    if not present:
        if os.path.lexists(link):
            problems.append("latest link exists with no version")
        return problems
    if not link.is_symlink():
        problems.append("latest link missing or not a symlink")
        return problems
    target = os.readlink(link)
    if os.path.isabs(target):
        problems.append(f"latest link target is absolute: {target}")
    resolved = os.path.normpath(os.path.join(link.parent, target))
    if resolved != os.fspath(settings.history_dir / present[-1]):
        problems.append(f"latest link names {target}, newest is {present[-1]}")
    return problems


# -- the ingest scenario ------------------------------------------------------------------


@dataclass
class Scenario:
    """A seeded history plus a backlog of drops, the same for every k."""

    settings: Settings
    expect: Expect


def _payloads(valid_count: int) -> list[bytes]:
    samples = [p.read_bytes() for p in VALID_SAMPLES]
    out = []
    for i in range(valid_count):
        body = json.loads(samples[i % len(samples)])
        body["crashpointSeq"] = i  # unique, and kept (unknown fields are allowed)
        out.append(json.dumps(body, indent=1).encode())
    return out


FOREIGN_UID = 65534  # "nobody": a drop the watcher does not own is copied, not linked


def give_away(path: Path, foreign: bool) -> None:
    """Make ``path`` another user's file, so the watcher takes its copy path."""
    if foreign:
        os.chown(path, FOREIGN_UID, FOREIGN_UID)


# Both ways a drop becomes a version: its own inode (the watcher owns it) or a copy.
OWNERS = [
    pytest.param(False, id="own-drops"),
    pytest.param(
        True,
        id="foreign-drops",
        marks=pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root"),
    ),
]
# The EIO rounds of the copy path take half a minute; the default suite runs them for
# the drop's own inode (the crash rounds cover both ways), the long mode for both.
OWNERS_EIO = [
    OWNERS[0],
    pytest.param(
        True,
        id="foreign-drops",
        marks=[
            pytest.mark.slow,
            skip_unless_long,
            pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root"),
        ],
    ),
]


def build_scenario(
    root: Path,
    valid_count: int = 3,
    invalid_count: int = 2,
    foreign: bool = False,
    rejected: Path | None = None,
) -> Scenario:
    """Seed one version (so the latest link and metadata exist), then queue the backlog.
    ``rejected``: the ``--rejected-dir`` (default: the spool's ``rejected/``)."""
    settings = settings_for(root, **({} if rejected is None else {"rejected_dir": str(rejected)}))
    seed = json.dumps(
        {
            "currentSession": {"resetsIn": "1 hr", "percentageUsed": 1},
            "lastUpdated": "2026-01-01T00:00:00Z",
            "seed": True,
        }
    ).encode()
    spool = settings.spool_dir
    spool.mkdir(parents=True)
    (spool / "seed.json").write_bytes(seed)
    os.utime(spool / "seed.json", (1_600_000_000, 1_600_000_000))
    assert run_once(settings) == 0
    valid = _payloads(valid_count)
    invalid_samples = [p.read_bytes() for p in INVALID_SAMPLES]
    invalid = {
        f"bad-{i}.json": invalid_samples[i % len(invalid_samples)]
        + b" " * (i // len(invalid_samples))
        for i in range(invalid_count)
    }
    drops = [(f"good-{i}.json", data) for i, data in enumerate(valid)] + list(invalid.items())
    # Interleave valid and invalid ones; old mtimes so the scan takes them at once.
    drops.sort(key=lambda d: (int(d[0].rsplit("-", 1)[1].split(".")[0]), d[0]))
    for rank, (name, data) in enumerate(drops):
        path = spool / name
        path.write_bytes(data)
        give_away(path, foreign)
        os.utime(path, (1_600_000_100 + rank, 1_600_000_100 + rank))
    return Scenario(settings, Expect(settings, [seed, *valid], invalid))


def _crash_round(
    base: Path,
    k: int,
    valid_count: int,
    invalid_count: int,
    foreign: bool = False,
    concurrent: bool = False,
    rejected_base: Path | None = None,
) -> tuple[Plan, list[str]]:
    rejected = None if rejected_base is None else rejected_base / f"k{k:03d}" / "rejected"
    scenario = build_scenario(base / f"k{k:03d}", valid_count, invalid_count, foreign, rejected)
    plan = Plan(at=k, mode="crash")
    with inject(plan, concurrent=concurrent):
        try:
            code = run_once(scenario.settings)
        except SimulatedCrash:
            code = None
    if not plan.reached:
        assert code == 0
        return plan, final_problems(scenario.expect)
    problems = [f"at the crash: {p}" for p in crashed_state_problems(scenario.expect)]
    assert run_once(scenario.settings) == 0, f"restart after a crash at {plan.fired} failed"
    problems += final_problems(scenario.expect)
    return plan, problems


def crash_at_every_step(
    base: Path,
    valid_count: int,
    invalid_count: int,
    foreign: bool = False,
    concurrent: bool = False,
    rejected_base: Path | None = None,
) -> int:
    """Crash at each step k of a run in turn, restart, check; the number of steps.
    ``rejected_base``: a folder each round's ``--rejected-dir`` is made in."""
    failures = []
    k = 0
    while True:
        k += 1
        plan, problems = _crash_round(
            base, k, valid_count, invalid_count, foreign, concurrent, rejected_base
        )
        if not plan.reached:
            break
        if problems:
            failures.append(f"crash at step {k} {plan.fired}: " + "; ".join(problems))
        assert k < 2000, "the run never ends"
    assert not failures, "\n".join(failures)
    return k - 1


@pytest.mark.parametrize("foreign", OWNERS)
def test_crash_at_every_durable_step_of_an_ingest_then_restart(
    tmp_path: Path, foreign: bool
) -> None:
    steps = crash_at_every_step(tmp_path, valid_count=3, invalid_count=2, foreign=foreign)
    # 3 valid drops (claim, seal or copy, link, release) and 2 rejections at the least.
    assert steps >= 3 * 5 + 2 * 4


@pytest.mark.parametrize("foreign", OWNERS)
def test_crash_at_every_durable_step_of_a_group_then_restart(tmp_path: Path, foreign: bool) -> None:
    """Six valid drops waiting at once are one group: claimed and staged together, their
    bytes fsynced, then linked, then published by one fsync. A crash at any step of it
    leaves each drop stored exactly once after the restart, and never a partial version."""
    steps = crash_at_every_step(tmp_path, valid_count=6, invalid_count=1, foreign=foreign)
    trace = _group_trace(tmp_path / "trace", foreign)
    # One group: every claim comes before the first link into the history, and the
    # history is fsynced once for the six (the seed's start aside).
    # (The invalid drop's way into the quarantine through .claimed/ is no claim of it.)
    claims = [
        i
        for i, t in enumerate(trace)
        if t.startswith("rename(") and ".claimed/" in t and "rejecting." not in t
    ]
    links = [i for i, t in enumerate(trace) if t.startswith("link(") and "history/" in t]
    assert len(claims) == 6 and len(links) == 6, trace
    assert max(claims) < min(links), trace
    releases = [i for i, t in enumerate(trace) if t.startswith("unlink(.claimed/")]
    published = trace[min(links) : min(releases)]
    assert len([t for t in published if t.endswith("/console-usage-history]")]) == 1, trace
    # and the latest link moved once for the group, not again after it
    assert len([t for t in trace[min(claims) :] if t.startswith("symlink(")]) == 1, trace
    assert steps >= 6 * 4


@pytest.mark.parametrize("foreign", OWNERS)
def test_crash_amid_a_groups_concurrent_fsyncs_then_restart(tmp_path: Path, foreign: bool) -> None:
    """The group's fsyncs run at once, so a crash finds some of them done and others not
    (which ones differs from run to run): whichever, each drop is stored exactly once
    after the restart, and no version of the group was named before all were done."""
    steps = crash_at_every_step(
        tmp_path, valid_count=6, invalid_count=1, foreign=foreign, concurrent=True
    )
    assert steps >= 6 * 4


@contextlib.contextmanager
def without_renameat2() -> Iterator[None]:
    """As on NFS, CIFS or some FUSE mounts, where no rename can refuse to replace: the
    no-replace rename answers that it cannot, so ``durable`` moves a name by a link
    then an unlink. (strace's ENOSYS for ``renameat2`` cannot reach a run in process.)"""
    real = durable_steps._rename_no_clobber
    durable_steps._rename_no_clobber = lambda source, final: False
    try:
        yield
    finally:
        durable_steps._rename_no_clobber = real


def test_crash_at_every_step_of_a_quarantine_without_renameat2_then_restart(
    tmp_path: Path,
) -> None:
    """Without a no-replace rename each invalid drop leaves the spool by one rename into
    ``.claimed/``, is linked into ``rejected/``, and its claim unlinked; a valid drop
    behind it takes its usual steps. After a crash at any of those steps and a restart,
    each invalid drop is in ``rejected/`` once, with its reason, and each valid drop
    stored once."""
    with without_renameat2():
        probe = build_scenario(tmp_path / "probe", valid_count=1, invalid_count=2)
        plan = Plan(at=0)
        with inject(plan):
            assert run_once(probe.settings) == 0
        steps = crash_at_every_step(tmp_path / "rounds", valid_count=1, invalid_count=2)
    assert steps == plan.calls
    for name in ("bad-0.json", "bad-1.json"):
        claim = f".claimed/rejecting.{name}"
        moves = [
            f"rename(spool/{name}, {claim})",
            f"link({claim}, rejected/{name})",
            f"unlink({claim})",
        ]
        at = [plan.trace.index(step) for step in moves]  # every one is a step crashed at
        assert at == sorted(at), plan.trace
    assert not any(t.startswith("unlink(spool/bad-") for t in plan.trace), plan.trace


def test_crash_at_every_step_of_a_quarantine_on_another_filesystem_then_restart(
    tmp_path: Path, can_mount: None
) -> None:
    """Into a quarantine on another filesystem each invalid drop leaves the spool by one
    rename into ``.claimed/``, is copied into ``rejected/`` (a temp file, fsynced, then
    linked under its name), and its claim unlinked. After a crash at any of those steps
    and a restart, each invalid drop is in ``rejected/`` once, with its reason, and each
    valid drop stored once."""
    with tmpfs(tmp_path / "other-fs", size="16m") as other:
        probe = build_scenario(tmp_path / "probe", 1, 2, rejected=other / "probe" / "rejected")
        plan = Plan(at=0)
        with inject(plan):
            assert run_once(probe.settings) == 0
        steps = crash_at_every_step(
            tmp_path / "rounds", valid_count=1, invalid_count=2, rejected_base=other
        )
    assert steps == plan.calls
    for name in ("bad-0.json", "bad-1.json"):
        claim = f".claimed/rejecting.{name}"
        moves = [f"rename(spool/{name}, {claim})", f"unlink({claim})"]
        at = [plan.trace.index(step) for step in moves]  # every one is a step crashed at
        named = [i for i, t in enumerate(plan.trace) if t.endswith(f", rejected/{name})")]
        assert at[0] < min(named) and max(named) < at[1], plan.trace
    assert not any(t.startswith("unlink(spool/bad-") for t in plan.trace), plan.trace


class DurabilityOrder:
    """Checks, on every thread, that nothing is named a version before it is durable, and
    that no claim that is its drop's last name is removed before the spool's side of its
    rename is, nor one whose drop was put back in the spool before that name is.

    Each change to an inode (a write, an fchmod), each claim (a rename into
    ``.claimed/``) and each link into the spool is stamped; so are the start and the
    return of every fsync. When a
    file is linked as a version, its last change must be covered by an fsync of it that
    started after that change and has returned, and so must (for a copy, linked from
    anywhere but ``.claimed/``) the last claim by an fsync of ``.claimed/``: what a power
    cut right after the link would need. A zero-copy version is its claim's own inode, so
    a claim lost to a power cut leaves the drop a second name of it, never a new drop.
    """

    def __init__(self, history: Path, claimed: Path, slow: float = 0.02) -> None:
        self.slow = slow  # seconds each fsync on a worker thread takes longer
        self.history = os.fspath(history)
        self.claimed = os.fspath(claimed)
        self.lock = threading.Lock()
        self.clock = 0
        self.changed: dict[tuple[int, int], int] = {}
        self.durable: dict[tuple[int, int], int] = {}
        self.spool = os.path.dirname(self.claimed)
        self.links = 0
        self.last_names_removed = 0  # claims removed that were their file's last name
        self.put_back = 0  # claims removed that left their file's name in the spool
        self.on_workers = 0  # fsyncs run on durable's worker threads
        self.violations: list[str] = []

    def _tick(self) -> int:
        with self.lock:
            self.clock += 1
            return self.clock

    @staticmethod
    def _key(st: os.stat_result) -> tuple[int, int]:
        return st.st_dev, st.st_ino

    def _in_spool(self, st: os.stat_result) -> bool:
        with os.scandir(self.spool) as entries:
            return any(e.inode() == st.st_ino and e.is_file(follow_symlinks=False) for e in entries)

    @contextlib.contextmanager
    def watching(self) -> Iterator[DurabilityOrder]:
        real = {
            name: getattr(os, name)
            for name in ("write", "fchmod", "fsync", "rename", "link", "unlink")
        }

        def changed_fd(name: str) -> Callable[..., Any]:
            def patched(fd: int, *args: Any) -> Any:
                result = real[name](fd, *args)
                self.changed[self._key(os.fstat(fd))] = self._tick()
                return result

            return patched

        def fsync(fd: int) -> None:
            started = self._tick()
            real["fsync"](fd)
            if threading.current_thread().name.startswith(FSYNC_THREAD_PREFIX):
                self.on_workers += 1
                time.sleep(self.slow)  # a slow disk: returns well after the caller's own fsync
            key = self._key(os.fstat(fd))
            with self.lock:
                self.durable[key] = max(self.durable.get(key, 0), started)

        def rename(src: Any, dst: Any, **kwargs: Any) -> None:
            real["rename"](src, dst, **kwargs)
            if os.path.dirname(os.fsdecode(dst)) == self.claimed:
                self.changed[self._key(os.stat(self.claimed))] = self._tick()
                if os.path.dirname(os.fsdecode(src)) == self.spool:
                    self.changed[self._key(os.stat(self.spool))] = self._tick()

        def unlink(path: Any, **kwargs: Any) -> None:
            name = os.fsdecode(path)
            if os.path.dirname(name) == self.claimed and is_version_name(os.path.basename(name)):
                with contextlib.suppress(OSError):
                    st = os.lstat(name)
                    last = st.st_nlink == 1
                    # The drop's last name, or one leaving a name in the spool as its last
                    # (a failed drop put back): the spool's side must be on disk, or a
                    # power cut could bring the drop back as a new one, or lose it.
                    back = not last and self._in_spool(st)
                    if last or back:
                        self.last_names_removed += last
                        self.put_back += back
                        key = self._key(os.stat(self.spool))
                        if self.durable.get(key, 0) < self.changed.get(key, 0):
                            self.violations.append(f"{os.path.basename(name)}: spool not durable")
            real["unlink"](path, **kwargs)

        def link(src: Any, dst: Any, **kwargs: Any) -> None:
            name = os.fsdecode(dst)
            if os.path.dirname(name) == self.spool:
                real["link"](src, dst, **kwargs)
                self.changed[self._key(os.stat(self.spool))] = self._tick()
                return
            if os.path.dirname(name) == self.history and is_version_name(os.path.basename(name)):
                self.links += 1
                needed = [("its bytes", self._key(os.stat(src)))]
                if os.path.dirname(os.fsdecode(src)) != self.claimed:
                    needed.append((".claimed/", self._key(os.stat(self.claimed))))
                for what, key in needed:
                    change = self.changed.get(key, 0)
                    if change and self.durable.get(key, 0) < change:
                        self.violations.append(f"{os.path.basename(name)}: {what} not durable")
            real["link"](src, dst, **kwargs)

        patches: dict[str, Callable[..., Any]] = {
            "write": changed_fd("write"),
            "fchmod": changed_fd("fchmod"),
            "fsync": fsync,
            "rename": rename,
            "link": link,
            "unlink": unlink,
        }
        for name, patched in patches.items():
            setattr(os, name, patched)
        try:
            yield self
        finally:
            for name, original in real.items():
                setattr(os, name, original)


@pytest.mark.parametrize("foreign", OWNERS)
def test_a_groups_versions_are_named_only_once_all_its_fsyncs_returned(
    tmp_path: Path, foreign: bool
) -> None:
    """The group's fsyncs run concurrently (on durable's worker threads): every version's
    bytes, and every copy's claim, must still be durable before the first name appears."""
    scenario = build_scenario(tmp_path / "r", valid_count=8, invalid_count=1, foreign=foreign)
    settings = scenario.settings
    order = DurabilityOrder(settings.history_dir, settings.spool_dir / ".claimed")
    with order.watching():
        assert run_once(settings) == 0
    assert not final_problems(scenario.expect)
    assert order.links == 8
    assert order.last_names_removed == (8 if foreign else 0)
    # The group's eight or nine fsyncs (eight drops' bytes, and .claimed/ for copies) ran
    # at once: every share but the caller's on a worker.
    assert order.on_workers >= 7
    assert not order.violations, order.violations


LEFT_CLAIM = "2026-01-02T00-00-00-00000000.json"


def with_claimed(tmp_path: Path, valid_count: int) -> tuple[Scenario, Path]:
    """A scenario of ``valid_count`` valid drops, and its ``.claimed/`` made (where a
    test leaves a claim as a killed process would, under :data:`LEFT_CLAIM`)."""
    scenario = build_scenario(tmp_path / "r", valid_count=valid_count, invalid_count=0)
    claimed = scenario.settings.spool_dir / ".claimed"
    claimed.mkdir(mode=0o700, exist_ok=True)
    return scenario, claimed


def test_a_claim_recovery_stores_is_durable_before_its_copy_is_named(tmp_path: Path) -> None:
    """A claim left by a process killed before its group's fsyncs (a zero-copy group's
    claims are never fsynced) may not be on disk: recovery stores it as a copy, so the
    claim must be made durable before the copy's name appears."""
    scenario, claimed = with_claimed(tmp_path, 1)
    settings = scenario.settings
    order = DurabilityOrder(settings.history_dir, claimed)
    with order.watching():
        # The claim as the killed process made it: a rename, and nothing fsynced after.
        os.rename(settings.spool_dir / "good-0.json", claimed / LEFT_CLAIM)
        assert run_once(settings) == 0
    assert not final_problems(scenario.expect)
    assert order.links == 1
    assert not order.violations, order.violations


def test_a_claim_recovery_makes_itself_is_durable_before_its_copy_is_named(
    tmp_path: Path,
) -> None:
    """Recovery takes a spool drop that is a stored copy's claim under a second name as a
    claim of its own. A writer that renamed a new drop onto that name just before makes
    the new claim another file, stored as a copy: that claim must be durable before the
    copy's name appears, as any claim recovery stores."""
    scenario, claimed = with_claimed(tmp_path, 2)
    settings = scenario.settings
    spool, history, version = settings.spool_dir, settings.history_dir, LEFT_CLAIM
    old, new = (spool / "good-0.json").read_bytes(), (spool / "good-1.json").read_bytes()
    # A copy stored, its claim not yet released, and the drop back in the spool (a power
    # cut on a disk without a journal): the claim's second name.
    (history / version).write_bytes(old)
    os.chmod(history / version, 0o444)
    os.link(spool / "good-0.json", claimed / version)
    real_rename = durable.rename_entry  # how recovery takes a second name
    swapped: list[bool] = []

    def rename_entry(src: Any, dst: Any) -> None:
        if os.path.basename(os.fspath(src)) == "good-0.json" and not swapped:
            os.rename(spool / "good-1.json", spool / "good-0.json")  # the writer's
            swapped.append(True)
        real_rename(src, dst)

    order = DurabilityOrder(history, claimed)
    durable.rename_entry = rename_entry
    try:
        with order.watching():
            assert run_once(settings) == 0
    finally:
        durable.rename_entry = real_rename
    assert swapped, "the second name was never taken as a claim"
    stored = [p.read_bytes() for p in history.glob("2*.json")]
    assert stored.count(new) == 1 and stored.count(old) == 1
    assert not order.violations, order.violations


def test_a_claim_already_stored_is_finished_whatever_claimed_s_fsync_does(
    tmp_path: Path,
) -> None:
    """A claim whose version is its own inode (killed between the link and the release)
    needs no fsync to be finished: one of ``.claimed/`` that fails (EIO) holds nothing
    up."""
    scenario, claimed = with_claimed(tmp_path, 1)
    settings = scenario.settings
    spool, history, version = settings.spool_dir, settings.history_dir, LEFT_CLAIM
    os.rename(spool / "good-0.json", claimed / version)
    os.chmod(claimed / version, 0o444)
    os.link(claimed / version, history / version)
    real = durable.fsync_dir

    def failing(folder: Any) -> None:
        if Path(folder) == claimed:
            raise durable.StorageError("fsync folder", folder, OSError(errno.EIO, "I/O error"))
        real(folder)

    durable.fsync_dir = failing
    try:
        with capture_logs() as logs:
            assert run_once(settings) == 0
    finally:
        durable.fsync_dir = real
    assert not (claimed / version).exists(), logs.text()
    assert not final_problems(scenario.expect)


@contextlib.contextmanager
def spool_fsync_failing(spool: Path, times: int) -> Iterator[list[int]]:
    """The spool folder's fsync fails (EIO) its first ``times`` calls; yields the
    number of calls so far (one item)."""
    real = durable.fsync_dir
    calls = [0]

    def fsync_dir(folder: Any) -> None:
        if Path(folder) == spool:
            calls[0] += 1
            if calls[0] <= times:
                raise durable.StorageError("fsync folder", folder, OSError(errno.EIO, "I/O error"))
        real(folder)

    durable.fsync_dir = fsync_dir
    try:
        yield calls
    finally:
        durable.fsync_dir = real


def two_copies_back_in_the_spool(tmp_path: Path) -> tuple[Scenario, list[bytes]]:
    """A group of two copies stored, their claims not yet released, and (a power cut on
    a disk without a journal) both drops back in the spool: each claim's second name."""
    scenario, claimed = with_claimed(tmp_path, 2)
    spool, history = scenario.settings.spool_dir, scenario.settings.history_dir
    payloads = []
    for i, version in enumerate([LEFT_CLAIM, LEFT_CLAIM.replace("00000000", "00000001")]):
        drop = spool / f"good-{i}.json"
        payloads.append(drop.read_bytes())
        (history / version).write_bytes(drop.read_bytes())
        os.chmod(history / version, 0o444)
        os.link(drop, claimed / version)
    return scenario, payloads


def test_each_copys_claim_recovery_removes_waits_for_the_spool_it_changed(
    tmp_path: Path,
) -> None:
    """Recovery takes each claim's second name out of the spool, then removes the claim,
    its last name: after every such change of the spool, not only the first, the
    spool must be durable before the claim goes."""
    scenario, _ = two_copies_back_in_the_spool(tmp_path)
    settings = scenario.settings
    order = DurabilityOrder(settings.history_dir, settings.spool_dir / ".claimed")
    with order.watching():
        assert run_once(settings) == 0
    assert order.last_names_removed == 2
    assert not final_problems(scenario.expect)
    assert not order.violations, order.violations


def test_a_spool_that_cannot_be_fsynced_stores_no_drop_twice(tmp_path: Path) -> None:
    """The spool's fsync failing for good: the claims stay (their removal waits for it),
    but the drops back in the spool beside them are still set aside, each stored once;
    a claim that is its version's own inode needs no such fsync and is finished."""
    scenario, payloads = two_copies_back_in_the_spool(tmp_path)
    settings = scenario.settings
    spool, history, claimed = (
        settings.spool_dir,
        settings.history_dir,
        settings.spool_dir / ".claimed",
    )
    own = LEFT_CLAIM.replace("00000000", "00000002")
    (spool / "own.json").write_bytes(_payloads(3)[2])
    os.rename(spool / "own.json", claimed / own)
    os.chmod(claimed / own, 0o444)
    os.link(claimed / own, history / own)
    with spool_fsync_failing(spool, 10**6), capture_logs() as logs:
        run_once(settings)
    stored = [p.read_bytes() for p in history.glob("2*.json")]
    assert [stored.count(p) for p in payloads] == [1, 1], logs.text()
    assert not [n for n in os.listdir(spool) if n.endswith(".json")], logs.text()
    assert not (claimed / own).exists(), logs.text()
    assert "Traceback" not in logs.text()


def _claim_whose_name_other_bytes_hold(tmp_path: Path) -> tuple[Settings, Path, bytes]:
    """A claim left under ``LEFT_CLAIM``, a name a version of other bytes holds: the
    settings, ``.claimed/`` and the claim's bytes."""
    scenario, claimed = with_claimed(tmp_path, 1)
    settings = scenario.settings
    spool, history = settings.spool_dir, settings.history_dir
    data = (spool / "good-0.json").read_bytes()
    (history / LEFT_CLAIM).write_bytes(_payloads(2)[1])
    os.chmod(history / LEFT_CLAIM, 0o444)
    os.rename(spool / "good-0.json", claimed / LEFT_CLAIM)
    return settings, claimed, data


def test_a_claim_stored_under_a_new_name_is_kept_under_it_when_the_spool_fails(
    tmp_path: Path,
) -> None:
    """A left claim whose name another version holds (other bytes) is stored under a new
    name. When the spool's fsync then fails, the claim is kept under that new name, so
    the next run finds it stored and removes it, rather than storing it once more."""
    settings, claimed, data = _claim_whose_name_other_bytes_hold(tmp_path)
    spool, history = settings.spool_dir, settings.history_dir
    with spool_fsync_failing(spool, 10**6), capture_logs() as logs:
        run_once(settings)
    kept = os.listdir(claimed)
    assert len(kept) == 1 and kept[0] != LEFT_CLAIM, logs.text()
    assert (history / kept[0]).read_bytes() == data
    assert run_once(settings) == 0
    assert not os.listdir(claimed)
    assert [p.read_bytes() for p in history.glob("2*.json")].count(data) == 1


def test_a_claim_stored_under_a_new_name_is_stored_once_through_a_crash_at_every_step(
    tmp_path: Path,
) -> None:
    """A left claim whose name another version holds (other bytes) is stored under a new
    name. Killed at any durable step of that, then restarted, the drop is stored exactly
    once: never once under the new name and again from the claim still under its old one."""
    data = b""
    k = 0
    while True:
        k += 1
        settings, claimed, data = _claim_whose_name_other_bytes_hold(tmp_path / f"k{k:03d}")
        history = settings.history_dir
        plan = Plan(at=k, mode="crash")
        with inject(plan):
            try:
                run_once(settings)
            except SimulatedCrash:
                pass
        if not plan.reached:
            break
        assert run_once(settings) == 0, f"restart after a crash at {plan.fired} failed"
        stored = [p.read_bytes() for p in history.glob("2*.json")]
        assert stored.count(data) == 1, f"crash at step {k} {plan.fired}"
        assert not os.listdir(claimed), f"crash at step {k} {plan.fired}"
        assert k < 200, "the run never ends"
    assert k > 2


def test_one_failed_release_of_a_groups_copies_is_one_error(tmp_path: Path) -> None:
    """A group of eight copies whose step-8 spool fsync fails once: one ERROR line that
    says they are stored, one step of backoff, and the claims removed later."""
    scenario = build_scenario(tmp_path / "r", valid_count=8, invalid_count=0, foreign=True)
    settings = scenario.settings
    with spool_fsync_failing(settings.spool_dir, 1) as calls, capture_logs() as logs:
        assert run_once(settings) == 0
    assert calls[0] >= 2
    errors = [r.getMessage() for r in logs.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, errors
    assert errors[0].startswith("8 drop(s) stored, but their claims could not be removed: ")
    assert not os.listdir(settings.spool_dir / ".claimed")
    assert not final_problems(scenario.expect)


def test_a_drop_put_back_is_durable_in_the_spool_before_its_claim_goes(tmp_path: Path) -> None:
    """A drop that changed while being taken goes back to the spool (a link) before its
    claim is removed: that name must be on disk first, or a power cut on a disk without
    a journal could keep the removal and lose the drop."""
    scenario, _claimed = with_claimed(tmp_path, 2)
    settings = scenario.settings
    spool, history = settings.spool_dir, settings.history_dir
    new = (spool / "good-1.json").read_bytes()
    real_rename = durable.rename_entry
    swapped: list[bool] = []

    def rename_entry(src: Any, dst: Any) -> None:
        if os.path.basename(os.fspath(src)) == "good-0.json" and not swapped:
            os.rename(spool / "good-1.json", spool / "good-0.json")  # the writer's, mid-take
            swapped.append(True)
        real_rename(src, dst)

    order = DurabilityOrder(history, spool / ".claimed")
    durable.rename_entry = rename_entry
    try:
        with order.watching(), capture_logs() as logs:
            assert run_once(settings) == 0
    finally:
        durable.rename_entry = real_rename
    assert swapped and "good-0.json changed while being taken" in logs.text()
    assert order.put_back == 1, logs.text()
    assert [p.read_bytes() for p in history.glob("2*.json")].count(new) == 1
    assert not order.violations, order.violations


@pytest.mark.parametrize("when", ["before the claim goes", "as the claim goes"])
def test_a_new_drop_renamed_onto_a_drop_being_put_back_costs_neither(
    tmp_path: Path, when: str
) -> None:
    """To its writer a claimed drop looks taken, so a new drop may be renamed onto its
    name just as a failed step puts it back there: after the link, before the claim's
    removal (the claim then stays, the last name of those bytes) or in the two calls of
    the removal itself (the bytes are written back as the claim). Both drops stored."""
    scenario, claimed = with_claimed(tmp_path, 3)
    settings = scenario.settings
    spool, history = settings.spool_dir, settings.history_dir
    changed, late = (spool / "good-1.json").read_bytes(), (spool / "good-2.json").read_bytes()
    real_rename, real_unlink, real_fsync = (
        durable.rename_entry,
        durable.unlink_entry,
        durable.fsync_dir,
    )
    swapped: list[str] = []

    def rename_entry(src: Any, dst: Any) -> None:
        if os.path.basename(os.fspath(src)) == "good-0.json" and not swapped:
            os.rename(spool / "good-1.json", spool / "good-0.json")  # mid-take: it changed
            swapped.append("changed")
        real_rename(src, dst)

    def replaced(at: str) -> None:
        if swapped == ["changed"] and at == when:
            os.rename(spool / "good-2.json", spool / "good-0.json")  # as it goes back
            swapped.append("replaced")

    def fsync_dir(folder: Any) -> None:
        real_fsync(folder)
        if Path(folder) == spool:
            replaced("before the claim goes")

    def unlink_entry(path: Any, **kwargs: Any) -> None:
        if Path(path).parent == claimed:
            replaced("as the claim goes")
        real_unlink(path, **kwargs)

    durable.rename_entry, durable.unlink_entry, durable.fsync_dir = (
        rename_entry,
        unlink_entry,
        fsync_dir,
    )
    try:
        with capture_logs() as logs:
            assert run_once(settings) == 0
    finally:
        durable.rename_entry, durable.unlink_entry, durable.fsync_dir = (
            real_rename,
            real_unlink,
            real_fsync,
        )
    assert swapped == ["changed", "replaced"], logs.text()
    said = "it stays in" if when == "before the claim goes" else "its bytes are kept as"
    assert "good-0.json was replaced in the spool as it was put back" in logs.text()
    # Never a claim removed that was already the bytes' last name: a crash right after
    # would lose them, and so would a failing write-back.
    assert said in logs.text(), logs.text()
    stored = [p.read_bytes() for p in history.glob("2*.json")]
    assert (stored.count(changed), stored.count(late)) == (1, 1), logs.text()
    assert not os.listdir(claimed) and "Traceback" not in logs.text()


def test_a_drop_put_back_where_the_spool_cannot_be_fsynced_is_stored_once(
    tmp_path: Path,
) -> None:
    """The spool's fsync failing as a drop is put back: its claim stays beside it, said
    in one line; the drop waits for recovery to remove the claim, then is stored once."""
    scenario, claimed = with_claimed(tmp_path, 2)
    settings = scenario.settings
    spool, history = settings.spool_dir, settings.history_dir
    new = (spool / "good-1.json").read_bytes()
    real_rename = durable.rename_entry

    def rename_entry(src: Any, dst: Any) -> None:
        if os.path.basename(os.fspath(src)) == "good-0.json" and not os.listdir(claimed):
            with contextlib.suppress(FileNotFoundError):
                os.rename(spool / "good-1.json", spool / "good-0.json")  # the writer's
        real_rename(src, dst)

    durable.rename_entry = rename_entry
    try:
        with spool_fsync_failing(spool, 1) as calls, capture_logs() as logs:
            assert run_once(settings) == 0
    finally:
        durable.rename_entry = real_rename
    assert calls[0] >= 2, logs.text()
    assert "(its drop is back in the spool, and waits for it): I/O error" in logs.text()
    assert [p.read_bytes() for p in history.glob("2*.json")].count(new) == 1, logs.text()
    assert not os.listdir(claimed) and "Traceback" not in logs.text()


def put_back_at_a_crash(scenario: Scenario, version: str = LEFT_CLAIM) -> Path:
    """``good-0.json`` as a process killed while putting it back in the spool left it:
    claimed as ``version``, linked back into the spool, the claim not removed."""
    spool = scenario.settings.spool_dir
    claim = spool / ".claimed" / version
    os.rename(spool / "good-0.json", claim)
    os.link(claim, spool / "good-0.json")
    return claim


def test_recovery_takes_a_drop_put_back_out_of_the_spool_and_stores_it_once(
    tmp_path: Path,
) -> None:
    """The claim left beside a drop put back: recovery takes the spool's name out (never
    removing the claim first, which a writer's rename onto that name could leave the
    drop no name for), stores the claim, and removes it, its last name, only once the
    spool's side is on disk."""
    scenario, _claimed = with_claimed(tmp_path, 1)
    settings = scenario.settings
    order = DurabilityOrder(settings.history_dir, settings.spool_dir / ".claimed")
    with order.watching(), capture_logs() as logs:
        claim = put_back_at_a_crash(scenario)
        assert run_once(settings) == 0
    assert (
        f"good-0.json is the drop claimed as {LEFT_CLAIM}, put back in the spool by a step "
        "that stopped: taken from the spool, stored from its claim"
    ) in logs.text()
    assert order.put_back == 0 and order.last_names_removed == 1 and not claim.exists()
    assert not final_problems(scenario.expect)
    assert not order.violations, order.violations


def test_a_new_drop_renamed_onto_a_put_back_drops_name_costs_neither(tmp_path: Path) -> None:
    """A writer renames a new drop onto the name of a drop put back in the spool just as
    recovery finishes the put-back drop's claim. Removing the claim first would leave
    the put-back drop no name (its spool name now the new drop's): both are stored once,
    whichever step the rename falls before."""
    scenario, _claimed = with_claimed(tmp_path, 2)
    settings = scenario.settings
    spool = settings.spool_dir
    claim = put_back_at_a_crash(scenario)
    swapped: list[bool] = []

    def writer_renames() -> None:
        if not swapped:
            os.rename(spool / "good-1.json", spool / "good-0.json")
            swapped.append(True)

    real_rename, real_remove = durable.rename_entry, durable.remove_file

    def rename_entry(src: Any, dst: Any) -> None:
        if Path(src) == spool / "good-0.json":
            writer_renames()
        real_rename(src, dst)

    def remove_file(path: Any) -> None:
        if Path(path) == claim:
            writer_renames()
        real_remove(path)

    durable.rename_entry, durable.remove_file = rename_entry, remove_file
    try:
        with capture_logs() as logs:
            assert run_once(settings) == 0
    finally:
        durable.rename_entry, durable.remove_file = real_rename, real_remove
    assert swapped, logs.text()
    assert not final_problems(scenario.expect), logs.text()


@pytest.mark.parametrize("failing", ["spool", ".claimed"])
def test_a_drop_whose_claim_recovery_has_not_removed_waits_for_it(
    tmp_path: Path, failing: str
) -> None:
    """A drop put back in the spool beside its claim is a second name of that claim. A
    recovery that stops before removing the claim (the spool's fsync fails, or one of
    ``.claimed/`` for a claim before it) leaves both, and the drop must wait for the
    claim: stored meanwhile, it is stored again once recovery takes the claim for a
    drop of its own."""
    scenario, claimed = with_claimed(tmp_path, 2)
    settings = scenario.settings
    spool, history = settings.spool_dir, settings.history_dir
    os.rename(spool / "good-1.json", claimed / LEFT_CLAIM)  # stored by recovery first
    data = (spool / "good-0.json").read_bytes()
    claim = put_back_at_a_crash(scenario, LEFT_CLAIM.replace("00000000", "00000001"))
    folder = spool if failing == "spool" else claimed
    with spool_fsync_failing(folder, 2) as calls, capture_logs() as logs:
        run_once(settings)
        assert calls[0] >= 1, logs.text()
        run_once(settings)
    stored = [p.read_bytes() for p in history.glob("2*.json")]
    assert stored.count(data) == 1, logs.text()
    assert not claim.exists() and "Traceback" not in logs.text()
    assert not final_problems(scenario.expect)


def _group_trace(base: Path, foreign: bool) -> list[str]:
    scenario = build_scenario(base, valid_count=6, invalid_count=1, foreign=foreign)
    plan = Plan(at=0)
    with inject(plan):
        assert run_once(scenario.settings) == 0
    assert not final_problems(scenario.expect)
    return [shape(t) for t in plan.trace]


@pytest.mark.slow
@skip_unless_long
def test_crash_at_every_durable_step_long(tmp_path: Path) -> None:
    crash_at_every_step(tmp_path, valid_count=12, invalid_count=6)


def test_the_injector_sees_every_durable_step(tmp_path: Path) -> None:
    """The loop above proves nothing unless the steps it counts are the real ones."""
    scenario = build_scenario(tmp_path / "r", valid_count=1, invalid_count=1)
    plan = Plan(at=0)
    with inject(plan):
        assert run_once(scenario.settings) == 0
    ops = [t.split("(", 1)[0] for t in plan.trace]
    for op in ("write", "fsync", "rename", "link", "symlink", "replace", "unlink"):
        assert op in ops, (op, plan.trace)
    assert any(".claimed/" in t and t.startswith("rename") for t in plan.trace), plan.trace
    assert not final_problems(scenario.expect)
    # and it is deterministic, so that step k means the same thing in every round
    again = build_scenario(tmp_path / "s", valid_count=1, invalid_count=1)
    plan2 = Plan(at=0)
    with inject(plan2):
        assert run_once(again.settings) == 0
    assert [t.split("(", 1)[0] for t in plan2.trace] == ops


def test_a_crash_is_detected_by_the_invariants(tmp_path: Path) -> None:
    """The checker must be able to fail: a drop removed without being stored is caught."""
    scenario = build_scenario(tmp_path / "r", valid_count=2, invalid_count=1)
    os.unlink(scenario.settings.spool_dir / "good-0.json")
    assert run_once(scenario.settings) == 0
    assert any("1 lost" in p for p in final_problems(scenario.expect))
    (scenario.settings.history_dir / "_metadata.json").write_text('{"versionCount": 7}')
    assert any("metadata" in p for p in final_problems(scenario.expect))


def test_crash_during_quarantine_leaves_no_orphan_reason_file(tmp_path: Path) -> None:
    # Find the step that moves the one invalid drop into rejected/ and crash right there.
    probe = build_scenario(tmp_path / "probe", valid_count=0, invalid_count=1)
    plan = Plan(at=0)
    with inject(plan):
        assert run_once(probe.settings) == 0
    k = next(i for i, t in enumerate(plan.trace, 1) if t.startswith("rename(spool/bad-0.json"))
    scenario = build_scenario(tmp_path / "r", valid_count=0, invalid_count=1)
    crash = Plan(at=k)
    with inject(crash), contextlib.suppress(SimulatedCrash):
        run_once(scenario.settings)
    assert crash.reached
    assert run_once(scenario.settings) == 0
    assert final_problems(scenario.expect, strict_rejected=True) == []


def test_crash_while_writing_a_reason_file_leaves_no_temp_in_rejected(tmp_path: Path) -> None:
    probe = build_scenario(tmp_path / "probe", valid_count=0, invalid_count=1)
    plan = Plan(at=0)
    with inject(plan):
        assert run_once(probe.settings) == 0
    # The first write into the reason file's temp in rejected/.
    k = next(i for i, t in enumerate(plan.trace, 1) if "rejected/.tmp-" in t)
    scenario = build_scenario(tmp_path / "r", valid_count=0, invalid_count=1)
    crash = Plan(at=k)
    with inject(crash), contextlib.suppress(SimulatedCrash):
        run_once(scenario.settings)
    assert crash.fired is not None and "rejected/.tmp-" in crash.fired
    assert run_once(scenario.settings) == 0
    assert final_problems(scenario.expect) == []  # the drop itself is safe
    assert final_problems(scenario.expect, strict_rejected=True) == []


# -- cleanup ------------------------------------------------------------------------------

POLICY = RetentionPolicy(max_versions=2, retention_days=1.0)


def _cleanup_store(settings: Settings) -> HistoryStore:
    return HistoryStore(settings.history_dir, settings.latest_path, POLICY)


@dataclass
class CleanupScene:
    settings: Settings
    keep: dict[str, bytes]  # versions that must survive any cleanup
    doomed: dict[str, bytes]  # expired versions
    other: dict[str, bytes]  # non-version files in the history
    created: int
    deleted: int


def build_cleanup_scene(root: Path, expired: int = 4) -> CleanupScene:
    settings = settings_for(root)
    store = _cleanup_store(settings)
    store.initialize()
    history = settings.history_dir
    doomed = {}
    for i in range(expired):
        name = f"2020-01-{i + 1:02d}T00-00-00-{i:08x}.json"
        data = json.dumps({"expired": i}).encode()
        (history / name).write_bytes(data)
        os.chmod(history / name, VERSION_MODE)
        doomed[name] = data
    future_name = (datetime.now(UTC) + timedelta(days=30)).strftime(
        "%Y-%m-%dT%H-%M-%S"
    ) + "-future1.json"
    (history / future_name).write_bytes(b'{"future": true}')
    other = {"notes.txt": b"an operator's notes", "2026-01-05-not-a-version.json": b"{}"}
    for name, data in other.items():
        (history / name).write_bytes(data)
    keep = {future_name: b'{"future": true}'}
    store.scan()
    for i in range(3):  # recent ones: two are newest-N, one is within the retention days
        data = json.dumps({"recent": i}).encode()
        keep[store.save_version(data).name] = data
    meta = json.loads((history / "_metadata.json").read_bytes())
    return CleanupScene(
        settings, keep, doomed, other, meta["totalVersionsCreated"], meta["totalVersionsDeleted"]
    )


def cleanup_problems(scene: CleanupScene) -> list[str]:
    history = scene.settings.history_dir
    problems = []
    present = {p.name: p.read_bytes() for p in version_files(history)}
    for name, data in scene.keep.items():
        if present.get(name) != data:
            problems.append(f"{name} should have stayed: {present.get(name)!r}")
    for name in set(present) - set(scene.keep) - set(scene.doomed):
        problems.append(f"unexpected version {name}")
    for name, data in scene.other.items():
        if (history / name).read_bytes() != data:
            problems.append(f"{name} (not a version) was touched")
    temps = [n for n in os.listdir(history) if n.startswith(".tmp-")]
    temps += [n for n in os.listdir(scene.settings.latest_path.parent) if n.startswith(".tmp-")]
    if temps:
        problems.append(f"temp files left: {temps}")
    problems += metadata_problems(scene.settings)
    meta = json.loads((history / "_metadata.json").read_bytes())
    if meta["totalVersionsCreated"] < scene.created or meta["totalVersionsDeleted"] < scene.deleted:
        problems.append(f"a total decreased: {meta}")
    return problems


def test_crash_at_every_durable_step_of_a_cleanup_then_initialize(tmp_path: Path) -> None:
    failures = []
    k = 0
    while True:
        k += 1
        scene = build_cleanup_scene(tmp_path / f"k{k:03d}")
        store = _cleanup_store(scene.settings)
        store.load()
        plan = Plan(at=k)
        with inject(plan):
            try:
                result = store.cleanup_old_versions()
            except SimulatedCrash:
                result = None
        if not plan.reached:
            assert result is not None and sorted(result.deleted) == sorted(scene.doomed)
            assert cleanup_problems(scene) == []
            assert not [
                p for p in version_files(scene.settings.history_dir) if p.name in scene.doomed
            ]
            break
        reopened = _cleanup_store(scene.settings)
        reopened.initialize()
        problems = cleanup_problems(scene)
        # and the next cleanup finishes the job
        reopened.cleanup_old_versions()
        if [p for p in version_files(scene.settings.history_dir) if p.name in scene.doomed]:
            problems.append("a later cleanup did not delete the expired versions")
        problems += cleanup_problems(scene)
        if problems:
            failures.append(f"crash at step {k} {plan.fired}: " + "; ".join(problems))
    assert not failures, "\n".join(failures)
    assert k > len(scene.doomed) + 4  # one unlink per expired version, then the metadata


# -- EIO at step k, the watcher keeps running ----------------------------------------------


HEAL_TIMEOUT = 5.0


@dataclass
class LiveRound:
    plan: Plan
    problems: list[str]
    log: str
    error: BaseException | None


def _live_round(base: Path, k: int, foreign: bool = False) -> LiveRound:
    """Seed, start a watcher in a thread, drop one invalid then one valid drop, EIO at step k."""
    from ingester.intake.watcher import Watcher, WatchOptions

    scenario = build_scenario(base / f"k{k:03d}", valid_count=0, invalid_count=0)
    settings = scenario.settings
    spool = settings.spool_dir
    valid = _payloads(1)[0]
    invalid = INVALID_SAMPLES[0].read_bytes()
    expect = Expect(settings, [*scenario.expect.valid, valid], {"live-bad.json": invalid})
    notifier = FakeNotifier()
    watcher = Watcher(
        settings,
        WatchOptions(once=False, retry_max=0.2, rescan_interval=30),
        notifier=notifier,
    )
    outcome: dict[str, Any] = {}

    def serve() -> None:
        plan.thread = threading.get_ident()
        try:
            outcome["code"] = watcher.run()
        except BaseException as exc:  # the test reports it; the thread must not hide it
            outcome["error"] = exc

    plan = Plan(at=k, mode="eio", thread=-1)  # serve() sets its own thread
    problems: list[str] = []
    with capture_logs() as logs, inject(plan):
        thread = threading.Thread(target=serve, name=f"watcher-k{k}", daemon=True)
        thread.start()
        try:
            wait_for(lambda: notifier.is_ready.is_set() or not thread.is_alive(), 10, "ready")
            for name, data in (("live-bad.json", invalid), ("live-good.json", valid)):
                tmp = spool / "tmp" / f".{name}.part"
                tmp.write_bytes(data)
                give_away(tmp, foreign)
                os.rename(tmp, spool / name)

                def taken(name: str = name) -> bool:
                    return not (spool / name).exists() or not thread.is_alive()

                wait_for(taken, HEAL_TIMEOUT, f"{name} taken")
            deadline = time.monotonic() + HEAL_TIMEOUT
            while True:
                problems = final_problems(expect, running=True)
                if not problems or not thread.is_alive() or time.monotonic() > deadline:
                    break
                time.sleep(0.02)
        except AssertionError as exc:
            problems = [str(exc), *final_problems(expect)]
        finally:
            watcher.request_stop()
            thread.join(10)
    if not thread.is_alive() and not problems:
        # Stopped: the spare is gone too, unless removing it was the step that failed
        # (an empty temp file then waits for the next start's sweep).
        failed_spare_unlink = bool(plan.fired) and str(plan.fired).startswith("unlink(")
        problems = final_problems(expect, running=failed_spare_unlink)
    if thread.is_alive():
        problems.append("the watcher did not stop")
    elif "error" in outcome:
        problems.append(f"the watcher died: {outcome['error']!r}")
    elif outcome.get("code") != 0:
        problems.append(f"the watcher exited {outcome.get('code')}")
    if plan.reached and not problems:
        log = logs.text(logging.ERROR)
        if "EIO" not in log and os.strerror(errno.EIO) not in log:
            problems.append(f"the failure was not logged with its cause: {log!r}")
    return LiveRound(plan, problems, logs.text(), outcome.get("error"))


def live_trace(base: Path, foreign: bool = False) -> list[str]:
    round_ = _live_round(base / "dry", 0, foreign)
    assert round_.problems == [], round_.problems
    return round_.plan.trace


# Steps where an EIO once broke the promise (bugs since fixed); each has a test below.
FIXED_BUGS = {
    "temp-unlink": "was: durable.StagedFile.commit unlinks the temp name after link/replace "
    "under contextlib.suppress(FileNotFoundError) only: any other OSError (EIO) escapes as a "
    "plain OSError, not StorageError, so the service loop does not catch it and the "
    "watcher dies (CLI: traceback, exit 1)",
    "claim-fsync": "was: the drop path does not discard the staged file when "
    "durable.fsync_dir(.claimed) fails: a .tmp-w-* copy of the drop stays in the history "
    "until the next restart (one per failure)",
    "claim-release": "was: when removing the claim fails after the commit, the retry finds "
    "the drop gone and the claim recovery (its stored-already branch) removes the claim without "
    "marking the latest link dirty: the latest link keeps naming the previous version",
}


def shape(step: str | None) -> str:
    """A step without its random parts (temp and version names, descriptor numbers)."""
    step = re.sub(r"\d{4}-\d\d-\d\dT\d\d-\d\d-\d\d-[0-9a-f]{8}", "V", step or "")
    step = re.sub(r"\[[^\]]*\bk\d{3}\]", "[root]", step)  # the per-round root folder
    step = re.sub(r"\bk\d{3}/", "", step)
    step = re.sub(r"/#\d+ \(deleted\)", "/#unnamed", step)  # an O_TMPFILE file's inode
    # "fd7" as fsync's trace names a descriptor, "fd/7" as a path through /proc/self/fd.
    return re.sub(r"fd/?\d+", "fd", re.sub(r"\.tmp-(\w+)-[0-9a-f]{12}", r".tmp-\1-X", step))


def known_bug(step: str) -> str | None:
    """Which fixed bug an EIO at this step once ran into, if any."""
    op, _, rest = step.partition("(")
    path = rest.split(",")[0].split(")")[0]
    if op == "unlink" and os.path.basename(path).startswith(".tmp-"):
        return "temp-unlink"
    if op == "fsync" and step.endswith("[spool/.claimed]"):
        return "claim-fsync"
    if op == "unlink" and path.startswith(".claimed/"):
        return "claim-release"
    return None


@pytest.mark.parametrize("foreign", OWNERS_EIO)
def test_eio_at_every_step_of_a_live_ingest_is_logged_and_heals(
    tmp_path: Path, foreign: bool
) -> None:
    trace = live_trace(tmp_path, foreign)
    failures = []
    covered = 0
    for k, step in enumerate(trace, 1):
        covered += 1
        round_ = _live_round(tmp_path, k, foreign)
        assert shape(round_.plan.fired) == shape(step), "the steps are not deterministic"
        if round_.problems:
            failures.append(f"EIO at step {k} {round_.plan.fired}: " + "; ".join(round_.problems))
    assert not failures, "\n".join(failures)
    assert covered >= 12


@pytest.mark.parametrize("bug", sorted(FIXED_BUGS))
@pytest.mark.skipif(os.geteuid() != 0, reason="the copy path needs drops of another user (root)")
def test_eio_at_a_once_bad_step_heals(
    tmp_path: Path, bug: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # These steps are on the copy path: the drops belong to another user.
    if bug == "temp-unlink":
        # Only a named temp file is unlinked: the path where O_TMPFILE is refused.
        monkeypatch.setattr(durable_steps, "UNNAMED_TEMPS", False)
    trace = live_trace(tmp_path, foreign=True)
    k = next(k for k, step in enumerate(trace, 1) if known_bug(step) == bug)
    round_ = _live_round(tmp_path, k, foreign=True)
    assert round_.problems == [], round_.problems


def _live_group_round(base: Path, k: int, foreign: bool) -> LiveRound:
    """A backlog of three valid drops (one group) for a watcher kept running; EIO at step k.

    The group is taken at start, so its steps come in the same order in every round.
    """
    from ingester.intake.watcher import Watcher, WatchOptions

    scenario = build_scenario(base / f"k{k:03d}", valid_count=3, invalid_count=0, foreign=foreign)
    notifier = FakeNotifier()
    watcher = Watcher(
        scenario.settings,
        WatchOptions(once=False, retry_max=0.2, rescan_interval=30),
        notifier=notifier,
    )
    outcome: dict[str, Any] = {}
    plan = Plan(at=k, mode="eio", thread=-1)

    def serve() -> None:
        plan.thread = threading.get_ident()
        try:
            outcome["code"] = watcher.run()
        except BaseException as exc:  # the test reports it; the thread must not hide it
            outcome["error"] = exc

    problems: list[str] = []
    with capture_logs() as logs, inject(plan):
        thread = threading.Thread(target=serve, name=f"watcher-g{k}", daemon=True)
        thread.start()
        try:
            deadline = time.monotonic() + HEAL_TIMEOUT
            while True:
                problems = final_problems(scenario.expect, running=True)
                if not problems or not thread.is_alive() or time.monotonic() > deadline:
                    break
                time.sleep(0.02)
        finally:
            watcher.request_stop()
            thread.join(10)
    if thread.is_alive():
        problems.append("the watcher did not stop")
    elif "error" in outcome:
        problems.append(f"the watcher died: {outcome['error']!r}")
    elif outcome.get("code") != 0:
        problems.append(f"the watcher exited {outcome.get('code')}")
    return LiveRound(plan, problems, logs.text(), outcome.get("error"))


@pytest.mark.parametrize("foreign", OWNERS_EIO)
def test_eio_at_every_step_of_a_group_heals(tmp_path: Path, foreign: bool) -> None:
    """EIO at any step of a group (its claims, seals, links, publication, releases): the
    watcher backs off, retries and ends with each drop stored exactly once."""
    dry = _live_group_round(tmp_path / "dry", 0, foreign)
    assert dry.problems == [], dry.problems
    trace = dry.plan.trace
    assert len([t for t in trace if t.startswith("rename(") and ".claimed/" in t]) == 3
    failures = []
    for k, step in enumerate(trace, 1):
        round_ = _live_group_round(tmp_path / "rounds", k, foreign)
        assert shape(round_.plan.fired) == shape(step), "the steps are not deterministic"
        if round_.problems:
            failures.append(f"EIO at step {k} {round_.plan.fired}: " + "; ".join(round_.problems))
    assert not failures, "\n".join(failures)
