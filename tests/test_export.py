"""``ingester export`` through the real CLI: CSV and JSON Lines read back and compared."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support import IS_ROOT, VALID_SAMPLES, cli_env, run_cli, wait_for
from support.capabilities import STRACE, needs_strace, run_held_after, run_tool
from support.process import kill_group
from test_durable_faults import tmpfs  # noqa: F401 - a fixture

from ingester.history.names import generate_version_filename
from ingester.usage.export import COLUMNS, defuse_formulas, write_rows
from ingester.usage.resets import parse_resets_in

HISTORY = "console-usage-history"
START = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)
# The console's zone for these exports: not UTC, so a reset read in the wrong zone shows.
ZONE = "America/New_York"


def export_cli(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``ingester export ARGS`` with the console's time zone set to :data:`ZONE`."""
    return run_cli(root, "export", *args, INGESTER_CONSOLE_TIMEZONE=ZONE)


def window(pct: float, resets: str) -> dict[str, Any]:
    return {"resetsIn": resets, "percentageUsed": pct}


def payloads() -> Iterator[dict[str, Any]]:
    """Varied valid payloads: sections missing, odd text, numbers with and without fractions."""
    texts = ["4 hr 12 min", 'a "quoted", comma', "line\nbreak", "Montag 8:59 \u2013 ünïcødé", "x"]
    for i in range(40):
        body: dict[str, Any] = {
            "lastUpdated": (START + timedelta(minutes=5 * i)).isoformat().replace("+00:00", "Z")
            if i % 3
            else (START + timedelta(minutes=5 * i)).astimezone().isoformat(),
        }
        if i % 4 != 3:
            body["currentSession"] = window(i * 2.5 if i % 2 else i, texts[i % len(texts)])
        if i % 5 != 4 or "currentSession" not in body:
            body["weeklyLimits"] = {
                "allModels": window(min(100, i * 1.75), "Mon 8:59 AM"),
                "sonnetOnly": window(i % 11, "Thu 10:00 AM"),
            }
        if i % 6 == 1:
            body["isPartial"] = bool(i % 12 == 1)
            body["extractionErrors"] = {"weekly": "not found"}
        yield body


def build_history(root: Path, count: int | None = None) -> list[tuple[str, dict[str, Any]]]:
    """Versions written straight into a history, 5 minutes apart; (name, payload) oldest first."""
    assert run_cli(root, "init").returncode == 0
    versions: list[tuple[str, dict[str, Any]]] = []
    after = None
    for i, body in enumerate(payloads()):
        if count is not None and i >= count:
            break
        name = generate_version_filename(START + timedelta(minutes=5 * i), after=after)
        after = name
        path = root / HISTORY / name
        path.write_text(json.dumps(body, ensure_ascii=False), encoding="utf-8")
        path.chmod(0o444)
        versions.append((name, body))
    return versions


def expected_row(name: str, body: dict[str, Any]) -> dict[str, Any]:
    """The row a version should give, with Python values (None for missing)."""
    stamp = datetime.strptime(name[:19], "%Y-%m-%dT%H-%M-%S").replace(tzinfo=UTC)
    last = datetime.fromisoformat(body["lastUpdated"].replace("Z", "+00:00")).astimezone(UTC)
    row: dict[str, Any] = {
        "ingestedAt": stamp,
        "lastUpdated": last,
        "isPartial": body.get("isPartial"),
        "version": name,
    }
    weekly = body.get("weeklyLimits") or {}
    for key, win in (
        ("currentSession", body.get("currentSession")),
        ("weeklyLimits.allModels", weekly.get("allModels")),
        ("weeklyLimits.sonnetOnly", weekly.get("sonnetOnly")),
    ):
        row[f"{key}.percentageUsed"] = win["percentageUsed"] if win else None
        row[f"{key}.resetsIn"] = win["resetsIn"] if win else None
        reset = parse_resets_in(win["resetsIn"], last, ZoneInfo(ZONE)) if win else None
        row[f"{key}.resetsAt"] = reset.at if reset else None
    return row


def parse_time(text: str) -> datetime:
    assert text.endswith("Z"), text
    return datetime.fromisoformat(text[:-1] + "+00:00")


def from_csv_cell(column: str, text: str) -> Any:
    """A CSV cell back as the Python value it stands for."""
    if text == "":
        return None
    if column in ("ingestedAt", "lastUpdated") or column.endswith("resetsAt"):
        return parse_time(text)
    if column == "isPartial":
        return {"true": True, "false": False}[text]
    if column.endswith("percentageUsed"):
        return float(text)
    return text


def export_bytes(root: Path, *args: str) -> bytes:
    """Standard output of ``ingester export ARGS`` as bytes (no newline translation)."""
    done = subprocess.run(
        [sys.executable, "-m", "ingester", "--root", str(root), "export", *args],
        capture_output=True,
        timeout=60,
        env=cli_env(INGESTER_CONSOLE_TIMEZONE=ZONE),
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == b"", done.stderr
    return done.stdout


def ok(result: Any) -> Any:
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    return result


def test_csv_reads_back_as_the_versions(root: Path) -> None:
    versions = build_history(root)
    raw = export_bytes(root, "--format", "csv").decode("utf-8")
    # RFC 4180: CRLF after every record (a newline inside a quoted cell stays as it was).
    assert raw.startswith(",".join(COLUMNS) + "\r\n")
    assert raw.endswith("\r\n")
    records = list(csv.reader(io.StringIO(raw, newline="")))
    assert tuple(records[0]) == COLUMNS
    assert len(records) == 1 + len(versions)
    for (name, body), record in zip(versions, records[1:], strict=True):
        got = {c: from_csv_cell(c, cell) for c, cell in zip(COLUMNS, record, strict=True)}
        assert got == expected_row(name, body)


def test_csv_reads_back_with_polars(root: Path) -> None:
    pl = pytest.importorskip("polars")
    versions = build_history(root)
    out = root / "usage.csv"
    result = ok(export_cli(root, "--output", str(out)))
    assert f"exported {len(versions)} version(s)" in result.stdout
    frame = pl.read_csv(out, try_parse_dates=False, infer_schema_length=None)
    assert tuple(frame.columns) == COLUMNS
    assert frame.height == len(versions)
    assert frame["version"].to_list() == [name for name, _ in versions]
    for column in ("currentSession.percentageUsed", "weeklyLimits.allModels.percentageUsed"):
        assert frame[column].dtype.is_numeric()
        want = [expected_row(n, b)[column] for n, b in versions]
        assert frame[column].to_list() == want
    assert frame["isPartial"].to_list() == [b.get("isPartial") for _, b in versions]
    assert frame["currentSession.resetsIn"].to_list() == [
        expected_row(n, b)["currentSession.resetsIn"] for n, b in versions
    ]


def test_jsonl_rows_match_the_versions(root: Path) -> None:
    versions = build_history(root)
    result = ok(export_cli(root, "--format", "jsonl"))
    lines = result.stdout.splitlines()
    assert len(lines) == len(versions)
    for (name, body), line in zip(versions, lines, strict=True):
        row = json.loads(line)
        assert tuple(row) == COLUMNS
        want = expected_row(name, body)
        for column in COLUMNS:
            if column.endswith(("At", "lastUpdated")) and row[column] is not None:
                row[column] = parse_time(row[column])
        assert row == want


def test_since_and_until_select_by_ingest_time_inclusive(root: Path) -> None:
    versions = build_history(root, count=20)
    # Versions are 5 minutes apart from START: pick [3] .. [7] by their own times.
    since = START + timedelta(minutes=15)
    until = START + timedelta(minutes=35)
    want = [name for name, _ in versions[3:8]]
    for since_text, until_text in (
        (since.strftime("%Y-%m-%dT%H:%M:%S"), until.strftime("%Y-%m-%dT%H:%M:%SZ")),  # no offset
        (
            since.astimezone(UTC).replace(tzinfo=None).isoformat() + "+00:00",
            (until + timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%S+02:00"),
        ),
    ):
        result = ok(
            export_cli(root, "--format", "jsonl", "--since", since_text, "--until", until_text)
        )
        assert [json.loads(line)["version"] for line in result.stdout.splitlines()] == want
    only_since = ok(export_cli(root, "--format", "jsonl", "--since", since.isoformat()))
    assert len(only_since.stdout.splitlines()) == 17
    # To the second: a start within the second a name carries still takes that version.
    within = (since + timedelta(milliseconds=500)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    within_rows = ok(
        export_cli(root, "--format", "jsonl", "--since", within, "--until", until_text)
    )
    assert [json.loads(line)["version"] for line in within_rows.stdout.splitlines()] == want
    nothing = export_bytes(root, "--since", "2030-01-01")
    assert nothing == (",".join(COLUMNS) + "\r\n").encode()


def test_damaged_versions_are_skipped_one_warning_each(root: Path) -> None:
    versions = build_history(root, count=6)
    damaged = {versions[1][0]: b"{not json", versions[4][0]: b'{"lastUpdated": "x"}'}
    for name, data in damaged.items():
        path = root / HISTORY / name
        path.chmod(0o644)
        path.write_bytes(data)
    result = ok(export_cli(root, "--format", "jsonl"))
    names = [json.loads(line)["version"] for line in result.stdout.splitlines()]
    assert names == [n for n, _ in versions if n not in damaged]
    warnings = result.stderr.splitlines()
    assert len(warnings) == 2, result.stderr
    for line, name in zip(warnings, sorted(damaged), strict=True):
        assert line.startswith(f"warning: skipped damaged version {name}: "), line
    # Under --log-format json each is one object at level warning, as every other line.
    logged = run_cli(root, "--log-format", "json", "export", "--format", "jsonl")
    entries = [json.loads(line) for line in ok(logged).stderr.splitlines()]
    assert [e["level"] for e in entries] == ["warning", "warning"], logged.stderr
    for entry, name in zip(entries, sorted(damaged), strict=True):
        assert entry["msg"].startswith(f"skipped damaged version {name}: "), entry


def test_a_warning_that_stderr_cannot_take_never_fails_the_export(
    root: Path, tmp_path: Path
) -> None:
    """Standard error on a full disk (``2>/dev/full``): the warning for a damaged
    version is lost, but the export is written whole and exits 0, as its help says
    (1 only when there is no history or the output cannot be written); never blamed
    on the output's disk."""
    versions = build_history(root, count=4)
    damaged = root / HISTORY / versions[1][0]
    damaged.chmod(0o644)
    damaged.write_bytes(b"{not json")
    out, piped = tmp_path / "usage.jsonl", tmp_path / "stdout"
    for target in (str(out), "-"):
        command = ["export", "--format", "jsonl", "-o", target]
        with piped.open("wb") as stdout, open("/dev/full", "wb") as stderr:
            done = subprocess.run(
                [sys.executable, "-m", "ingester", "--root", str(root), *command],
                stdout=stdout,
                stderr=stderr,
                timeout=60,
                env=cli_env(INGESTER_CONSOLE_TIMEZONE=ZONE),
                check=False,
            )
        assert done.returncode == 0, target
        written = (out if target != "-" else piped).read_text().splitlines()
        assert [json.loads(line)["version"] for line in written] == [
            n for n, _ in versions if n != damaged.name
        ]


def test_text_that_a_spreadsheet_would_run_is_defused_in_csv_only(root: Path) -> None:
    assert run_cli(root, "init").returncode == 0
    body = {
        "currentSession": window(10, '=HYPERLINK("http://x")'),
        "lastUpdated": "2026-11-27T14:05:00Z",
    }
    name = "2026-11-27T14-05-00-0000aaaa.json"
    (root / HISTORY / name).write_text(json.dumps(body))
    as_csv = export_bytes(root).decode()
    record = list(csv.reader(io.StringIO(as_csv, newline="")))[1]
    assert record[COLUMNS.index("currentSession.resetsIn")] == '\'=HYPERLINK("http://x")'
    as_jsonl = ok(export_cli(root, "--format", "jsonl"))
    assert json.loads(as_jsonl.stdout)["currentSession.resetsIn"] == '=HYPERLINK("http://x")'


def test_resets_at_reads_each_wording_in_the_console_time_zone(root: Path) -> None:
    assert run_cli(root, "init").returncode == 0
    body = {
        "currentSession": window(10, "4 hr 12 min"),
        "weeklyLimits": {
            "allModels": window(41, "Mon 8:59 AM"),
            "sonnetOnly": window(7, "whenever"),
        },
        "lastUpdated": "2026-11-27T14:05:00Z",  # a Friday
    }
    (root / HISTORY / "2026-11-27T14-05-10-0000aaaa.json").write_text(json.dumps(body))
    row = json.loads(ok(export_cli(root, "--format", "jsonl")).stdout)
    assert row["currentSession.resetsAt"] == "2026-11-27T18:17:00.000Z"
    # Monday 8:59 in New York (EST, UTC-5), not 8:59 UTC.
    assert row["weeklyLimits.allModels.resetsAt"] == "2026-11-30T13:59:00.000Z"
    assert row["weeklyLimits.sonnetOnly.resetsAt"] is None
    in_berlin = run_cli(root, "--console-timezone", "Europe/Berlin", "export", "--format", "jsonl")
    assert json.loads(ok(in_berlin).stdout)["weeklyLimits.allModels.resetsAt"] == (
        "2026-11-30T07:59:00.000Z"
    )
    as_csv = list(csv.reader(io.StringIO(export_bytes(root).decode(), newline="")))
    assert as_csv[1][COLUMNS.index("weeklyLimits.sonnetOnly.resetsAt")] == ""


# What a spreadsheet runs: a field starting (after spaces) with one of these.
TRIGGERS = ("=", "+", "-", "@", "\t", "\r", "\n", "\uff1d", "\uff0b", "\uff0d", "\uff20")


def fields_a_spreadsheet_sees(raw: str) -> list[str]:
    """Every field of ``raw`` CSV as spreadsheets in a ``,`` and in a ``;`` locale split it.

    Both with quote handling (Python's csv, as LibreOffice and Excel read a file) and
    without (a paste, or a parser that lost track of the quotes: split at every
    separator and line break, a field's leading spaces and quotes dropped).
    """
    fields: list[str] = []
    for delimiter in (",", ";"):
        for record in csv.reader(io.StringIO(raw, newline=""), delimiter=delimiter):
            fields += [f.lstrip(" ") for f in record]
    fields += [f.lstrip(' "') for f in re.split(r"[,;\t\r\n]", raw)]
    return fields


def runs_as_formula(field: str) -> bool:
    return field.startswith(TRIGGERS)


def test_no_field_a_spreadsheet_sees_in_either_locale_runs_as_a_formula(root: Path) -> None:
    assert run_cli(root, "init").returncode == 0
    hostile = [
        "4 hr;=1+2;",
        "4 hr,=1+2,",
        '4 hr;"=1+2"',
        "4 hr; @SUM(A1)",
        "\n=1+2",
        "\r\n+1",
        "\t-1",
        "x\n=cmd|' /C calc'!A0",
        "Mon 8:59 AM;\uff1dSUM(1)",
    ]
    for i, text in enumerate(hostile):
        body = {"currentSession": window(10, text), "lastUpdated": "2026-11-27T14:05:00Z"}
        name = f"2026-11-27T14-05-{i:02d}-0000aaaa.json"
        (root / HISTORY / name).write_text(json.dumps(body))
    raw = export_bytes(root).decode()
    # Before the defence, a spreadsheet sees a formula in every one of them.
    undefended = "\r\n".join(hostile)
    assert all(any(map(runs_as_formula, fields_a_spreadsheet_sees(t))) for t in hostile)
    assert any(map(runs_as_formula, fields_a_spreadsheet_sees(undefended)))
    formulas = [f for f in fields_a_spreadsheet_sees(raw) if runs_as_formula(f)]
    assert formulas == [], formulas
    # The comma locale reads each cell back whole, an apostrophe before each trigger.
    records = list(csv.reader(io.StringIO(raw, newline="")))[1:]
    cells = [r[COLUMNS.index("currentSession.resetsIn")] for r in records]
    assert cells[0] == "4 hr;'=1+2;"
    assert [c.replace("'", "") for c in cells] == [t.replace("'", "") for t in hostile]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.text(alphabet=st.sampled_from([*TRIGGERS, ",", ";", '"', "'", " ", "a", "1"])),
        min_size=1,
        max_size=3,
    )
)
def test_any_text_gives_no_formula_in_either_locale(texts: list[str]) -> None:
    first = ("2026-11-27T14:05:00.000Z", "2026-11-27T14:04:41.250Z")
    last = (None, "2026-11-27T14-05-00-0000aaaa.json")
    rows = [(*first, 23, text, None, 41.5, text, None, 7, text, None, *last) for text in texts]
    out = io.BytesIO()
    write_rows(iter(rows), out, "csv")
    raw = out.getvalue().decode("utf-8")
    formulas = [f for f in fields_a_spreadsheet_sees(raw) if runs_as_formula(f)]
    assert formulas == [], (texts, formulas)


def test_samples_export_and_empty_history(root: Path) -> None:
    assert run_cli(root, "init").returncode == 0
    empty = export_bytes(root)
    assert empty == (",".join(COLUMNS) + "\r\n").encode()
    ok(run_cli(root, "ingest", *map(str, VALID_SAMPLES)))
    rows = ok(export_cli(root, "--format", "jsonl")).stdout.splitlines()
    assert len(rows) == len(VALID_SAMPLES)


def test_output_file_replaces_atomically_and_leaves_no_temp(root: Path) -> None:
    build_history(root, count=5)
    out = root / "out" / "usage.csv"
    out.parent.mkdir()
    out.write_text("old export\n")
    ok(export_cli(root, "-o", str(out)))
    assert out.read_bytes().count(b"\r\n") == 6
    assert sorted(os.listdir(out.parent)) == ["usage.csv"]


def test_errors_are_one_line(root: Path, tmp_path: Path) -> None:
    no_history = export_cli(root)
    assert no_history.returncode == 1
    assert no_history.stderr.startswith("error: no history at ")
    assert len(no_history.stderr.splitlines()) == 1
    build_history(root, count=2)
    missing_folder = export_cli(root, "-o", str(tmp_path / "nope" / "x.csv"))
    assert missing_folder.returncode == 1
    assert missing_folder.stderr.startswith("error: cannot create ")
    assert "[ENOENT]" in missing_folder.stderr
    assert len(missing_folder.stderr.splitlines()) == 1
    backwards = export_cli(root, "--since", "2026-11-21", "--until", "2026-11-20")
    assert backwards.returncode == 2
    assert "is after --until" in backwards.stderr
    target = tmp_path / "target.csv"
    target.write_text("kept\n")
    (tmp_path / "link.csv").symlink_to(target)
    os.mkfifo(tmp_path / "pipe.csv")
    for name, what in (("link.csv", "a symlink"), ("pipe.csv", "a FIFO")):
        refused = export_cli(root, "-o", str(tmp_path / name))
        assert refused.returncode == 1
        assert refused.stderr.startswith(f"error: {tmp_path / name} is {what}"), refused.stderr
        assert len(refused.stderr.splitlines()) == 1
    assert target.read_text() == "kept\n"
    bad_time = export_cli(root, "--until", "yesterday")
    assert bad_time.returncode == 2
    assert "not an ISO-8601 time" in bad_time.stderr
    # Exists with its offset, not in UTC: a usage error too, never a traceback.
    beyond = export_cli(root, "--since", "9999-12-31T23:59-01:00")
    assert beyond.returncode == 2
    assert "is not a time that exists in UTC" in beyond.stderr
    assert "Traceback" not in beyond.stderr
    assert "Traceback" not in missing_folder.stderr + backwards.stderr + bad_time.stderr


def test_output_onto_the_latest_link_or_its_lock_is_refused_and_both_kept(
    root: Path, tmp_path: Path
) -> None:
    """Where the latest link is a file (a copy, where no symlink can be made; the
    original server's layout), ``-o`` naming it, or the lock file beside it that keeps
    a second writer of the link away, is refused with one line: renamed over them,
    the export would replace the served snapshot, or let two writers hold the link's
    lock at once. Also by another path to the root (a symlink)."""
    versions = build_history(root, count=2)
    latest = root / "console-usage-synced.json"
    latest.unlink(missing_ok=True)
    latest.write_bytes((root / HISTORY / versions[-1][0]).read_bytes())
    lock = root / ".console-usage-synced.json.lock"
    lock.write_text("")
    before = {p: p.read_bytes() for p in (latest, lock)}
    (tmp_path / "way").symlink_to(root)
    for path in (latest, lock, tmp_path / "way" / latest.name):
        refused = export_cli(root, "-o", str(path))
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert refused.stderr.startswith(f"error: {path} is the latest link"), refused.stderr
        assert len(refused.stderr.splitlines()) == 1
    assert {p: p.read_bytes() for p in (latest, lock)} == before
    assert not [n for n in os.listdir(root) if n.startswith(".tmp-")]


def test_output_into_the_history_or_the_spool_is_refused_and_the_version_kept(
    root: Path,
) -> None:
    """``-o`` naming a version (or any path in the history, the spool or the rejected
    folder) is refused with one line, as a snapshot's destination is: the export is
    renamed over its path, and a version there (read-only, which ``rename(2)`` ignores)
    would be lost for good; the version stays byte for byte.
    """
    ok(run_cli(root, "ingest", *map(str, VALID_SAMPLES)))
    history = root / HISTORY
    newest = history / sorted(p.name for p in history.iterdir() if p.name[:1].isdigit())[-1]
    before = newest.read_bytes()
    for target, what in (
        (newest, "history"),
        (history / "usage.csv", "history"),
        (root / "spool" / "usage.json", "spool"),
        (root / "spool" / "rejected" / "usage.csv", "spool"),
    ):
        refused = export_cli(root, "-o", str(target))
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert refused.stderr.startswith(f"error: {target} is inside the {what} "), refused.stderr
        assert len(refused.stderr.splitlines()) == 1
    assert newest.read_bytes() == before
    assert not (history / "usage.csv").exists()
    assert not (root / "spool" / "usage.json").exists()


@pytest.mark.skipif(not IS_ROOT, reason="a bind mount needs root")
@pytest.mark.parametrize(
    "command_args",
    [("export", "-o"), ("snapshot", "--tar"), ("snapshot",)],
    ids=["export", "snapshot-tar", "snapshot"],
)
def test_an_output_in_the_history_reached_through_a_bind_mount_is_refused(
    root: Path, tmp_path: Path, command_args: tuple[str, ...]
) -> None:
    """The history is the same folder under any path: ``-o VIEW/out.csv`` where VIEW is
    a bind mount of the history (the spool the same) is refused with one line, as its
    own path is, and nothing is written into it."""
    ok(run_cli(root, "ingest", *map(str, VALID_SAMPLES)))
    (root / "spool").mkdir(exist_ok=True)
    for folder, what in ((root / HISTORY, "history"), (root / "spool", "spool")):
        before = sorted(p.name for p in folder.iterdir())
        view = tmp_path / f"view-{what}"
        view.mkdir()
        mounted = run_tool("mount", "--bind", str(folder), str(view))
        if mounted.returncode != 0:
            pytest.skip(f"cannot bind-mount here: {mounted.stderr.strip()}")
        try:
            # A snapshot makes DEST's missing folders: they would be made in there too.
            inside = view / "out" if command_args[0] == "export" else view / "sub" / "out"
            refused = run_cli(root, *command_args, str(inside))
        finally:
            run_tool("umount", str(view))
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert f"is inside the {what} " in refused.stderr, refused.stderr
        assert len(refused.stderr.splitlines()) == 1
        assert sorted(p.name for p in folder.iterdir()) == before


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")
@pytest.mark.parametrize(
    ("command_args", "rename"),
    [(("export", "-o"), "rename"), (("snapshot", "--tar"), "renameat2")],
    ids=["export", "snapshot-tar"],
)
def test_an_output_beside_the_latest_link_is_no_writer_leftover(
    root: Path, command_args: tuple[str, str], rename: str
) -> None:
    """``export -o ROOT/usage.csv`` (and ``snapshot --tar ROOT/backup.tar``) is written
    beside the latest link under a temp name of its own: a writer that starts meanwhile
    (here an ``ingest``) sweeps only the history's temp files there, so the output is
    written (exit 0), and ``verify`` meanwhile finds no leftover temp file.

    ``strace`` holds the output's final rename for 3 s while ``verify`` and ``ingest`` run.
    """
    ok(run_cli(root, "ingest", *map(str, VALID_SAMPLES)))
    target = root / ("usage.csv" if command_args[0] == "export" else "backup.tar")
    command = [
        "strace", "-f", "-qq", "-o", os.devnull, "-e", f"trace={rename}",
        "-e", f"inject={rename}:delay_enter=3000000",
        sys.executable, "-m", "ingester", "--root", str(root), *command_args, str(target),
    ]  # fmt: skip
    # Its own group: strace killed alone would let the command run on after the test.
    with subprocess.Popen(
        command,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    ) as proc:
        try:
            wait_for(lambda: any(root.glob(".tmp-*")), 30, "the output's temp file")
            checked = run_cli(root, "verify")
            stored = run_cli(root, "ingest", str(VALID_SAMPLES[0]))
            out, err = proc.communicate(timeout=60)
        finally:
            kill_group(proc)
    ok(stored)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert proc.returncode == 0 and target.is_file(), f"exit {proc.returncode}: {out}{err}"
    assert not list(root.glob(".tmp-*"))


@needs_strace
def test_a_killed_exports_temp_file_is_removed_by_the_next_export_into_its_folder(
    root: Path, tmp_path: Path
) -> None:
    """``kill -9`` as the export fsyncs its temp file leaves a ``.tmp-out-*`` file beside
    FILE; the next export into that folder removes it (and says so), and leaves a file
    of the user's whose name only starts the same way, and (as root) one of that very
    shape that another user owns: not this user's export's."""
    build_history(root, count=5)
    out = tmp_path / "out"
    out.mkdir()
    mine = out / ".tmp-out-notes.csv"
    mine.write_text("the user's own\n")
    kept = [mine.name]
    if IS_ROOT:
        others = out / ".tmp-out-0123456789ab"
        others.write_text("another user's\n")
        os.chown(others, 65534, 65534)
        kept.append(others.name)
    kill = ("-f", "-qq", "-o", os.devnull, "-e", "inject=fsync:signal=SIGKILL:when=1")
    killed = run_cli(
        root,
        "export",
        "-o",
        str(out / "usage.csv"),
        wrapper=(STRACE, *kill),
        INGESTER_CONSOLE_TIMEZONE=ZONE,
    )
    assert killed.returncode != 0, killed.stdout + killed.stderr
    left = sorted(set(os.listdir(out)) - set(kept))
    assert [n[:9] for n in left] == [".tmp-out-"], left
    again = ok(export_cli(root, "-o", str(out / "usage.csv")))
    assert sorted(os.listdir(out)) == sorted([*kept, "usage.csv"])
    assert f"removed 1 temp file(s) left in {out} " in again.stdout
    assert left[0] in again.stdout
    assert mine.read_text() == "the user's own\n"
    assert (out / "usage.csv").read_bytes().count(b"\r\n") == 6


@needs_strace
def test_an_export_never_removes_the_temp_file_another_export_is_writing(
    root: Path, tmp_path: Path
) -> None:
    """A first export is held as it reads its third version, its temp file half
    written; a second export into the same folder meanwhile leaves that file, and the
    first one ends whole."""
    versions = build_history(root, count=5)
    out = tmp_path / "out"
    out.mkdir()
    seen: dict[str, list[str]] = {}

    def second_export() -> None:
        seen["before"] = sorted(n for n in os.listdir(out) if n.startswith(".tmp-out-"))
        ok(export_cli(root, "-o", str(out / "second.csv")))
        seen["after"] = sorted(n for n in os.listdir(out) if n.startswith(".tmp-out-"))

    first = run_held_after(
        root,
        ("export", "-o", str(out / "first.csv")),
        root / HISTORY / versions[2][0],
        "openat",
        second_export,
        INGESTER_CONSOLE_TIMEZONE=ZONE,
    )
    ok(first)
    assert len(seen["before"]) == 1 and seen["after"] == seen["before"], seen
    assert sorted(os.listdir(out)) == ["first.csv", "second.csv"]
    assert (out / "first.csv").read_bytes() == (out / "second.csv").read_bytes()


def test_full_disk_leaves_the_previous_export_whole(root: Path, tmpfs: Path) -> None:  # noqa: F811
    build_history(root)
    out = tmpfs / "usage.csv"
    out.write_text("previous export\n")
    # Fill the 1 MiB tmpfs but for one page: the new export cannot fit.
    fd = os.open(tmpfs / "filler", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        size = 0
        try:
            while True:
                size += os.write(fd, b"\0" * 4096)
        except OSError:
            pass
        os.ftruncate(fd, size - 4096)
    finally:
        os.close(fd)
    result = export_cli(root, "-o", str(out))
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.startswith("error: cannot write "), result.stderr
    assert "[ENOSPC]" in result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert out.read_text() == "previous export\n"
    assert sorted(os.listdir(tmpfs)) == ["filler", "usage.csv"]


# -- the writer alone: any text survives CSV and JSON Lines -------------------------------

_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40)
_pct = st.one_of(st.integers(0, 100), st.floats(0, 100, allow_nan=False))
_row = st.tuples(
    st.just("2026-11-27T14:05:00.000Z"),
    st.just("2026-11-27T14:04:41.250Z"),
    st.none() | _pct,
    st.none() | _text,
    st.none() | st.just("2026-11-30T13:59:00.000Z"),
    st.none() | _pct,
    st.none() | _text,
    st.none() | st.just("2026-11-30T13:59:00.000Z"),
    st.none() | _pct,
    st.none() | _text,
    st.none() | st.just("2026-11-30T13:59:00.000Z"),
    st.none() | st.booleans(),
    st.just("2026-11-27T14-05-00-0000aaaa.json"),
)


@settings(max_examples=200, deadline=None)
@given(rows=st.lists(_row, max_size=5))
def test_any_text_survives_both_formats(rows: list[tuple[Any, ...]]) -> None:
    as_csv = io.BytesIO()
    assert write_rows(iter(rows), as_csv, "csv") == len(rows)
    records = list(csv.reader(io.StringIO(as_csv.getvalue().decode("utf-8"), newline="")))
    assert tuple(records[0]) == COLUMNS
    for row, record in zip(rows, records[1:], strict=True):
        for cell, text in zip(row, record, strict=True):
            if cell is None:
                assert text == ""
            elif isinstance(cell, bool):
                assert text == str(cell).lower()
            elif isinstance(cell, str):
                assert text == defuse_formulas(cell)
                # Only apostrophes are ever added, each before a trigger.
                assert text.replace("'", "") == cell.replace("'", "")
            else:
                assert float(text) == cell
    as_jsonl = io.BytesIO()
    write_rows(iter(rows), as_jsonl, "jsonl")
    lines = as_jsonl.getvalue().decode("utf-8").split("\n")
    assert lines.pop() == ""
    assert [tuple(json.loads(line).values()) for line in lines] == rows
