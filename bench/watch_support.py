"""What ``bench_watch.py`` is made of: the payloads, one ingester in one root, the machine.

Kept apart from the plan and the table so that each reads on its own; see
``bench_watch.py`` for how the pieces are used.
"""

from __future__ import annotations

import json
import os
import platform
import re
import select
import shlex
import signal
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from floor import IN_CREATE, IN_MOVED_TO, Inotify

BENCH_DIR = Path(__file__).resolve().parent
FLOOR_SCRIPT = BENCH_DIR / "floor.py"
STORE_SCRIPT = BENCH_DIR / "bench_store.py"

SPOOL = "spool"
HISTORY = "console-usage-history"
LATEST = "console-usage-synced.json"
VERSION_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}-[A-Za-z0-9]+\.json$")

# A valid payload (shared/samples/valid/full.json), embedded so a fresh clone needs
# nothing else. Each drop gets its own "seq" and "lastUpdated", so every version is unique.
SAMPLE: dict[str, Any] = {
    "currentSession": {"resetsIn": "4 hr 12 min", "percentageUsed": 23},
    "weeklyLimits": {
        "allModels": {"resetsIn": "Mon 8:59 AM", "percentageUsed": 41},
        "sonnetOnly": {"resetsIn": "Mon 8:59 AM", "percentageUsed": 7},
    },
    "lastUpdated": "2026-11-27T14:05:00Z",
}


def payload(seq: int) -> bytes:
    """The bytes of drop number ``seq``: the sample with a unique time and ``seq``."""
    body = dict(SAMPLE)
    hours, rest = divmod(seq, 3600)
    body["lastUpdated"] = f"2026-11-{1 + hours % 28:02d}T{rest // 60 % 24:02d}:{rest % 60:02d}:00Z"
    body["seq"] = seq
    return (json.dumps(body, indent=2) + "\n").encode()


def write_fsynced(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` and fsync it (what ``ingester submit`` does)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0-100), linear between the nearest ranks."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    pos = (len(ordered) - 1) * q / 100
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


# -- watching the latest link -----------------------------------------------------------


class LatestProbe:
    """Which drop (its ``seq``) the latest link names now; wakes on inotify, not a spin."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.link = root / LATEST
        self.inotify = Inotify(os.fspath(root), IN_MOVED_TO | IN_CREATE, nonblock=True)
        self._target: str | None = None
        self._seq: int | None = None

    def close(self) -> None:
        """Stop watching."""
        self.inotify.close()

    def seq(self) -> int | None:
        """The ``seq`` of the version the latest link resolves to, or None."""
        try:
            target = os.readlink(self.link)
        except FileNotFoundError:
            return None
        except OSError:  # a copy, not a symlink (filesystems without symlinks)
            target = None
        if target is not None and target == self._target:
            return self._seq
        try:
            data = (self.root / target).read_bytes() if target else self.link.read_bytes()
            seq = json.loads(data).get("seq")
        except (OSError, ValueError):
            return None
        if target is not None:
            self._target, self._seq = target, seq
        return seq if isinstance(seq, int) else None

    def wait_for(self, seq: int, timeout: float) -> float:
        """Block until the link names drop ``seq`` (or a later one); the perf_counter then."""
        deadline = time.monotonic() + timeout
        while True:
            current = self.seq()
            if current is not None and current >= seq:
                return time.perf_counter()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"the latest link did not reach drop {seq} in {timeout} s")
            select.select([self.inotify.fd], [], [], min(0.05, remaining))
            self.inotify.drain()


# -- one ingester in one root -------------------------------------------------------------


@dataclass
class SideResult:
    """Everything measured for one side (ours or the floor) over all rounds."""

    name: str
    latencies_ms: list[float] = field(default_factory=list)
    burst_rates: list[float] = field(default_factory=list)
    backlog_rates: list[float] = field(default_factory=list)
    hwm_kb: list[int] = field(default_factory=list)
    backlog_hwm_kb: list[int] = field(default_factory=list)
    stop_s: list[float] = field(default_factory=list)
    exit_codes: list[int] = field(default_factory=list)


def read_hwm_kb(pid: int) -> int:
    """The process's peak resident set size (VmHWM) in kB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmHWM for process {pid}")


def drops_left(spool: Path) -> list[str]:
    """Drops still waiting in the spool."""
    return [n for n in os.listdir(spool) if n.endswith(".json") and not n.startswith(".")]


def stored_once_problem(history: Path, spool: Path, dropped: int) -> str | None:
    """Why drops 1..``dropped`` are not each stored exactly once (None when they are).

    Reads every version's ``seq``: each must be there once, nothing else may be, and
    the spool must be empty.
    """
    seqs: Counter[Any] = Counter()
    with os.scandir(history) as entries:
        for entry in entries:
            if VERSION_RE.match(entry.name):
                with open(entry.path, "rb") as handle:
                    seqs[json.loads(handle.read()).get("seq")] += 1
    missing = dropped - sum(1 for seq in range(1, dropped + 1) if seqs.get(seq))
    twice = sum(1 for n in seqs.values() if n > 1)
    extra = sum(1 for seq in seqs if not (isinstance(seq, int) and 1 <= seq <= dropped))
    left = drops_left(spool)
    if missing or twice or extra or left:
        return (
            f"{dropped} dropped: {missing} not stored, {twice} stored more than once, "
            f"{extra} unknown versions, {len(left)} left in the spool"
        )
    return None


def prepare_backlog(root: Path, count: int, owner: int | None) -> None:
    """``count`` drops waiting in ``root``'s spool, oldest first by mtime, all on disk.

    Written as a scraper would have (fsynced: one ``sync`` for all at the end), with
    mtimes in the past and increasing, so both ingesters take them in ``seq`` order.
    """
    spool = root / SPOOL
    (spool / "tmp").mkdir(parents=True)
    base_ns = (int(time.time()) - 3600) * 1_000_000_000
    for seq in range(1, count + 1):
        path = spool / f"{seq:07d}.json"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, payload(seq))
        finally:
            os.close(fd)
        os.utime(path, ns=(base_ns + seq * 1000, base_ns + seq * 1000))
        if owner is not None:
            os.chown(path, owner, owner)
    os.sync()


class Run:
    """One ingester process in its own fresh root, and the drops the bench feeds it."""

    def __init__(
        self,
        cmd: list[str],
        root: Path,
        log_path: Path,
        timeout: float,
        owner: int | None = None,
        *,
        seq: int = 0,
    ) -> None:
        self.root = root
        self.owner = owner
        self.spool = root / SPOOL
        self.tmp = self.spool / "tmp"
        self.history = root / HISTORY
        self.timeout = timeout
        self.seq = seq  # drops already waiting in the spool (a backlog)
        self.log_path = log_path
        self.what = shlex.join(cmd)
        root.mkdir(exist_ok=True)
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.probe = LatestProbe(root)
        self.started = time.perf_counter()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("INGESTER_", "NOTIFY_"))}
        env.pop("WATCHDOG_USEC", None)
        self._log = open(log_path, "wb")  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log, env=env
        )

    def prepare(self, count: int) -> list[tuple[int, Path]]:
        """Write ``count`` fresh drops into ``SPOOL/tmp/`` (fsynced); not yet dropped."""
        prepared = []
        for _ in range(count):
            self.seq += 1
            path = self.tmp / f"{self.seq:07d}.json"
            write_fsynced(path, payload(self.seq))
            if self.owner is not None:
                os.chown(path, self.owner, self.owner)
            prepared.append((self.seq, path))
        return prepared

    def drop(self, path: Path) -> None:
        """Rename a prepared drop into the spool."""
        os.rename(path, self.spool / path.name)

    def check_alive(self) -> None:
        """Fail loudly (with the log's tail) if the ingester died."""
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.what} exited {self.proc.returncode}\n{self.log_tail()}")

    def log_tail(self, lines: int = 15) -> str:
        """The last lines the ingester logged."""
        self._log.flush()
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])

    def wait_for(self, seq: int, timeout: float | None = None) -> float:
        """``LatestProbe.wait_for`` with the log's tail in the error."""
        try:
            return self.probe.wait_for(seq, timeout or self.timeout)
        except TimeoutError as exc:
            self.check_alive()
            raise RuntimeError(f"{exc}\n{self.log_tail()}") from None

    def warm_up(self, count: int) -> None:
        """Drop 1 waits in the spool as a backlog; the rest come one at a time."""
        for _seq, path in self.prepare(1):
            self.drop(path)
        self.wait_for(self.seq, 60)
        for seq, path in self.prepare(count):
            self.drop(path)
            self.wait_for(seq)

    def single(self) -> float:
        """One drop, with the ingester idle; milliseconds from the rename to the latest link."""
        [(seq, path)] = self.prepare(1)
        started = time.perf_counter()
        self.drop(path)
        seen = self.wait_for(seq)
        return (seen - started) * 1000

    def burst(self, count: int) -> float:
        """``count`` drops renamed in at once; drops per second until the last is latest."""
        prepared = self.prepare(count)
        time.sleep(0.2)
        started = time.perf_counter()
        for _seq, path in prepared:
            self.drop(path)
        seen = self.wait_for(prepared[-1][0], self.timeout + count * 0.05)
        rate = count / (seen - started)
        self.check_stored_once()
        return rate

    def backlog(self) -> float:
        """Drops per second from the start until the last of the backlog is latest."""
        seen = self.wait_for(self.seq, self.timeout + self.seq * 0.01)
        rate = self.seq / (seen - self.started)
        self.check_stored_once()
        return rate

    def check_stored_once(self) -> None:
        """Fail the bench unless every drop so far is stored exactly once."""
        problem = stored_once_problem(self.history, self.spool, self.seq)
        if problem is not None:
            raise RuntimeError(f"{self.what}: {problem}\n{self.log_tail()}")

    def port(self, timeout: float = 30) -> int:
        """The port a server logged (``listening on http://127.0.0.1:PORT``)."""
        deadline = time.monotonic() + timeout
        while True:
            self._log.flush()
            found = re.search(r"listening on http://127\.0\.0\.1:(\d+)", self.log_tail(200))
            if found:
                return int(found[1])
            self.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.what} logged no port\n{self.log_tail()}")
            time.sleep(0.05)

    def stop(self) -> tuple[int, float, int]:
        """SIGTERM; wait. Returns (peak RSS in kB, seconds to exit, exit code)."""
        self.check_alive()
        hwm = read_hwm_kb(self.proc.pid)
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        return hwm, time.monotonic() - started, code

    def kill(self) -> None:
        """Make sure the process is gone and the probe closed (idempotent)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.probe.close()
        self._log.close()


# -- the machine --------------------------------------------------------------------------


def filesystem_of(path: Path) -> str:
    """Type and device of the filesystem holding ``path`` (from /proc/self/mounts)."""
    real = os.path.realpath(path)
    best = ("", "?", "?")
    try:
        with open("/proc/self/mounts") as mounts:
            for line in mounts:
                device, point, fstype = line.split()[:3]
                point = point.replace("\\040", " ")
                inside = real == point or real.startswith(point.rstrip("/") + "/")
                if inside and len(point) >= len(best[0]):
                    best = (point, fstype, device)
    except OSError:
        pass
    journal = ext4_journal(best[2]) if best[1] == "ext4" else ""
    return f"{best[1]} ({best[2]} on {best[0]}{journal})"


def ext4_journal(device: str) -> str:
    """``", journal"``, ``", no journal"`` or ``""`` (unknown) for the ext4 on ``device``.

    It decides how much a file's creation costs. Without a journal, ext4 will not reuse
    an inode freed 1-60 s ago (up to 360 s while its inode-table block is not yet
    written back) if another inode in the same block group is free, and finds that out
    by checking each such inode in turn (``find_inode_bit`` and ``recently_deleted`` in
    the kernel's fs/ext4/ialloc.c). The copied layout frees a claim and creates a copy
    for every drop. The kernel lists each mounted ext4 in /proc/fs/ext4/ by device name,
    and those with a journal inside them again in /proc/fs/jbd2/ (``<device>-8``). A
    journal kept on another device is listed under that device's name, so such an ext4
    reads as having none.
    """
    name = os.path.basename(os.path.realpath(device))
    if not os.path.isdir(f"/proc/fs/ext4/{name}"):
        return ""
    try:
        journals = os.listdir("/proc/fs/jbd2")
    except FileNotFoundError:
        journals = []  # no journal mounted anywhere
    except OSError:
        return ""
    return ", journal" if any(j.rsplit("-", 1)[0] == name for j in journals) else ", no journal"


def cpu_model() -> str:
    """The CPU's model name."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def version_of(dist: str) -> str:
    """An installed distribution's version, or '?'."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "?"


def git_commit() -> str:
    """The checkout's commit (and '+dirty' when ingester/ has changes), or '?'."""
    try:
        head = subprocess.run(
            ["git", "-C", os.fspath(BENCH_DIR), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", os.fspath(BENCH_DIR.parent), "status", "--porcelain", "ingester"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"
    return head + ("+dirty" if dirty else "")


def machine(bench_dir: Path) -> dict[str, str]:
    """What the numbers were measured on."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 0
    with open("/proc/meminfo") as info:
        mem_kb = int(info.readline().split()[1])
    return {
        "cpus": f"{usable} usable of {os.cpu_count()} (nproc {usable})",
        "cpu": cpu_model(),
        "memory": f"{mem_kb / 1024 / 1024:.1f} GiB",
        "kernel": f"{platform.system()} {platform.release()}",
        "filesystem": filesystem_of(bench_dir),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "versions": f"ingester {version_of('console-usage-ingester')} ({git_commit()}), "
        f"watchdog {version_of('watchdog')}, pydantic {version_of('pydantic')}",
    }
