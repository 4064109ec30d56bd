"""The shipped units for ``ingester serve``: they verify, score <= 1.5, and what they promise
holds: socket activation without a network of its own, group-only access to the history
and the spool, and a run under the kernel's MDWE.

Nothing here boots systemd or touches the host's users: ``systemd-analyze`` reads unit
files, ``systemd-sysusers`` works on a temporary ``--root``.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from support import cli_env, wait_for
from support.ports import free_port
from support.serveproc import KEY, ServeProcess, fresh_payload, version_name
from test_systemd_units import (
    MAX_EXPOSURE,
    MDWE,
    NAME,
    SYSUSERS,
    SYSUSERS_BIN,
    TMPFILES,
    analyze,
    assert_verifies,
    ingester_binary,
    needs_analyze,
    needs_mdwe,
    one,
    parse_unit,
    passwd_entry,
    run_tool,
    snippet_lines,
)

UNITS = Path(__file__).resolve().parents[1] / "systemd"
SERVE = f"{NAME}-serve"
SERVICE = UNITS / f"{SERVE}.service"
SOCKET = UNITS / f"{SERVE}.socket"
SERVE_SYSUSERS = UNITS / f"{SERVE}.sysusers"
INSTALLED_BINARY = "/usr/local/bin/ingester"
API = "/api/claude/console-usage"


@pytest.fixture
def installed(tmp_path: Path) -> Path:
    """The serve units in a temp folder, ExecStart pointing at this environment."""
    folder = tmp_path / "units"
    folder.mkdir()
    for source in (SERVICE, SOCKET):
        shutil.copy(source, folder / source.name)
    service = folder / SERVICE.name
    text = service.read_text()
    assert f"ExecStart={INSTALLED_BINARY} --root /var/lib/{NAME} serve " in text
    service.write_text(
        text.replace(f"ExecStart={INSTALLED_BINARY} ", f"ExecStart={ingester_binary()} ")
    )
    return service


def test_unit_declares_the_serve_contract() -> None:
    unit = parse_unit(SERVICE)
    watcher = parse_unit(UNITS / f"{NAME}.service")
    exec_start = one(unit, "Service.ExecStart")
    assert exec_start.startswith(f"{INSTALLED_BINARY} --root /var/lib/{NAME} serve")
    # Same root as the watcher's: the same history and spool.
    assert f"--root /var/lib/{NAME} " in one(watcher, "Service.ExecStart") + " "
    # The key comes from a credential file, never from the command line.
    assert "--api-key-file ${CREDENTIALS_DIRECTORY}/api-key" in exec_start
    assert one(unit, "Service.LoadCredential").startswith("api-key:/")
    assert "INGESTER_API_KEY" not in SERVICE.read_text().replace("# ", "")
    # Its own user, whose primary group is the spool group (mapped under PrivateUsers=).
    assert one(unit, "Service.User") != one(watcher, "Service.User")
    assert one(unit, "Service.Group") == one(watcher, "Service.Group") == NAME
    users = [row for row in snippet_lines(SERVE_SYSUSERS) if row[0] == "u"]
    assert [(row[1], row[2]) for row in users] == [(one(unit, "Service.User"), f"-:{NAME}")]
    # Writes only the spool; never the history; never its own state.
    assert one(unit, "Service.ProtectSystem") == "strict"
    assert unit["Service.ReadWritePaths"] == [f"/var/lib/{NAME}/spool"]
    assert "Service.StateDirectory" not in unit, "a StateDirectory would chown the history"
    spool_rows = {row[1]: row for row in snippet_lines(TMPFILES)}
    assert f"/var/lib/{NAME}/spool" in spool_rows
    # Socket activation: the listening socket is systemd's, the service has no network.
    sock = parse_unit(SOCKET)
    assert one(sock, "Socket.ListenStream") == "127.0.0.1:8080"
    assert one(unit, "Unit.Requires") == SOCKET.name
    assert one(unit, "Service.PrivateNetwork") == "yes"
    assert one(unit, "Service.Restart") == "on-failure"
    # It reads the kernel's lock table to see whether the watcher runs (ProcSubset=pid
    # would hide it, and serve would warn of a missing watcher that is there).
    assert "Service.ProcSubset" not in unit
    assert one(unit, "Service.ProtectProc") == "invisible"


@needs_analyze
def test_systemd_analyze_verify_passes(installed: Path) -> None:
    assert_verifies(installed, installed.with_suffix(".socket"))


@needs_analyze
def test_security_exposure_is_at_most_1_5(installed: Path) -> None:
    result = analyze("security", "--offline=yes", str(installed))
    assert result.returncode == 0, result.stderr
    match = re.search(
        rf"Overall exposure level for {re.escape(installed.name)}: (\d+(?:\.\d+)?)", result.stdout
    )
    assert match, result.stdout
    exposed = [line.strip() for line in result.stdout.splitlines() if "✗" in line]
    assert float(match[1]) <= MAX_EXPOSURE, "\n".join(exposed)
    gate = analyze(
        "security", "--offline=yes", f"--threshold={int(MAX_EXPOSURE * 10)}", str(installed)
    )
    assert gate.returncode == 0, gate.stdout[-2000:]


@pytest.mark.skipif(SYSUSERS_BIN is None, reason="systemd-sysusers is not installed")
def test_sysusers_snippets_make_a_user_in_the_spool_group(tmp_path: Path) -> None:
    fake_root = tmp_path / "fakeroot"
    (fake_root / "etc").mkdir(parents=True)
    assert SYSUSERS_BIN is not None
    done = run_tool(SYSUSERS_BIN, f"--root={fake_root}", str(SYSUSERS), str(SERVE_SYSUSERS))
    assert done.returncode == 0, done.stderr
    user = one(parse_unit(SERVICE), "Service.User")
    _, _, uid, gid, _, _home, shell = passwd_entry(fake_root, user)
    watcher_gid = passwd_entry(fake_root, NAME)[3]
    assert gid == watcher_gid, "the HTTP user's primary group must be the spool group"
    assert int(uid) < 1000
    assert shell.endswith("nologin")


# -- socket activation: the passed socket is used, no network of its own needed -----------

ACTIVATE = shutil.which("systemd-socket-activate")
UNSHARE = shutil.which("unshare")


@pytest.mark.skipif(
    ACTIVATE is None or UNSHARE is None or os.geteuid() != 0 or not socket.has_ipv6,
    reason="needs systemd-socket-activate, unshare, root (for a private network namespace) "
    "and IPv6",
)
def test_socket_activation_in_a_private_network(root: Path) -> None:
    """Two sockets in one unit (IPv4 and IPv6, as ListenStream= twice): both answer."""
    (root / "console-usage-history").mkdir()
    (root / "console-usage-history" / version_name(datetime.now(UTC))).write_bytes(fresh_payload())
    ports = [free_port(("127.0.0.1",)), free_port(("::1",))]  # for systemd-socket-activate
    log_path = root.parent / "activated.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [
                ACTIVATE or "",
                "-l",
                f"127.0.0.1:{ports[0]}",
                "-l",
                f"[::1]:{ports[1]}",
                "--fdname=http4:http6",
                "-E",
                f"INGESTER_API_KEY={KEY}",
                # unshare -n: a network namespace with nothing in it (not even lo up), as
                # PrivateNetwork=yes gives; it execs in place so LISTEN_PID stays right.
                UNSHARE or "",
                "-n",
                sys.executable,
                "-m",
                "ingester",
                "--root",
                str(root),
                "serve",
                "--listen",
                "127.0.0.1:1",  # not used while sockets are passed
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=cli_env(),
        )
    try:
        wait_for(
            lambda: log_path.read_text().count("Listening on") == 2, 10, "the activator to listen"
        )
        for base in (f"http://127.0.0.1:{ports[0]}", f"http://[::1]:{ports[1]}"):
            with httpx.Client(base_url=base, timeout=15) as client:
                assert client.get(API).status_code == 200
                r = client.post(
                    API,
                    content=fresh_payload(),
                    headers={"Content-Type": "application/json", "X-API-Key": KEY},
                )
                assert r.status_code == 202
        log = log_path.read_text()
        assert f"listening on http://127.0.0.1:{ports[0]}, http://[::1]:{ports[1]} " in log
        assert "2 sockets from systemd (fd 3 'http4', fd 4 'http6'" in log
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()  # not left running after the test
            proc.wait(10)
            raise
    assert "serve: stopped:" in log_path.read_text()


# -- group-only access, as the unit's users and PrivateUsers=yes make it -------------------

HTTP_UID, SPOOL_GID, WATCHER_UID = 61004, 61000, 61001
SETPRIV = shutil.which("setpriv")

# As in test_systemd_units: a private mount namespace hides /root behind a 0755 tmpfs with
# the interpreter's tree bound back; then drop to the HTTP user in the spool group, in a
# user namespace mapping only those two, and exec the command given.
AS_HTTP_USER = """
set -e
if [ -n "$HIDDEN" ]; then
    mkdir -p "$WORK/keep"
    mount --bind "$HIDDEN" "$WORK/keep"
    mount -t tmpfs -o mode=755 tmpfs /root
    mkdir -p "$HIDDEN"
    mount --bind "$WORK/keep" "$HIDDEN"
fi
exec setpriv --reuid="$SUID" --regid="$SGID" --clear-groups -- \
    unshare --map-user="$SUID" --map-group="$SGID" -- "$@"
"""


@pytest.mark.skipif(
    os.geteuid() != 0 or SETPRIV is None or UNSHARE is None,
    reason="needs root, setpriv and unshare to run serve as its own user",
)
def test_serve_reads_and_drops_through_the_group_only() -> None:
    work = Path(tempfile.mkdtemp(prefix="serve-pu-", dir="/tmp"))
    try:
        work.chmod(0o755)
        root = work / "root"
        history = root / "console-usage-history"
        spool = root / "spool"
        history.mkdir(parents=True)
        spool.mkdir()
        (spool / "tmp").mkdir()
        name = version_name(datetime.now(UTC))
        (history / name).write_bytes(fresh_payload())
        # As the watcher's units leave them: owner the watcher, group the spool group.
        for path, mode in (
            (root, 0o750),
            (history, 0o750),
            (history / name, 0o440),
            (spool, 0o3770),
            (spool / "tmp", 0o3770),
        ):
            os.chown(path, WATCHER_UID, SPOOL_GID)
            path.chmod(mode)
        base = Path(sys.base_prefix).resolve()
        hidden = ""
        if base.is_relative_to("/root"):
            hidden = str(Path("/root", base.relative_to("/root").parts[0]))
        wrapper = (UNSHARE or "", "-m", "--propagation=private", "sh", "-c", AS_HTTP_USER, "sh")
        server = ServeProcess(
            root,
            wrapper=wrapper,
            env={
                "WORK": str(work),
                "HIDDEN": hidden,
                "SUID": str(HTTP_UID),
                "SGID": str(SPOOL_GID),
            },
        )
        try:
            server.start()
            assert server.get(API).json()["versionInfo"]["filename"] == name
            r = server.post(
                API,
                content=fresh_payload(seq=1),
                headers={"Content-Type": "application/json", "X-API-Key": KEY},
            )
            assert r.status_code == 202, r.text + server.log
            drop = spool / r.json()["drop"]
            st = drop.stat()
            assert (st.st_uid, st.st_gid) == (HTTP_UID, SPOOL_GID)
            assert st.st_mode & 0o040, "the watcher reads drops through the group"
            # Control: take the group's write access away; the POST is refused (503).
            spool.chmod(0o3750)
            (spool / "tmp").chmod(0o3750)
            r = server.post(
                API,
                content=fresh_payload(seq=2),
                headers={"Content-Type": "application/json", "X-API-Key": KEY},
            )
            assert r.status_code == 503, r.text
        finally:
            server.stop()
        assert "Traceback" not in server.log
    finally:
        shutil.rmtree(work, ignore_errors=True)


@needs_mdwe
def test_serve_runs_under_mdwe(root: Path) -> None:
    (root / "console-usage-history").mkdir()
    name = version_name(datetime.now(UTC))
    (root / "console-usage-history" / name).write_bytes(fresh_payload())
    with ServeProcess(root, wrapper=MDWE) as server:
        assert server.get(API).json()["versionInfo"]["filename"] == name
        r = server.post(
            API,
            content=fresh_payload(seq=1),
            headers={"Content-Type": "application/json", "X-API-Key": KEY},
        )
        assert r.status_code == 202
        assert server.get("/metrics").status_code == 200
        assert server.stop() == 0
