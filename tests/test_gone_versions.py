"""Versions deleted while a reader reads the history.

Every reader lists the history, then reads each version; retention (the watcher's, or
``ingester cleanup``) may delete a listed version in between, and an operator's ``rm``
may delete any, the latest too. Such a version is not damaged: it is no longer in the
history, so a report is the history as it stands, and a reader that chose the latest
chooses again. The reader is stopped by strace right after one of its calls on a
version file, the deletion is made while it is stopped (``cleanup``, for real, or an
unlink), and only then does it go on.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from support import run_cli, run_command, wait_for
from support.capabilities import (
    STRACE,
    needs_strace,
    needs_strace_root,
    run_held_after,
    strace_attached,
)
from support.serveproc import ServeProcess, fresh_payload
from support.watchproc import payload

from ingester.history.names import (
    format_timestamp,
    generate_version_filename,
    parse_timestamp_from_filename,
)
from ingester.history.store import HistoryStore

pytestmark = needs_strace

HISTORY = "console-usage-history"


def make_history(root: Path) -> list[str]:
    """Five versions, oldest first: three of 30 days ago (expired but for the newest-N
    rule), then two of a minute ago."""
    init = run_cli(root, "init")
    assert init.returncode == 0, init.stderr
    store = HistoryStore(root / HISTORY, root / "console-usage-synced.json")
    store.load()
    now = datetime.now(UTC)
    times = [now - timedelta(days=30) + timedelta(seconds=i) for i in range(3)]
    times += [now - timedelta(seconds=60 - i) for i in range(2)]
    names: list[str] = []
    for i, when in enumerate(times):
        name = generate_version_filename(when, after=names[-1] if names else None)
        store.write_version(name, payload(i))
        names.append(name)
    store.publish()
    return names


def cleanup(root: Path) -> Callable[[], None]:
    """Retention keeping the newest two: the three old versions go, metadata updated."""

    def run() -> None:
        done = run_cli(root, "cleanup", INGESTER_MAX_VERSIONS="2")
        assert done.returncode == 0, done.stdout + done.stderr

    return run


def _rows(result: subprocess.CompletedProcess[str]) -> list[str]:
    """The version names ``list`` printed, in its order."""
    return [line.split()[0] for line in result.stdout.splitlines()[1:]]


def _at(name: str) -> str:
    stamp = parse_timestamp_from_filename(name)
    assert stamp is not None
    return stamp.strftime("%Y-%m-%dT%H:%M:%SZ")


# Each case: the command, which version's call it is stopped after (its index, oldest
# first; the first it reads, so the ones deleted are read after), and that call.
CASES = {
    "list": (("list",), 4, "openat"),
    "list --json": (("list", "--json"), 4, "openat"),
    "export": (("export", "--format", "jsonl"), 0, "openat"),
    "forecast": (("forecast",), 4, "openat"),
    "verify": (("verify",), 0, "openat"),
    # The ones deleted were read already: the metadata is what then tells of it.
    "verify, deleted once read": (("verify",), 3, "openat"),
    "snapshot": (("snapshot", "SNAP"), 0, "link"),
    # Stopped as the listing looks at the version: it is listed, then deleted.
    "show NAME": (("show", "NAME"), 1, "%%stat"),
    "show --at": (("show", "--at", "AT"), 1, "%%stat"),
}


@pytest.mark.parametrize("case", CASES)
def test_a_version_retention_deletes_under_a_reader_is_left_out_not_called_damaged(
    root: Path, case: str
) -> None:
    names = make_history(root)
    args, stop, call = CASES[case]
    snap = root.parent / "snap"
    named = {"SNAP": str(snap), "NAME": names[1], "AT": _at(names[1])}
    args = tuple(named.get(arg, arg) for arg in args)
    done = run_held_after(root, args, root / HISTORY / names[stop], call, cleanup(root))
    assert "Traceback" not in done.stderr
    assert sorted(p.name for p in (root / HISTORY).glob("2*.json")) == names[3:]
    if case.startswith("show"):
        # A version named that is gone is one line; one chosen (--at) is chosen again
        # from what is left: nothing at or before that time any more.
        assert done.returncode == 1, done.stdout + done.stderr
        assert done.stdout == ""
        if case == "show NAME":
            assert done.stderr == (
                f"error: no version {names[1]} in {root / HISTORY} (deleted meanwhile)\n"
            )
        else:
            assert done.stderr.startswith("error: no version at or before "), done.stderr
            assert done.stderr.count("\n") == 1, done.stderr
        return
    assert done.returncode == 0, done.stdout + done.stderr
    assert "damaged" not in done.stdout + done.stderr
    if case == "list":
        assert done.stderr == ""
        assert _rows(done) == [names[4], names[3]]
    elif case == "list --json":
        assert [v["name"] for v in json.loads(done.stdout)] == [names[4], names[3]]
    elif case == "export":
        assert done.stderr == ""
        rows = [json.loads(line)["version"] for line in done.stdout.splitlines()]
        assert rows == [names[0], names[3], names[4]]  # the first was open already
    elif case == "forecast":
        assert "WARNING" not in done.stderr, done.stderr
    elif case.startswith("verify"):
        # Those it read are checked; the metadata is judged against what is left.
        checked = 3 if stop == 0 else 5
        assert done.stdout.splitlines()[0].startswith(f"checked {checked} version(s) in ")
        assert done.stdout.splitlines()[-1] == "ok", done.stdout
    elif case == "snapshot":
        assert sorted(p.name for p in (snap / HISTORY).iterdir()) == sorted(
            [names[0], *names[3:], "_metadata.json"]
        )
        # Its metadata and latest link are those of the versions it holds: no hole.
        checked = run_cli(snap, "verify")
        assert checked.returncode == 0, checked.stdout + checked.stderr


def test_verify_judges_the_metadata_by_the_history_it_read_it_beside(root: Path) -> None:
    """A cleanup run after verify's last listing, before its read of the metadata: the
    metadata then tells of the history as it is after, the listing of it as it was.
    verify is stopped as that listing's last ``getdents64`` returns (found by a first,
    traced run: the last listing before the metadata is opened)."""
    names = make_history(root)
    history = root / HISTORY
    trace = root.parent / "dry.trace"
    dry = run_command(
        [
            *(STRACE, "-f", "-qq", "-o", str(trace), "-P", str(history)),
            *("-P", str(history / "_metadata.json"), "-e", "trace=getdents64,openat"),
            *(sys.executable, "-m", "ingester", "--root", str(root), "verify"),
        ]
    )
    assert dry.returncode == 0, dry.stdout + dry.stderr
    calls = trace.read_text().splitlines()
    metadata_read = max(n for n, line in enumerate(calls) if "_metadata.json" in line)
    listed = sum(1 for line in calls[:metadata_read] if "getdents64(" in line)
    done = run_held_after(root, ("verify",), history, "getdents64", cleanup(root), when=listed)
    assert sorted(p.name for p in history.glob("2*.json")) == names[3:]
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[-1] == "ok", done.stdout
    assert done.stderr == "", done.stderr


def test_list_limit_shows_n_versions_while_n_remain(root: Path) -> None:
    """One of the newest N deleted under ``list --limit N`` (by hand here: retention
    deletes the oldest): the next older one is shown in its place."""
    names = make_history(root)
    newest, next_one = (root / HISTORY / name for name in (names[4], names[3]))
    done = run_held_after(root, ("list", "--limit", "3"), newest, "openat", next_one.unlink)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stderr == ""
    assert _rows(done) == [names[4], names[2], names[1]]


def fresh_history(root: Path, count: int) -> list[str]:
    """``count`` versions of the last minutes, oldest first, each one's ``lastUpdated``
    its ingest time (so ``check`` finds the newest data fresh)."""
    init = run_cli(root, "init")
    assert init.returncode == 0, init.stderr
    store = HistoryStore(root / HISTORY, root / "console-usage-synced.json")
    store.load()
    now = datetime.now(UTC)
    names: list[str] = []
    for i in range(count):
        age = timedelta(seconds=60 * (count - i))
        name = generate_version_filename(now - age, after=names[-1] if names else None)
        store.write_version(name, fresh_payload(age, seq=i))
        names.append(name)
    store.publish()
    return names


def latest_deleted_under(root: Path, args: tuple[str, ...], newest: str) -> str:
    """Run ``args`` held as its listing looks at the latest, ``newest``, which is deleted
    by hand meanwhile (retention never deletes it; an operator may): it is listed, then
    gone when read. Return its stdout, once seen to be a success without a traceback."""
    path = root / HISTORY / newest
    done = run_held_after(root, args, path, "%%stat", path.unlink)
    assert "Traceback" not in done.stderr
    assert not path.exists()
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stderr == ""
    return done.stdout


def _status_rows(out: str) -> dict[str, str]:
    """The rows of ``status`` above its settings, by their label."""
    head = out.split("\nsettings:", 1)[0]
    return dict(
        re.split(r"\s{2,}", line, maxsplit=1) for line in head.splitlines() if line[:1] != " "
    )


def test_status_chooses_again_when_the_latest_is_deleted_under_it(root: Path) -> None:
    names = fresh_history(root, 3)
    out = latest_deleted_under(root, ("status",), names[2])
    rows = _status_rows(out)
    assert rows["latest"].startswith(f"{names[1]} (ingested "), out
    assert "DAMAGED" not in out and "gone" not in out, out
    assert rows["versions"].startswith("2 ("), out
    # The link still names the deleted one until a watcher or a repair moves it: said so.
    assert rows["latest link"].endswith(f"which is missing (the newest is {names[1]})"), out


def test_status_json_chooses_again_when_the_latest_is_deleted_under_it(root: Path) -> None:
    names = fresh_history(root, 3)
    report = json.loads(latest_deleted_under(root, ("status", "--json"), names[2]))
    assert report["latest"]["name"] == names[1]
    assert report["latest"]["error"] is None
    assert report["latest"]["lastUpdated"] is not None
    assert report["metadata"]["versionCount"] == 2
    newest = parse_timestamp_from_filename(names[1])
    assert report["metadata"]["newestTimestamp"] == format_timestamp(newest)
    assert names[1] in report["latestLink"]["problem"]


def test_status_with_its_only_version_deleted_under_it_has_none(root: Path) -> None:
    names = fresh_history(root, 1)
    out = latest_deleted_under(root, ("status",), names[0])
    assert _status_rows(out)["latest"] == "none yet", out
    assert "DAMAGED" not in out, out


def test_check_chooses_again_when_the_latest_is_deleted_under_it(root: Path) -> None:
    names = fresh_history(root, 3)
    out = latest_deleted_under(root, ("check", "--json"), names[2])
    result = json.loads(out)
    assert result["status"] == "OK", result
    assert result["latest"] == names[1]
    assert result["checks"][0]["message"].startswith("newest data "), result


def latest_gone_under_every_read(root: Path, args: tuple[str, ...]) -> str:
    """Run ``args`` on a history of four versions whose newest three each answer every
    open with ENOENT (strace's fault injection: what a read finds of a version deleted
    under it, again at each look). Return its stdout, once seen to end without a
    traceback."""
    names = fresh_history(root, 4)
    filters = [arg for name in names[1:] for arg in ("-P", str(root / HISTORY / name))]
    done = run_command(
        [
            *(STRACE, "-f", "-qq", "-o", "/dev/null", *filters),
            *("-e", "trace=openat", "-e", "inject=openat:error=ENOENT"),
            *(sys.executable, "-m", "ingester", "--root", str(root), *args),
        ]
    )
    assert "Traceback" not in done.stderr
    assert done.stderr == "", done.stderr
    return done.stdout


@needs_strace
def test_status_says_a_latest_gone_under_every_read_is_gone_not_damaged(root: Path) -> None:
    out = latest_gone_under_every_read(root, ("status",))
    assert "DAMAGED" not in out, out
    assert (
        "GONE: deleted while being read, 3 times in a row (something is deleting versions); "
        "run status again"
    ) in out, out


@needs_strace
def test_check_says_a_latest_gone_under_every_read_is_gone_not_damaged(root: Path) -> None:
    result = json.loads(latest_gone_under_every_read(root, ("check", "--json")))
    assert result["status"] == "CRITICAL", result
    message = result["checks"][0]["message"]
    assert message.endswith(
        "is gone: deleted while being read, 3 times in a row (something is deleting versions)"
    ), message


def only_version_deleted_under(
    root: Path, args: tuple[str, ...]
) -> subprocess.CompletedProcess[str]:
    """Run ``args`` on a history of one version, held as its listing looks at it, which
    is deleted by hand meanwhile: none is left when it is read. Returned once seen to
    end without a traceback."""
    path = root / HISTORY / fresh_history(root, 1)[0]
    done = run_held_after(root, args, path, "%%stat", path.unlink)
    assert "Traceback" not in done.stderr
    assert not path.exists()
    return done


def test_check_with_its_only_version_deleted_under_it_says_none_is_left(root: Path) -> None:
    done = only_version_deleted_under(root, ("check",))
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stdout.startswith("INGESTER CRITICAL - no version yet"), done.stdout


def serve_get_held(server: ServeProcess, url: str, path: Path) -> httpx.Response:
    """``GET url`` of ``server``, held (strace attached, SIGSTOP) as its listing looks at
    ``path``, which is deleted by hand meanwhile; the answer once it went on."""
    pid = server.proc.pid
    trace = server.root.parent / f"held-{os.urandom(3).hex()}.trace"
    tracer = subprocess.Popen(
        [
            *(STRACE, "-f", "-qq", "-p", str(pid), "-o", str(trace), "-P", str(path)),
            *("-e", "trace=%%stat", "-e", "inject=%%stat:signal=SIGSTOP:when=1"),
        ],
        stderr=subprocess.DEVNULL,
    )
    answers: list[httpx.Response] = []

    def get() -> None:
        with httpx.Client(base_url=server.base, timeout=60) as client:
            answers.append(client.get(url))

    getter = threading.Thread(target=get)
    try:
        wait_for(lambda: strace_attached(tracer, pid), 20, "strace attached")
        getter.start()

        def stopped() -> bool:
            if tracer.poll() is not None:  # never held, then: say so now, not at the deadline
                raise AssertionError(f"strace exited {tracer.returncode}:\n{server.log}")
            return trace.exists() and "stopped by SIGSTOP" in trace.read_text()

        wait_for(stopped, 30, f"serve held as it looks at {path.name}")
        path.unlink()
        os.kill(pid, signal.SIGCONT)
        getter.join(60)
    finally:
        os.kill(pid, signal.SIGCONT)
        tracer.send_signal(signal.SIGINT)
        tracer.wait(30)
    assert answers, server.log
    return answers[0]


@needs_strace_root
@pytest.mark.parametrize("url", ["/api/health", "/metrics", "/api/claude/console-usage"])
def test_serve_chooses_again_when_the_latest_is_deleted_under_a_request(
    root: Path, url: str
) -> None:
    """The health verdict, the payload gauges and the latest itself are those of the
    newest version left, never "unreadable" (or a gauge missing) for the one deleted."""
    names = fresh_history(root, 2)
    with ServeProcess(root) as server:
        # Added once it serves: the held request is then the first to look at it.
        store = HistoryStore(root / HISTORY, root / "console-usage-synced.json")
        store.load()
        newest = generate_version_filename(datetime.now(UTC), after=names[-1])
        store.write_version(newest, fresh_payload(seq=9))
        answer = serve_get_held(server, url, root / HISTORY / newest)
        assert server.stop() == 0, server.log
    assert "Traceback" not in server.log
    if url == "/metrics":
        assert answer.status_code == 200, answer.text
        assert "\ningester_payload_stale 0.0\n" in answer.text, answer.text
        assert "\ningester_versions 2.0\n" in answer.text, answer.text
        return
    assert answer.status_code == 200, answer.text
    body = answer.json()
    if url == "/api/health":
        assert body["status"] == "healthy", body
        assert body["latestVersion"] == names[1], body
        assert body["versionCount"] == 2, body
    else:
        assert body["versionInfo"]["filename"] == names[1], body
        assert body["versionInfo"]["total"] == 2, body


LATEST_READERS = {
    "show": ("show",),
    "forecast --json": ("forecast", "--json"),
    "export": ("export", "--format", "jsonl"),
    "check --forecast": ("check", "--json", "--forecast"),
}


@pytest.mark.parametrize("case", LATEST_READERS)
def test_other_readers_of_the_latest_go_on_from_the_one_left(root: Path, case: str) -> None:
    """Readers that chose the latest already chose again (``show``) or read every
    version and leave a gone one out (the forecast, ``export``): kept so."""
    names = fresh_history(root, 3)
    out = latest_deleted_under(root, LATEST_READERS[case], names[2])
    if case == "show":
        assert json.loads(out)["seq"] == 1
    elif case == "forecast --json":
        # Its lastUpdated is the second-earliest's ingest time, to the millisecond.
        newest = format_timestamp(parse_timestamp_from_filename(names[1]))
        body = json.loads(out)
        assert body["asOf"][:19] == newest[:19], out
        assert body["limits"][0]["basis"]["points"] == 2, out
    elif case == "export":
        rows = [json.loads(line)["version"] for line in out.splitlines()]
        assert rows == names[:2]
    else:
        result = json.loads(out)
        assert result["status"] == "OK" and result["latest"] == names[1], result


def test_forecast_with_its_only_version_deleted_under_it_has_none(root: Path) -> None:
    """Not "no snapshot to forecast from" (versions there, none to go by): none is left."""
    done = only_version_deleted_under(root, ("forecast",))
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stdout == ""
    assert done.stderr == f"error: no version in {root / HISTORY} yet\n"
