"""The shipped systemd units: they verify, score <= 1.5, and what they promise holds.

Nothing here boots systemd or touches the host's users or /var: ``systemd-analyze`` reads
unit files, ``systemd-sysusers`` and ``systemd-tmpfiles`` work on a temporary ``--root``.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support import cli_env
from support.capabilities import STRACE, strace_problem, traced_program
from support.process import kill_group
from support.sdnotify import NotifyListener
from support.watchproc import drop, payload, versions

UNITS = Path(__file__).resolve().parents[1] / "systemd"
NAME = "console-usage-ingester"
SERVICE = UNITS / f"{NAME}.service"
SYSUSERS = UNITS / f"{NAME}.sysusers"
TMPFILES = UNITS / f"{NAME}.tmpfiles"
INSTALLED_BINARY = "/usr/local/bin/ingester"
EXEC_START = f"{INSTALLED_BINARY} --root /var/lib/{NAME} watch"
MAX_EXPOSURE = 1.5

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
SYSUSERS_BIN = shutil.which("systemd-sysusers")
TMPFILES_BIN = shutil.which("systemd-tmpfiles")
needs_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed: cannot check the unit"
)


def parse_unit(path: Path) -> dict[str, list[str]]:
    """``Section.Key`` -> every value given, in order (systemd allows repeated keys)."""
    section = ""
    values: dict[str, list[str]] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not a key=value line: {raw!r}"
        values.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return values


def one(unit: dict[str, list[str]], key: str) -> str:
    """The last value of ``key`` (what systemd uses for single-valued settings)."""
    assert key in unit, f"{key} is not set"
    return unit[key][-1]


def snippet_lines(path: Path) -> list[list[str]]:
    """The non-comment lines of a sysusers.d/tmpfiles.d snippet, split on whitespace
    (a double-quoted field, like a GECOS, stays one field)."""
    rows = []
    for raw in path.read_text().splitlines():
        if raw.strip() and not raw.lstrip().startswith("#"):
            rows.append(re.findall(r'"[^"]*"|\S+', raw))
    return rows


def ingester_binary() -> Path:
    """The test environment's ``ingester`` console script (the unit's ExecStart in a copy)."""
    beside = Path(sys.executable).parent / "ingester"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("ingester")
    if found is None:
        pytest.fail("no 'ingester' console script in this environment (pip install -e .)")
    return Path(found)


@dataclass
class Installed:
    """The units copied to a temp folder, ExecStart pointing at this environment."""

    folder: Path
    service: Path
    binary: Path


@pytest.fixture
def installed(tmp_path: Path) -> Installed:
    folder = tmp_path / "units"
    folder.mkdir()
    for source in (SERVICE, SYSUSERS, TMPFILES):
        shutil.copy(source, folder / source.name)
    binary = ingester_binary()
    service = folder / SERVICE.name
    text = service.read_text()
    assert text.count(f"ExecStart={EXEC_START}\n") == 1, "ExecStart is not the documented one"
    service.write_text(text.replace(f"ExecStart={INSTALLED_BINARY} ", f"ExecStart={binary} "))
    assert one(parse_unit(service), "Service.ExecStart").startswith(f"{binary} --root ")
    return Installed(folder, service, binary)


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    assert SYSTEMD_ANALYZE is not None
    return subprocess.run(
        [SYSTEMD_ANALYZE, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": "", "LC_ALL": "C.UTF-8"},
    )


def installed_copy(unit: Path, exec_start: str, folder: Path) -> Path:
    """A copy of ``unit`` in ``folder`` whose ExecStart (checked to be ``exec_start``, the
    documented one) runs this environment's ``ingester``."""
    text = unit.read_text()
    assert text.count(f"ExecStart={exec_start}\n") == 1, "ExecStart is not the documented one"
    copy = folder / unit.name
    copy.write_text(
        text.replace(f"ExecStart={INSTALLED_BINARY} ", f"ExecStart={ingester_binary()} ")
    )
    return copy


def assert_verifies(*units: Path) -> None:
    """``systemd-analyze verify`` accepts ``units`` without a word: it exits 0 even for
    unknown keys and unparseable values ("..., ignoring"), so any output is a failure."""
    result = analyze("verify", *map(str, units))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "" and result.stderr.strip() == "", (
        result.stdout + result.stderr
    )


def assert_hardened_like_the_watcher(
    unit: dict[str, list[str]], watcher: dict[str, list[str]], differing: set[str]
) -> None:
    """Every ``[Service]`` key of the watcher's unit has the same values in ``unit``,
    except the keys named in ``differing`` (what the unit's own job needs)."""
    for key, values in watcher.items():
        if key.startswith("Service.") and key.split(".", 1)[1] not in differing:
            assert unit.get(key) == values, key


def assert_exposure_within_limit(unit: Path) -> None:
    """``systemd-analyze security --offline=yes`` rates ``unit`` at most MAX_EXPOSURE, and
    systemd's own gate (``--threshold``, in tenths) agrees."""
    result = analyze("security", "--offline=yes", str(unit))
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", result.stdout)
    assert match, result.stdout
    exposed = [line.strip() for line in result.stdout.splitlines() if "✗" in line]
    assert float(match.group(1)) <= MAX_EXPOSURE, "\n".join(exposed)
    gate = analyze("security", "--offline=yes", f"--threshold={int(MAX_EXPOSURE * 10)}", str(unit))
    assert gate.returncode == 0, gate.stdout[-2000:]


# -- what the unit promises -------------------------------------------------------------


def test_unit_declares_the_service_contract() -> None:
    unit = parse_unit(SERVICE)
    assert one(unit, "Service.Type") == "notify"
    assert one(unit, "Service.NotifyAccess") == "main"
    assert one(unit, "Service.WatchdogSec") not in ("", "0", "infinity")
    assert one(unit, "Service.Restart") == "on-failure"
    assert one(unit, "Service.RestartSec")
    assert one(unit, "Service.ExecStart") == EXEC_START
    assert one(unit, "Service.StateDirectory") == NAME
    assert one(unit, "Install.WantedBy") == "multi-user.target"
    # The dedicated user and group are the ones sysusers.d creates.
    users = [row for row in snippet_lines(SYSUSERS) if row[0] == "u"]
    assert [row[1] for row in users] == [NAME]
    assert one(unit, "Service.User") == NAME
    assert one(unit, "Service.Group") == NAME
    assert "DynamicUser" not in unit, "the scraper's group access needs a fixed user"


def test_spool_from_tmpfiles_is_where_the_service_looks() -> None:
    unit = parse_unit(SERVICE)
    root = one(unit, "Service.ExecStart").split("--root ", 1)[1].split()[0]
    state = f"/var/lib/{one(unit, 'Service.StateDirectory')}"
    assert root == state, "the history must be under the StateDirectory"
    rows = {row[1]: row for row in snippet_lines(TMPFILES)}
    assert f"{root}/spool" in rows, "tmpfiles.d does not create the spool the service watches"
    for path, (kind, _, _mode, user, group, age) in rows.items():
        assert kind == "d", path  # create if missing, never empty it
        assert age == "-", f"{path}: an age would let tmpfiles delete drops"
        assert (user, group) == (NAME, NAME), path
        assert path == root or path.startswith(f"{root}/spool"), path
    assert int(rows[root][2], 8) == int(one(unit, "Service.StateDirectoryMode"), 8)
    spool_mode = int(rows[f"{root}/spool"][2], 8)
    assert spool_mode & 0o2070 == 0o2070, "spool must be setgid and group-writable"
    assert spool_mode & 0o007 == 0, "others have no business in the spool"
    # The spool is under the StateDirectory (writable despite ProtectSystem=strict);
    # anything outside it would need ReadWritePaths=.
    assert one(unit, "Service.ProtectSystem") == "strict"


# -- systemd-analyze ----------------------------------------------------------------------


@needs_analyze
def test_systemd_analyze_verify_passes(installed: Installed) -> None:
    assert_verifies(installed.service)


@needs_analyze
def test_verify_would_notice_a_broken_unit(installed: Installed) -> None:
    """The check above can fail: a bad key and a bad value in the same copy are reported."""
    broken = installed.folder / f"{NAME}-broken.service"
    text = installed.service.read_text().replace(
        "WatchdogSec=30s\n", "WatchdogSec=banana\nNotAKey=1\n"
    )
    broken.write_text(text)
    result = analyze("verify", str(broken))
    output = result.stdout + result.stderr
    assert "NotAKey" in output and "banana" in output, output
    missing = installed.folder / f"{NAME}-missing.service"
    missing.write_text(installed.service.read_text().replace(str(installed.binary), "/nonexist"))
    result = analyze("verify", str(missing))
    assert result.returncode != 0 and "/nonexist" in result.stderr, result.stderr


@needs_analyze
def test_security_exposure_is_at_most_1_5(installed: Installed) -> None:
    result = analyze("security", "--offline=yes", str(installed.service))
    assert result.returncode == 0, result.stderr
    match = re.search(
        rf"Overall exposure level for {re.escape(installed.service.name)}: (\d+(?:\.\d+)?)",
        result.stdout,
    )
    assert match, result.stdout
    score = float(match.group(1))
    exposed = [line.strip() for line in result.stdout.splitlines() if "✗" in line]
    assert score <= MAX_EXPOSURE, f"exposure {score} > {MAX_EXPOSURE}:\n" + "\n".join(exposed)
    # systemd's own gate agrees (threshold is in tenths).
    gate = analyze(
        "security", "--offline=yes", f"--threshold={int(MAX_EXPOSURE * 10)}", str(installed.service)
    )
    assert gate.returncode == 0, gate.stdout[-2000:]


@needs_analyze
def test_security_score_parse_can_fail(installed: Installed) -> None:
    """A unit without the hardening scores far above 1.5: the assertion above means something."""
    bare = installed.folder / f"{NAME}-bare.service"
    keep = ("[", "Type=", "ExecStart=", "User=", "Group=", "StateDirectory=", "Description=")
    bare.write_text(
        "\n".join(
            line for line in installed.service.read_text().splitlines() if line.startswith(keep)
        )
        + "\n"
    )
    result = analyze("security", "--offline=yes", str(bare))
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", result.stdout)
    assert match and float(match.group(1)) > 5, result.stdout[-500:]


# -- sysusers.d and tmpfiles.d, applied to a temporary root only ---------------------------


@pytest.fixture
def fake_root(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "fakeroot"
    (root / "etc").mkdir(parents=True)
    host_passwd = Path("/etc/passwd").read_bytes()
    yield root
    assert Path("/etc/passwd").read_bytes() == host_passwd, "the host's users were changed"


def run_tool(*args: str) -> subprocess.CompletedProcess[str]:
    assert any(a.startswith("--root=") for a in args), "never run these against the host"
    return subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)


def passwd_entry(root: Path, name: str) -> list[str]:
    for line in (root / "etc" / "passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == name:
            return fields
    raise AssertionError(f"{name} not in {root}/etc/passwd")


@pytest.mark.skipif(SYSUSERS_BIN is None, reason="systemd-sysusers is not installed")
def test_sysusers_snippet_creates_the_user_in_a_temp_root(fake_root: Path) -> None:
    assert SYSUSERS_BIN is not None
    dry = run_tool(SYSUSERS_BIN, f"--root={fake_root}", "--dry-run", str(SYSUSERS))
    assert dry.returncode == 0, dry.stderr
    assert f"Creating user '{NAME}'" in dry.stdout + dry.stderr
    assert not (fake_root / "etc" / "passwd").exists(), "--dry-run wrote"
    real = run_tool(SYSUSERS_BIN, f"--root={fake_root}", str(SYSUSERS))
    assert real.returncode == 0, real.stderr
    _, _, uid, gid, _, home, shell = passwd_entry(fake_root, NAME)
    assert int(uid) < 1000 and int(gid) < 1000, "a system user"
    assert home == f"/var/lib/{NAME}"
    assert shell.endswith("nologin")
    groups = (fake_root / "etc" / "group").read_text()
    assert re.search(rf"^{NAME}:x:{gid}:", groups, re.M), groups


@pytest.mark.skipif(
    SYSUSERS_BIN is None or TMPFILES_BIN is None, reason="systemd-sysusers/-tmpfiles missing"
)
def test_tmpfiles_snippet_makes_a_group_writable_setgid_spool(fake_root: Path) -> None:
    assert SYSUSERS_BIN is not None and TMPFILES_BIN is not None
    assert run_tool(SYSUSERS_BIN, f"--root={fake_root}", str(SYSUSERS)).returncode == 0
    uid, gid = (int(x) for x in passwd_entry(fake_root, NAME)[2:4])
    # This systemd-tmpfiles has no --dry-run; --root confines it to the temp root.
    result = run_tool(TMPFILES_BIN, f"--root={fake_root}", "--create", str(TMPFILES))
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr
    state = fake_root / "var" / "lib" / NAME
    expected = {state: 0o750, state / "spool": 0o3770, state / "spool" / "tmp": 0o3770}
    expected[state / "spool" / "rejected"] = 0o2750
    for path, mode in expected.items():
        st = path.stat()
        assert (oct(st.st_mode & 0o7777), st.st_uid, st.st_gid) == (oct(mode), uid, gid), path
    # Idempotent, and it leaves drops alone.
    (state / "spool" / "a.json").write_text("{}")
    again = run_tool(TMPFILES_BIN, f"--root={fake_root}", "--create", "--clean", str(TMPFILES))
    assert again.returncode == 0, again.stderr
    assert (state / "spool" / "a.json").exists()


# -- MemoryDenyWriteExecute=yes: the process works without W+X memory ----------------------

PR_SET_MDWE = 65
PR_MDWE_REFUSE_EXEC_GAIN = 1
# Sets the kernel's MDWE (inherited and kept across exec, like systemd's seccomp filter),
# then execs the command.
MDWE_EXEC = (
    "import ctypes, os, sys\n"
    "libc = ctypes.CDLL(None, use_errno=True)\n"
    f"if libc.prctl({PR_SET_MDWE}, {PR_MDWE_REFUSE_EXEC_GAIN}, 0, 0, 0) != 0:\n"
    "    sys.exit('prctl(PR_SET_MDWE): ' + os.strerror(ctypes.get_errno()))\n"
    "os.execv(sys.argv[1], sys.argv[1:])\n"
)
MDWE = (sys.executable, "-c", MDWE_EXEC)


def mdwe_supported() -> bool:
    """Whether this kernel has PR_SET_MDWE (6.3+); tried in a child, which keeps it."""
    probe = subprocess.run([*MDWE, "/bin/true"], capture_output=True, timeout=30, check=False)
    return probe.returncode == 0


def _libc_prctl_exists() -> bool:
    return hasattr(ctypes.CDLL(None), "prctl")


needs_mdwe = pytest.mark.skipif(
    not (sys.platform == "linux" and _libc_prctl_exists() and mdwe_supported()),
    reason="kernel without PR_SET_MDWE (< 6.3): MemoryDenyWriteExecute=yes is unproven here",
)


def under_mdwe(*argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*MDWE, *argv], capture_output=True, text=True, timeout=60, env=cli_env(**env), check=False
    )


@needs_mdwe
def test_mdwe_simulation_is_in_force() -> None:
    """Control: under the wrapper a writable+executable mapping is refused."""
    code = (
        "import mmap\n"
        "try:\n"
        "    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)\n"
        "except OSError as exc:\n"
        "    print('refused', exc.errno)\n"
        "else:\n"
        "    print('allowed')\n"
    )
    assert under_mdwe(sys.executable, "-c", code).stdout.strip() == f"refused {errno.EACCES}"
    plain = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert plain.stdout.strip() == "allowed", "the control itself is broken"


@needs_mdwe
def test_cli_and_libraries_work_under_mdwe(tmp_path: Path) -> None:
    binary = str(ingester_binary())
    result = under_mdwe(binary, "--help")
    assert result.returncode == 0 and "watch" in result.stdout, result.stderr
    result = under_mdwe(binary, "--root", str(tmp_path / "r"), "init")
    assert result.returncode == 0, result.stderr
    imports = (
        "import ctypes, pathlib, tempfile, pydantic, pydantic_core, click\n"
        "from ingester.intake.arrivals import start_arrivals\n"
        "spool = pathlib.Path(tempfile.mkdtemp())\n"
        "start_arrivals(spool, polling=False, poll_interval=1.0).stop()\n"
        "start_arrivals(spool, polling=True, poll_interval=1.0).stop()\n"
        "spool.rmdir()\n"
        "from ingester.payload.model import judge_payload, PayloadRejected\n"
        "cb = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int)(lambda x: x + 1)\n"
        "assert cb(1) == 2\n"
        "try:\n"
        "    judge_payload(b'{\"lastUpdated\": 5}', max_bytes=1000)\n"
        "except PayloadRejected as exc:\n"
        "    assert exc.reason\n"
        "else:\n"
        "    raise SystemExit('not rejected')\n"
        "print('ok')\n"
    )
    result = under_mdwe(sys.executable, "-c", imports)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


@needs_mdwe
def test_watch_service_runs_under_mdwe(root: Path) -> None:
    """The real service: inotify observer, pydantic validation, ingest, notify, SIGTERM."""
    spool = root / "spool"
    spool.mkdir()
    drop(spool, "good.json", payload(1))
    drop(spool, "bad.json", b'{"lastUpdated": "2026-11-27T14:05:00Z"}')
    with NotifyListener() as listener:
        env = cli_env(NOTIFY_SOCKET=listener.address, WATCHDOG_USEC="1000000")
        env.pop("WATCHDOG_PID", None)
        log_path = root.parent / "watch.log"
        with log_path.open("wb") as log_file:
            proc = subprocess.Popen(
                [*MDWE, sys.executable, "-m", "ingester", "--root", str(root), "watch"],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=env,
            )
        try:
            alive = lambda: proc.poll() is None  # noqa: E731
            listener.wait_for(lambda m: "READY" in m.fields, 30, "READY=1", alive)
            drop(spool, "later.json", payload(2))
            listener.wait_for(
                lambda m: m.fields.get("STATUS", "").startswith("ingested 2,"),
                30,
                "the second ingest",
                alive,
            )
            listener.wait_for(lambda m: "WATCHDOG" in m.fields, 5, "WATCHDOG=1", alive)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(10) == 0, log_path.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    assert len(versions(root)) == 2
    assert (spool / "rejected" / "bad.json").exists()
    assert "Traceback" not in log_path.read_text()


SYSCALL_LINE = re.compile(r"^\d+\s+(?:<\.\.\. (\w+) resumed>|(\w+)\()")


def watch_argv(root: Path) -> list[str]:
    return [sys.executable, "-m", "ingester", "--root", str(root), "watch"]


@pytest.fixture(scope="module")
def service_trace(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """strace -f of a real watcher: start, backlog (valid + invalid), READY, one drop
    by event, the watchdog, SIGTERM. The lines of the trace."""
    if problem := strace_problem(root=False):
        pytest.skip(problem)
    work = tmp_path_factory.mktemp("trace")
    root = work / "root"
    spool = root / "spool"
    spool.mkdir(parents=True)
    drop(spool, "good.json", payload(1))
    drop(spool, "bad.json", b"{not json")
    trace = work / "trace"
    with NotifyListener() as listener:
        env = cli_env(NOTIFY_SOCKET=listener.address, WATCHDOG_USEC="1000000")
        env.pop("WATCHDOG_PID", None)
        proc = subprocess.Popen(
            [STRACE, "-f", "-qq", "-o", str(trace), *watch_argv(root)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # strace and the watcher, ended together (kill_group)
        )
        try:
            alive = lambda: proc.poll() is None  # noqa: E731
            listener.wait_for(lambda m: "READY" in m.fields, 60, "READY=1", alive)
            drop(spool, "later.json", payload(2))
            listener.wait_for(
                lambda m: m.fields.get("STATUS", "").startswith("ingested 2,"), 30, "ingest", alive
            )
            listener.wait_for(lambda m: "WATCHDOG" in m.fields, 5, "WATCHDOG=1", alive)
            # strace's child is the watcher; SIGTERM goes to it, strace exits with its code.
            os.kill(traced_program(proc.pid), signal.SIGTERM)
            assert proc.wait(20) == 0
        finally:
            kill_group(proc)
    assert len(versions(root)) == 2
    return trace.read_text().splitlines()


def test_no_writable_executable_memory_in_the_trace(service_trace: list[str]) -> None:
    """systemd's MemoryDenyWriteExecute= is a seccomp filter, stricter than the kernel's
    MDWE: it refuses any mprotect/pkey_mprotect with PROT_EXEC, not only gains. The
    service makes no such call, and no writable+executable mapping."""
    assert any("mmap(" in line for line in service_trace), "strace saw nothing"
    forbidden = [
        line
        for line in service_trace
        if ("mprotect(" in line and "PROT_EXEC" in line)
        or ("mmap(" in line and "PROT_WRITE" in line and "PROT_EXEC" in line)
        or ("shmat(" in line and "SHM_EXEC" in line)
    ]
    assert forbidden == [], forbidden[:10]


def syscall_group(*names: str) -> set[str]:
    """The system calls in systemd's groups ``names``, nested groups expanded."""
    listing = analyze("syscall-filter", "--no-pager").stdout
    groups: dict[str, list[str]] = {}
    current = None
    for line in listing.splitlines():
        if line.startswith("@"):
            current = line.split()[0]
            groups[current] = []
        elif current and line.startswith(" ") and line.strip() and "#" not in line:
            groups[current].append(line.strip())

    def expand(group: str) -> set[str]:
        assert group in groups, f"no group {group} in systemd-analyze syscall-filter"
        found: set[str] = set()
        for entry in groups[group]:
            found |= expand(entry) if entry.startswith("@") else {entry}
        return found

    return set().union(*(expand(name) for name in names))


@needs_analyze
def test_every_system_call_made_passes_the_unit_filter(service_trace: list[str]) -> None:
    unit = parse_unit(SERVICE)
    filters = unit["Service.SystemCallFilter"]
    assert filters[0] == "@system-service", filters
    denied_groups = [g for value in filters[1:] for g in value.lstrip("~").split()]
    assert all(value.startswith("~") for value in filters[1:]), filters
    allowed = syscall_group("@system-service")
    denied = syscall_group(*denied_groups)
    assert "read" in allowed and "setuid" in denied, "group parsing is broken"
    used = set()
    for line in service_trace:
        match = SYSCALL_LINE.match(line)
        if match:
            used.add(match.group(1) or match.group(2))
    assert {"inotify_add_watch", "rename", "fsync", "sendto"} <= used, sorted(used)
    assert sorted(used - allowed) == [], "not in @system-service"
    assert sorted(used & denied) == [], "in a group the unit denies"


# -- PrivateUsers=yes: the spool group still gives access ----------------------------------

SERVICE_UID, SPOOL_GID, SCRAPER_UID, OTHER_GID = 61001, 61000, 61002, 61003
SETPRIV, UNSHARE = shutil.which("setpriv"), shutil.which("unshare")

# Runs as root in a private mount namespace (nothing leaks to the host): if the
# interpreter lives under /root (mode 0700), lay an empty 0755 tmpfs over /root and bind
# the interpreter's tree back, so an unprivileged uid can run it. Then drop to the
# service's uid/gid with no other groups and enter a user namespace where only those two
# are mapped, as PrivateUsers=yes does, and run the watcher once.
PRIVATE_USERS_SCRIPT = """
set -e
if [ -n "$HIDDEN" ]; then
    mkdir -p "$WORK/keep"
    mount --bind "$HIDDEN" "$WORK/keep"
    mount -t tmpfs -o mode=755 tmpfs /root
    mkdir -p "$HIDDEN"
    mount --bind "$WORK/keep" "$HIDDEN"
fi
exec setpriv --reuid="$SUID" --regid="$SGID" --clear-groups -- \
    unshare --map-user="$SUID" --map-group="$SGID" -- \
    sh -c 'stat -c "%u:%g %n" "$ROOT"/spool/*.json
           exec "$PY" -m ingester --root "$ROOT" watch --once'
"""


@pytest.mark.skipif(
    os.geteuid() != 0 or SETPRIV is None or UNSHARE is None,
    reason="needs root, setpriv and unshare to simulate PrivateUsers=yes",
)
def test_private_users_keeps_group_access_to_the_spool() -> None:
    work = Path(tempfile.mkdtemp(prefix="pu-", dir="/tmp"))
    try:
        work.chmod(0o755)
        root = work / "root"
        spool = root / "spool"
        spool.mkdir(parents=True)
        os.chown(root, SERVICE_UID, SPOOL_GID)
        root.chmod(0o750)
        os.chown(spool, SERVICE_UID, SPOOL_GID)
        spool.chmod(0o3770)  # as the tmpfiles.d snippet makes it
        # The scraper's drop: its own uid (unmapped inside), the spool group by setgid.
        good = spool / "scraped.json"
        good.write_bytes(payload(1))
        os.chown(good, SCRAPER_UID, SPOOL_GID)
        good.chmod(0o640)
        # Control: same owner, a group the service is not in: must not be readable.
        foreign = spool / "foreign.json"
        foreign.write_bytes(payload(2))
        os.chown(foreign, SCRAPER_UID, OTHER_GID)
        foreign.chmod(0o640)
        base = Path(sys.base_prefix).resolve()
        hidden = ""
        if base.is_relative_to("/root"):
            hidden = str(Path("/root", base.relative_to("/root").parts[0]))
        result = subprocess.run(
            [UNSHARE or "unshare", "-m", "--propagation=private", "sh", "-c", PRIVATE_USERS_SCRIPT],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=work,
            check=False,
            env=cli_env(
                WORK=str(work),
                ROOT=str(root),
                HIDDEN=hidden,
                PY=sys.executable,
                SUID=str(SERVICE_UID),
                SGID=str(SPOOL_GID),
            ),
        )
        if result.returncode == 126 and "watching" not in result.stderr:
            pytest.skip(f"the interpreter is not reachable by an unprivileged uid: {result.stderr}")
        # Inside the namespace the scraper's uid shows as the overflow uid, the group as is.
        assert f"65534:{SPOOL_GID} {good}" in result.stdout, result.stdout + result.stderr
        assert f"65534:65534 {foreign}" in result.stdout, result.stdout
        assert result.returncode == 0, result.stderr
        assert "ingested scraped.json" in result.stderr, result.stderr
        stored = versions(root)
        assert [p.read_bytes() for p in stored] == [payload(1)]
        assert stored[0].stat().st_uid == SERVICE_UID
        # The control was refused for want of permission: the check was real.
        assert (spool / "rejected" / "foreign.json").exists()
        assert "cannot read" in (spool / "rejected" / "foreign.json.reason.json").read_text()
    finally:
        shutil.rmtree(work, ignore_errors=True)
