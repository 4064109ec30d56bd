"""Log lines: valid UTF-8 whatever a drop's name holds, and other libraries' records in
our own format (real CLI and a real interpreter in a subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support import SAMPLES, cli_env, run_cli
from support.capabilities import STRACE, needs_strace

VALID = SAMPLES / "valid" / "full.json"
INVALID = SAMPLES / "invalid" / "not-json.json"


def watch_once(root: Path, *options: str) -> bytes:
    result = subprocess.run(
        [sys.executable, "-m", "ingester", "--root", str(root), *options, "watch", "--once"],
        capture_output=True,
        timeout=60,
        env=cli_env(),
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stderr


def put_drops(root: Path) -> None:
    spool = os.fsencode(root / "spool")
    os.makedirs(spool, exist_ok=True)
    with open(spool + b"/live\xff.json", "wb") as handle:
        handle.write(VALID.read_bytes())
    with open(spool + b"/bad\xfe.json", "wb") as handle:
        handle.write(INVALID.read_bytes())


def test_json_logs_are_valid_utf8_with_the_bytes_escaped(root: Path) -> None:
    put_drops(root)
    stderr = watch_once(root, "--log-format", "json")
    text = stderr.decode("utf-8")  # strict: a lone surrogate would not even encode
    entries = [json.loads(line) for line in text.splitlines()]
    for entry in entries:
        for value in entry.values():
            if isinstance(value, str):
                value.encode("utf-8")  # no lone surrogates once parsed either
    messages = " ".join(e["msg"] for e in entries)
    assert "ingested live\\xff.json" in messages
    assert "rejected bad\\xfe.json" in messages
    drops = {e.get("drop") for e in entries}
    assert {"live\\xff.json", "bad\\xfe.json"} <= drops
    assert "\\udc" not in text


def test_json_logs_write_a_bidirectional_control_as_an_escape(root: Path) -> None:
    """A drop name holding a right-to-left override (U+202E) would reverse the rest of a
    JSON line on a terminal or in a log viewer, as it would a text line: the JSON line
    writes it as ``\\u202e``, which parses back to the name as it is."""
    spool = root / "spool"
    spool.mkdir(parents=True, exist_ok=True)
    (spool / "evil\u202enosj.json").write_bytes(INVALID.read_bytes())
    text = watch_once(root, "--log-format", "json").decode("utf-8")
    assert "\u202e" not in text, text
    assert "\\u202e" in text, text
    entries = [json.loads(line) for line in text.splitlines()]
    assert "evil\u202enosj.json" in {e.get("drop") for e in entries}, text


def test_text_logs_escape_the_bytes_the_same_way(root: Path) -> None:
    put_drops(root)
    text = watch_once(root).decode("utf-8")
    assert "ingested live\\xff.json" in text
    assert "rejected bad\\xfe.json" in text
    assert "\\udc" not in text


SNIPPET = """
import logging, sys
from ingester.runtime.logs import setup_logging
setup_logging(0, sys.argv[1])
logging.getLogger("watchdog.observers.inotify_buffer").warning(
    "Inotify queue overflowed; filesystem events were lost"
)
logging.getLogger("watchdog.observers").info("too chatty to show")
"""


def run_snippet(code: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``code`` in a fresh interpreter (the CLI's environment plus ``env``); it must succeed."""
    result = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=cli_env(**env),
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result


def stderr_to_pipe(
    args: list[str], *, journal: str | None, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run ``args`` with stderr a pipe of our own, ``JOURNAL_STREAM`` naming that pipe
    (``journal="same"``, as systemd sets it for a service whose stderr is the journal),
    another stream (``"other"``: inherited from a parent whose stderr was the journal),
    or unset (None). The pipe's text is the result's ``stderr``."""
    reader, writer = os.pipe()
    try:
        st = os.fstat(writer)
        if journal is not None:
            ino = st.st_ino if journal == "same" else st.st_ino + 1
            env = {**env, "JOURNAL_STREAM": f"{st.st_dev}:{ino}"}
        result = subprocess.run(
            args,
            stdout=subprocess.PIPE,
            stderr=writer,
            text=True,
            timeout=60,
            env=cli_env(**env),
            check=False,
        )
        os.close(writer)
        writer = -1
        with os.fdopen(reader, "r", encoding="utf-8") as text:
            reader = -1
            result.stderr = text.read()
    finally:
        for fd in (reader, writer):
            if fd >= 0:
                os.close(fd)
    return result


@pytest.mark.parametrize("fmt", ["json", "text", "journal"])
def test_third_party_records_go_through_our_handler(fmt: str) -> None:
    if fmt == "journal":
        code = [sys.executable, "-c", SNIPPET, "text"]
        result = stderr_to_pipe(code, journal="same")
        assert result.returncode == 0, result.stderr
    else:
        result = run_snippet(SNIPPET, fmt)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr  # the INFO record is below the library threshold
    if fmt == "json":
        entry = json.loads(lines[0])
        assert entry["level"] == "warning"
        assert entry["logger"] == "watchdog.observers.inotify_buffer"
        assert entry["msg"].startswith("Inotify queue overflowed")
        assert entry["ts"].endswith("Z")
    elif fmt == "journal":
        assert lines[0].startswith("<4>warning: Inotify queue overflowed")
    else:
        assert " WARNING Inotify queue overflowed" in lines[0]
        assert lines[0][:4].isdigit()  # timestamped like our own lines


TIMES = """
import logging, sys
from ingester.runtime.logs import OneLineFormatter
ours = OneLineFormatter("%(asctime)s %(message)s")
theirs = logging.Formatter("%(asctime)s %(message)s")
# Around the spring and autumn switches of the zone in TZ, and across second boundaries.
starts = [1774746000, 1792890000, 1764860399]
for start in starts:
    for step in range(-3000, 3000, 7):
        created = start + step / 1000 * 997
        record = logging.LogRecord("x", 20, "p", 1, "m", (), None)
        record.created, record.msecs = created, int((created - int(created)) * 1000) + 0.0
        a, b = ours.format(record), theirs.format(record)
        if a != b:
            sys.exit(f"{created}: {a!r} != {b!r}")
print("same")
"""


def test_text_timestamps_match_logging_s_own_across_seconds_and_zone_changes() -> None:
    # A zone with daylight saving, spelled as a POSIX rule so no zone files are needed.
    result = run_snippet(TIMES, TZ="CET-1CEST,M3.5.0,M10.5.0/3")
    assert result.stdout.strip() == "same"


def test_a_command_s_error_is_a_json_line_under_json_logs(tmp_path: Path) -> None:
    # A log shipper reading a service's stderr gets every line in one format.
    result = subprocess.run(
        [
            *(sys.executable, "-m", "ingester", "--log-format", "json", "--root", str(tmp_path)),
            *("serve", "--api-key-file", str(tmp_path / "missing")),
        ],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    entry = json.loads(line)
    assert (entry["level"], entry["event"]) == ("error", "error"), entry
    assert entry["msg"].startswith(f"cannot read --api-key-file {tmp_path / 'missing'}: "), entry


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
@pytest.mark.parametrize("command", [("status",), ("cleanup", "--dry-run"), ("verify",)])
def test_an_error_caught_after_the_command_is_a_json_line_under_json_logs(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    """A read command whose stdout is full (``> /dev/full``) fails once the command has
    ended (the error is caught at the top, as out of memory and an internal error are):
    under ``--log-format json`` that last line is a JSON object too, not plain text."""
    base = [sys.executable, "-m", "ingester", "--root", str(tmp_path)]
    stored = subprocess.run(
        [*base, "ingest", str(VALID)], capture_output=True, env=cli_env(), timeout=60, check=False
    )
    assert stored.returncode == 0, stored.stderr
    with open("/dev/full", "w") as full:
        result = subprocess.run(
            [*base[:3], "--log-format", "json", *base[3:], *command],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            env=cli_env(),
            timeout=60,
            check=False,
        )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    entry = json.loads(result.stderr.strip().splitlines()[-1])
    assert (entry["level"], entry["event"]) == ("error", "error"), entry
    assert entry["msg"] == "cannot write to standard output: No space left on device [ENOSPC]"


@needs_strace
@pytest.mark.parametrize("fmt", ["text", "json"])
def test_a_log_line_that_cannot_be_written_is_one_line_not_a_traceback(
    root: Path, tmp_path: Path, fmt: str
) -> None:
    """One write of a log line fails (a log file on a full or failing disk: EIO is
    injected into the third write to it, after "new history" and "watching"): that line
    is lost and one line in the log's own format says so; no traceback, and the run
    does its work and exits 0."""
    spool = root / "spool"
    spool.mkdir(parents=True)
    (spool / "bad.json").write_bytes(INVALID.read_bytes())
    (spool / "good.json").write_bytes(VALID.read_bytes())
    log_path = tmp_path / "watch.log"
    with log_path.open("wb") as log:
        done = subprocess.run(
            [
                *(STRACE, "-f", "-qq", "-o", os.devnull, "-P", str(log_path)),
                *("-e", "trace=write", "-e", "inject=write:error=EIO:when=3"),
                *(sys.executable, "-m", "ingester", "--root", str(root), "--log-format", fmt),
                *("watch", "--once", "--settle", "0"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=log,
            env=cli_env(),
            timeout=60,
            check=False,
        )
    text = log_path.read_text()
    assert done.returncode == 0, text
    assert (spool / "rejected" / "bad.json").exists(), text
    assert "Traceback" not in text and "Logging error" not in text, text
    lost = [line for line in text.splitlines() if "a log line could not be written" in line]
    assert len(lost) == 1, text
    assert "Input/output error [EIO]" in lost[0]
    if fmt == "json":
        for line in text.splitlines():
            json.loads(line)


@pytest.mark.parametrize("journal", ["same", "other"])
def test_lines_are_journal_lines_only_when_stderr_is_the_journal(root: Path, journal: str) -> None:
    """``JOURNAL_STREAM`` is inherited by whatever a service starts, and by a terminal's
    shells under a desktop that runs it as a service: it means the journal only when it
    names stderr's own stream (as systemd.exec(5) says to check). Else, as in a log file
    a unit's shell line writes to, every line keeps its timestamp and no ``<N>``."""
    (root / "spool").mkdir()
    args = [sys.executable, "-m", "ingester", "--root", str(root), "watch", "--once"]
    result = stderr_to_pipe(args, journal=journal)
    assert result.returncode == 0, result.stderr
    line = next(x for x in result.stderr.splitlines() if "watching " in x)
    if journal == "same":
        assert line.startswith("<6>info: watching "), line
    else:
        assert line[:4].isdigit() and " INFO watching " in line, line


def test_a_name_holding_a_c1_control_or_a_line_separator_stays_on_its_one_line(
    root: Path,
) -> None:
    """NEL (U+0085) and the line and paragraph separators (U+2028, U+2029) end a line
    for many readers of a log (Python's ``splitlines``, editors, log viewers), and the
    C1 controls (CSI, U+009B) drive a terminal as ESC does: in a drop's name each is
    escaped in the text lines, and the JSON lines write each as a ``\\u`` escape that
    parses back to the name as it is."""
    name = "a\x85b\x9b31mc\u2028d\u2029e.json"
    for fmt, escaped in (("text", "a\\x85b\\x9b31mc\\u2028d\\u2029e.json"), ("json", None)):
        spool = root / "spool"
        spool.mkdir(parents=True, exist_ok=True)
        (spool / name).write_bytes(INVALID.read_bytes())
        text = watch_once(root, "--log-format", fmt).decode("utf-8")
        assert text.splitlines() == text.split("\n")[:-1], text
        assert not {"\x85", "\x9b", "\u2028", "\u2029"} & set(text), ascii(text)
        if escaped is not None:
            assert f"rejected {escaped}" in text, text
        else:
            entries = [json.loads(line) for line in text.splitlines()]
            assert name in {e.get("drop") for e in entries}, text


@pytest.mark.parametrize("journal", ["same", "other"])
def test_json_lines_carry_the_journal_priority_only_when_stderr_is_the_journal(
    root: Path, journal: str
) -> None:
    """With the service's JSON drop-in, stderr is still the journal: each JSON line
    starts with the ``<N>`` prefix journald turns into the entry's priority (and removes,
    so the entry's message is the JSON object), or ``journalctl -p warning`` would no
    longer show the rejected drops and the errors. Written anywhere else, a line is the
    JSON object alone."""
    spool = root / "spool"
    spool.mkdir()
    (spool / "bad.json").write_bytes(INVALID.read_bytes())
    args = [sys.executable, "-m", "ingester", "--root", str(root), "--log-format", "json"]
    result = stderr_to_pipe([*args, "watch", "--once"], journal=journal)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    if journal == "same":
        assert all(line[:1] == "<" and line[2:4] == ">{" for line in lines), lines
        entries = {json.loads(line[3:])["msg"].split(" ")[0]: line[:3] for line in lines}
        assert (entries["watching"], entries["rejected"]) == ("<6>", "<4>"), lines
    else:
        entries = {json.loads(line)["msg"].split(" ")[0]: line for line in lines}
        assert {"watching", "rejected"} <= set(entries), lines


@pytest.mark.parametrize("journal", ["same", "other"])
def test_a_command_s_error_line_carries_the_journal_priority_when_stderr_is_the_journal(
    root: Path, journal: str
) -> None:
    """The one line a command ends with (``error: ...``: here a ``--metrics`` address the
    service cannot listen on, which ends its start) is an error to journald too, so that
    ``journalctl -p warning`` shows why the unit keeps failing; elsewhere it is the
    plain line."""
    args = [sys.executable, "-m", "ingester", "--root", str(root)]
    result = stderr_to_pipe([*args, "watch", "--metrics", "192.0.2.1:0"], journal=journal)
    assert result.returncode == 1, result.stderr
    [line] = result.stderr.splitlines()
    prefix = "<3>error: " if journal == "same" else "error: "
    assert line.startswith(f"{prefix}cannot listen on 192.0.2.1:0 for --metrics: "), line


@pytest.mark.parametrize(
    ("journal", "fmt"), [("same", "text"), ("other", "text"), ("other", "json")]
)
def test_a_command_s_warning_line_is_a_warning_to_the_journal_and_in_json_logs(
    root: Path, journal: str, fmt: str
) -> None:
    """A command that did its work but not all of it ends with a ``warning: ...`` line
    (here ``submit``'s drop made, with no standard output to print its path to): a
    warning to journald, so that ``journalctl -p warning`` shows it, and one JSON object
    at level warning under ``--log-format json``, as its error line would be."""
    drop = root.parent / "drop.json"
    drop.write_bytes((SAMPLES / "valid" / "full.json").read_bytes())
    closed = ["sh", "-c", 'exec "$@" >&-', "sh"]  # standard output closed at start
    args = [sys.executable, "-m", "ingester", "--root", str(root), "--log-format", fmt]
    result = stderr_to_pipe([*closed, *args, "submit", str(drop)], journal=journal)
    assert result.returncode == 0, result.stderr
    [line] = result.stderr.splitlines()
    said = "but its path could not be printed: standard output is closed"
    if fmt == "json":
        entry = json.loads(line)
        assert entry["level"] == "warning" and entry["msg"].endswith(said), entry
    else:
        prefix = "<4>warning: dropped " if journal == "same" else "warning: dropped "
        assert line.startswith(prefix) and line.endswith(said), line


@pytest.mark.parametrize("journal", ["same", "other"])
def test_a_usage_error_s_line_carries_the_journal_priority_when_stderr_is_the_journal(
    root: Path, journal: str
) -> None:
    """A bad setting in the unit (``Environment=INGESTER_MAX_VERSIONS=0``) ends every start
    with click's usage text: its ``Error:`` line is an error to journald, so that
    ``journalctl -p warning`` shows why the service keeps failing; elsewhere the text is
    click's own."""
    args = [sys.executable, "-m", "ingester", "--root", str(root), "watch"]
    result = stderr_to_pipe(args, journal=journal, INGESTER_MAX_VERSIONS="0")
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if "Error: " in line]
    prefix = "<3>Error: " if journal == "same" else "Error: "
    assert len(errors) == 1 and errors[0].startswith(f"{prefix}INGESTER_MAX_VERSIONS: "), errors
    assert list(root.iterdir()) == []


def test_json_output_says_a_paths_byte_that_is_not_utf8_as_the_log_does(tmp_path: Path) -> None:
    """A root whose path holds a byte that is not UTF-8: ``status --json`` says it as
    ``\\xNN``, as the text output and the log do; ``"\\udcff"`` names no byte, and
    strict JSON parsers refuse a lone surrogate."""
    root = tmp_path / os.fsdecode(b"r\xffoot")
    assert run_cli(root, "init", stdout=subprocess.DEVNULL).returncode == 0
    status = run_cli(root, "status", "--json")
    assert status.returncode == 0, status.stderr
    assert "\\udc" not in status.stdout, status.stdout
    said = json.loads(status.stdout)["history"]
    assert said == f"{tmp_path}/r\\xffoot/console-usage-history", said


def test_a_listing_s_warning_is_one_json_object_under_log_format_json(tmp_path: Path) -> None:
    """``list`` over a damaged version ends with a warning: under ``--log-format json`` it
    is one object at level warning, as every other line of a command there."""
    root = tmp_path / "root"
    assert run_cli(root, "init").returncode == 0
    damaged = root / "console-usage-history" / "2026-01-01T12-00-00-cccccccc.json"
    damaged.write_bytes(b'{"lastUpdated": ')
    listed = run_cli(root, "--log-format", "json", "list")
    assert listed.returncode == 0, listed.stderr
    [entry] = [json.loads(line) for line in listed.stderr.splitlines()]
    assert entry["level"] == "warning" and "1 damaged version" in entry["msg"], entry
