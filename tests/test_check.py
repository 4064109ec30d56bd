"""``ingester check``: exit 0/1/2 (OK/WARNING/CRITICAL), one line, ``--json``; and ``-q``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from support import INVALID_SAMPLES, cli_env, run_cli
from support.capabilities import fill, tmpfs
from support.plugin_output import perfdata_problems

from ingester.clock import iso_utc
from ingester.mirror.state import write_mirror_state
from ingester.mirror.state_model import MirrorState

HISTORY = "console-usage-history"


def snapshot_at(age: timedelta) -> bytes:
    stamp = (datetime.now(UTC) - age).isoformat(timespec="seconds").replace("+00:00", "Z")
    return json.dumps(
        {"currentSession": {"resetsIn": "1 hr", "percentageUsed": 5}, "lastUpdated": stamp}
    ).encode()


def ingest(root: Path, tmp_path: Path, age: timedelta) -> None:
    ingest_payload(root, tmp_path, snapshot_at(age))


def ingest_payload(root: Path, tmp_path: Path, data: bytes | dict[str, Any]) -> None:
    """Store ``data`` (bytes, or a payload to write as JSON) as a version of ``root``."""
    source = tmp_path / f"in-{time.monotonic_ns()}.json"
    source.write_bytes(data if isinstance(data, bytes) else json.dumps(data).encode())
    result = run_cli(root, "ingest", str(source))
    assert result.returncode == 0, result.stderr


def check(root: Path, *args: str, before: tuple[str, ...] = ()) -> tuple[int, str]:
    result = run_cli(root, *before, "check", *args)
    assert "Traceback" not in result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout + result.stderr
    assert perfdata_problems(lines[0]) == [], lines[0]
    return result.returncode, lines[0]


def test_fresh_data_is_ok(root: Path, tmp_path: Path) -> None:
    ingest(root, tmp_path, timedelta(minutes=1))
    code, line = check(root)
    assert code == 0
    assert line.startswith("INGESTER OK - ")
    assert "| age=" in line and "backlog=0;50;100" in line


@pytest.mark.parametrize(
    ("age", "args", "expected"),
    [
        (timedelta(minutes=20), (), 1),
        (timedelta(minutes=40), (), 2),
        (timedelta(minutes=40), ("--max-age", "1h"), 0),
        (timedelta(minutes=3), ("--max-age", "120"), 1),
        (timedelta(days=3), ("--max-age", "1d"), 2),
    ],
)
def test_stale_data_warns_then_is_critical(
    root: Path, tmp_path: Path, age: timedelta, args: tuple[str, ...], expected: int
) -> None:
    ingest(root, tmp_path, age)
    code, line = check(root, *args)
    assert code == expected, line
    assert line.startswith(f"INGESTER {('OK', 'WARNING', 'CRITICAL')[expected]} - ")
    if expected:
        assert line.split(" - ", 1)[1].startswith("newest data "), line


@pytest.mark.parametrize(
    ("ahead", "expected"),
    [(timedelta(minutes=30), 0), (timedelta(days=300), 1), (timedelta(hours=2), 1)],
)
def test_data_dated_ahead_of_the_clock_is_not_called_fresh(
    root: Path, tmp_path: Path, ahead: timedelta, expected: int
) -> None:
    # A little ahead is a clock's drift: fresh. Further ahead than the forecast
    # tolerates, the age cannot be told, and "0 s old" would stay OK however long the
    # scraper has stopped.
    ingest(root, tmp_path, -ahead)
    code, line = check(root)
    assert code == expected, line
    summary = line.split(" - ", 1)[1]
    if expected:
        assert summary.startswith("newest data dated "), line
        assert "ahead of this clock: its age cannot be told" in summary, line
        assert "age=" not in line  # unknown: no value rather than 0
    else:
        assert summary.startswith("newest data 0 s old"), line


def test_no_history_or_no_version_is_critical(root: Path) -> None:
    code, line = check(root)
    assert code == 2 and "no history" in line
    assert run_cli(root, "init").returncode == 0
    code, line = check(root)
    assert code == 2 and "no version yet" in line
    # Only a version dated years ahead (a clock gone wrong): held, so never "no version".
    history = root / "console-usage-history"
    (history / "2199-12-31T23-00-00-0000abcd.json").write_bytes(snapshot_at(timedelta(0)))
    code, line = check(root)
    assert code == 2, line
    assert "no version to judge: the 1 held are dated more than a day ahead of this clock" in (line)


@pytest.mark.skipif(shutil.which("prlimit") is None, reason="prlimit (util-linux) is not installed")
def test_a_version_too_large_to_hold_is_critical_not_an_error(root: Path, tmp_path: Path) -> None:
    # A 2 GiB file named as the newest version (put there by hand): never read whole, it
    # is a damaged newest version, which is CRITICAL with its line, never exit 1.
    ingest(root, tmp_path, timedelta(minutes=1))
    stamp = (datetime.now(UTC) + timedelta(minutes=1)).strftime("%Y-%m-%dT%H-%M-%S")
    newest = root / "console-usage-history" / f"{stamp}-0000beef.json"
    with newest.open("wb") as handle:
        handle.truncate(2 << 30)  # sparse: no disk space taken
    result = run_cli(root, "check", wrapper=("prlimit", f"--as={1 << 30}", "--"))
    assert "Traceback" not in result.stderr
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout.startswith("INGESTER CRITICAL - "), result.stdout
    assert f"newest version {newest.name} is damaged: larger than any drop: {2 << 30} bytes" in (
        result.stdout
    )


def submit(root: Path, count: int) -> list[Path]:
    drops = []
    for _ in range(count):
        result = run_cli(root, "submit", "-", input=snapshot_at(timedelta(0)))
        assert result.returncode == 0, result.stderr
        drops.append(Path(result.stdout.strip()))
    return drops


def test_backlog_warns_above_n_and_is_critical_above_2n(root: Path, tmp_path: Path) -> None:
    ingest(root, tmp_path, timedelta(0))
    submit(root, 3)
    code, line = check(root, "--max-backlog", "2")
    assert code == 1 and "backlog 3 (more than 2)" in line, line
    code, line = check(root, "--max-backlog", "1")
    assert code == 2 and "backlog 3 (more than 2)" in line, line
    # Within the bound, the count says nothing; that no watcher runs still does.
    code, line = check(root, "--max-backlog", "3")
    assert code == 1 and "backlog 3, oldest waiting" in line, line
    assert "3 drop(s) waiting and no watcher runs" in line


def test_a_drop_waiting_longer_than_max_age_is_critical(root: Path, tmp_path: Path) -> None:
    ingest(root, tmp_path, timedelta(0))
    (waiting,) = submit(root, 1)
    old = time.time() - 20 * 60
    os.utime(waiting, (old, old))
    code, line = check(root)
    assert code == 2
    assert "backlog 1, oldest waiting 20 min: 1 drop(s) waiting and no watcher runs" in line


def reject(root: Path, count: int) -> None:
    spool = root / "spool"
    spool.mkdir(exist_ok=True)
    for i in range(count):
        sample = INVALID_SAMPLES[i % len(INVALID_SAMPLES)]
        (spool / f"bad-{i}.json").write_bytes(sample.read_bytes())
    result = run_cli(root, "watch", "--once")
    assert result.returncode == 0, result.stderr


def test_rejections_in_the_last_hour(root: Path, tmp_path: Path) -> None:
    ingest(root, tmp_path, timedelta(0))
    reject(root, 3)
    assert check(root, "--max-rejected-per-hour", "3")[0] == 0
    code, line = check(root, "--max-rejected-per-hour", "2")
    assert code == 1 and "3 rejected in the last hour (more than 2)" in line
    assert check(root, "--max-rejected-per-hour", "1")[0] == 2
    # Rejections older than an hour do not count.
    old = time.time() - 2 * 3600
    for reason in (root / "spool" / "rejected").glob("*.reason.json"):
        os.utime(reason, (old, old))
    assert check(root, "--max-rejected-per-hour", "0")[0] == 0


def test_json_shape(root: Path, tmp_path: Path) -> None:
    ingest(root, tmp_path, timedelta(minutes=20))
    result = run_cli(root, "check", "--json")
    assert result.returncode == 1
    doc = json.loads(result.stdout)
    assert doc["status"] == "WARNING" and doc["code"] == 1
    assert [c["name"] for c in doc["checks"]] == ["age", "backlog", "rejected"]
    assert doc["mirror"] is None  # no mirror configured: no mirror item
    age = doc["checks"][0]
    assert age["status"] == "WARNING" and age["warning"] == 900 and age["critical"] == 1800
    assert 1190 < age["value"] < 1300
    assert doc["backlog"] == 0 and doc["rejectedLastHour"] == 0
    assert doc["summary"].startswith("newest data 20 min old")


def old_version(root: Path, age: timedelta, seq: int) -> str:
    """Place a version ingested ``age`` ago straight into the history, as the watcher would."""
    stamp = (datetime.now(UTC) - age).strftime("%Y-%m-%dT%H-%M-%S")
    name = f"{stamp}-{seq:08x}.json"
    (root / HISTORY / name).write_bytes(snapshot_at(age))
    return name


def test_mirror_lag_from_its_state_file(root: Path, tmp_path: Path) -> None:
    ingest(root, tmp_path, timedelta(0))
    oldest = old_version(root, timedelta(minutes=40), 1)
    older = old_version(root, timedelta(minutes=20), 2)
    history = root / HISTORY
    # Nothing uploaded yet: 3 waiting, the oldest 40 min old.
    write_mirror_state(history, MirrorState(target="s3://bucket/usage", state="ok"))
    code, line = check(root)
    assert code == 2, line
    assert "mirror 3 behind, oldest 40 min old (more than 30 min), mirror not running" in line
    assert " mirror_lag=24" in line and ";900;1800 mirror_backlog=3" in line
    assert check(root, "--max-mirror-lag", "30m")[0] == 1
    assert check(root, "--max-mirror-lag", "1h")[0] == 0

    # The oldest is uploaded: the lag is now the next one's age.
    write_mirror_state(history, MirrorState(mirrored_through=oldest, state="unreachable"))
    result = run_cli(root, "check", "--json", "--max-mirror-lag", "15m")
    assert result.returncode == 1, result.stdout
    doc = json.loads(result.stdout)
    names = [c["name"] for c in doc["checks"]]
    assert names == ["age", "backlog", "rejected", "mirror_lag", "mirror_held"]
    mirror = doc["checks"][3]
    assert mirror["status"] == "WARNING" and (mirror["warning"], mirror["critical"]) == (900, 1800)
    assert 1190 < mirror["value"] < 1300
    assert "(unreachable)" in mirror["message"]
    assert doc["mirror"]["backlog"] == 2 and doc["mirror"]["oldestWaiting"] == older
    assert doc["mirror"]["state"] == "unreachable" and doc["mirror"]["running"] is False

    # All uploaded, but the object store refuses the credentials: CRITICAL at once.
    newest = max(p.name for p in history.glob("2*.json"))
    write_mirror_state(history, MirrorState(mirrored_through=newest, state="ok"))
    code, line = check(root)
    assert code == 0 and "mirror up to date" in line and "mirror_backlog=0" in line, line
    write_mirror_state(history, MirrorState(mirrored_through=newest, state="denied"))
    code, line = check(root)
    assert code == 2, line
    assert line.startswith(
        "INGESTER CRITICAL - mirror up to date, but the object store refuses the credentials"
    )

    # A retired mirror (its state file removed, none in the settings) is no longer judged.
    (history / "_mirror.json").unlink()
    code, line = check(root)
    assert code == 0 and "mirror" not in line, line


def test_a_request_refused_for_its_time_is_critical_and_said_as_the_clock(
    root: Path, tmp_path: Path
) -> None:
    """The mirror records a store that refused its requests' time (this machine's clock
    minutes off the store's) as ``denied``, the store's ``RequestTimeTooSkewed`` in its
    detail: as CRITICAL as refused credentials (retrying fixes neither), but said as the
    clock, not as credentials that are fine."""
    ingest(root, tmp_path, timedelta(0))
    history = root / HISTORY
    newest = max(p.name for p in history.glob("2*.json"))
    detail = (
        "RequestTimeTooSkewed: The difference between the request time and the current time "
        "is too large."
    )
    state = MirrorState(mirrored_through=newest, state="denied", detail=detail)
    write_mirror_state(history, state)
    code, line = check(root)
    assert code == 2, line
    assert line.startswith(
        "INGESTER CRITICAL - mirror up to date, but the object store refuses the request "
        f"time: this machine's clock is off from the store's ({detail})"
    ), line
    assert "credentials" not in line, line


def test_each_refusal_is_critical_and_said_as_what_it_is(root: Path, tmp_path: Path) -> None:
    """A ``denied`` is CRITICAL whatever refused (retrying fixes none of them), and said
    for what it is: an access rule without the action is not refused credentials, and
    credentials that are wrong or expired are not an access rule."""
    ingest(root, tmp_path, timedelta(0))
    history = root / HISTORY
    newest = max(p.name for p in history.glob("2*.json"))
    for detail, said, not_said in (
        ("AccessDenied: Access Denied", "refuses the action by its access rules", "credential"),
        ("InvalidAccessKeyId: The key does not exist.", "refuses the credentials", "rules"),
        ("ExpiredToken: The provided token has expired.", "refuses the credentials", "rules"),
        ("AccountProblem: There is a problem", "refuses the account", "credentials"),
    ):
        state = MirrorState(mirrored_through=newest, state="denied", detail=detail)
        write_mirror_state(history, state)
        code, line = check(root)
        assert code == 2, line
        assert line.startswith(
            f"INGESTER CRITICAL - mirror up to date, but the object store {said}"
        )
        assert f"({detail})" in line and not_said not in line.replace(detail, ""), line


def test_a_bad_duration_is_a_usage_error(root: Path) -> None:
    result = run_cli(root, "check", "--max-age", "soon")
    assert result.returncode == 2
    assert "is not a duration" in result.stderr
    # A monitoring agent shows stdout only: the cause is there too, as the plugin's line.
    assert result.stdout.startswith("INGESTER CRITICAL - usage error: Invalid value for ")
    assert len(result.stdout.splitlines()) == 1 and "is not a duration" in result.stdout
    as_json = run_cli(root, "check", "--json", "--usage-warning", "95", "--usage-critical", "9")
    assert as_json.returncode == 2
    assert json.loads(as_json.stdout) == {
        "status": "CRITICAL",
        "code": 2,
        "summary": "usage error: --usage-warning 95 is above --usage-critical 9",
    }
    result = run_cli(root, "check", "--max-mirror-lag", "0")
    assert result.returncode == 2
    assert "must be longer than 0" in result.stderr


def assert_usage_plugin_line(
    done: subprocess.CompletedProcess[str], words: str, as_json: bool
) -> None:
    """``check`` refused a usage error as a plugin: exit 2, no traceback, and on stdout the
    CRITICAL line (or JSON object) naming it with ``words``."""
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    if as_json:
        answer = json.loads(done.stdout)
        assert (answer["status"], answer["code"]) == ("CRITICAL", 2)
        assert answer["summary"].startswith("usage error: ") and words in answer["summary"]
    else:
        assert done.stdout.startswith("INGESTER CRITICAL - usage error: "), done.stdout
        assert len(done.stdout.splitlines()) == 1 and words in done.stdout


@pytest.mark.parametrize("as_json", [False, True], ids=["line", "json"])
@pytest.mark.parametrize("given", [("--root", "{root}"), ("--root={root}",), ("-q",)])
def test_a_global_option_after_check_is_told_to_go_before_it_on_stdout_too(
    root: Path, given: tuple[str, ...], as_json: bool
) -> None:
    """``ingester check --root DIR``, the order most tools take: the plugin line (or JSON
    object) a monitoring agent shows says what the ``Error:`` line on stderr says, that
    the option goes before the command, not a close match among check's own options
    (``Did you mean '--from'?``) that sends the reader astray."""
    args = [a.format(root=root) for a in given] + (["--json"] if as_json else [])
    done = run_cli(root, "check", *args)
    advice = f"give it before the command, as in 'ingester {given[0].split('=')[0]} ... check'"
    assert_usage_plugin_line(done, advice, as_json)
    [error] = [line for line in done.stderr.splitlines() if line.startswith("Error: ")]
    said = json.loads(done.stdout)["summary"] if as_json else done.stdout.split(" - ", 1)[1]
    assert said.strip() == "usage error: " + error.removeprefix("Error: "), done.stdout
    assert "Did you mean" not in done.stdout


@pytest.mark.parametrize(
    "how",
    [
        "option",
        "choice",
        "unknown-option",
        "misplaced-check-option",
        "environment",
        "config",
        "missing-config",
    ],
)
@pytest.mark.parametrize("as_json", [False, True], ids=["line", "json"])
def test_a_bad_global_setting_still_gives_the_plugin_line(
    root: Path, tmp_path: Path, how: str, as_json: bool
) -> None:
    """A bad setting read before ``check`` runs (a global option, also one click itself
    rejects as it parses the options before the command, such as check's own option
    with its value put before ``check``, an ``INGESTER_*`` variable, a config key or
    file), the likeliest way for a check to break, alerts with its cause on stdout: the
    plugin line, or the JSON object (exit 2)."""
    ingest(root, tmp_path, timedelta(minutes=1))
    extra: dict[str, str] = {}
    args: list[str] = []
    if how == "option":
        args, words = ["--max-versions", "0"], "--max-versions: must be at least 1"
    elif how == "choice":
        args, words = ["--log-format", "xml"], "'xml' is not one of"
    elif how == "unknown-option":
        args, words = ["--bogus"], "No such option '--bogus'"
    elif how == "misplaced-check-option":
        # check's own option with its value, put before the command by mistake
        args, words = ["--max-age", "15m"], "No such option '--max-age'"
    elif how == "environment":
        extra, words = {"INGESTER_MAX_VERSIONS": "abc"}, "INGESTER_MAX_VERSIONS"
    elif how == "config":
        config = tmp_path / "ingester.toml"
        config.write_text("[ingester]\nmax_version = 100\n")  # misspelt key
        args, words = ["--config", str(config)], "max_version"
    else:
        args, words = ["--config", str(tmp_path / "none.toml")], "--config: cannot read"
    done = run_cli(root, *args, "check", *(["--json"] if as_json else []), **extra)
    assert "Usage:" in done.stderr
    assert_usage_plugin_line(done, words, as_json)
    other = run_cli(root, *args, "status", **extra)
    assert (other.returncode, other.stdout) == (2, "")  # other commands: stderr only


@pytest.mark.parametrize(
    ("args", "extra", "words"),
    [
        (["--endpoint-url", "not a url"], {}, "--endpoint-url: 'not a url' is not"),
        ([], {"AWS_ENDPOINT_URL": "bogus"}, "AWS_ENDPOINT_URL: 'bogus' is not"),
    ],
    ids=["option", "environment"],
)
@pytest.mark.parametrize("as_json", [False, True], ids=["line", "json"])
def test_a_malformed_endpoint_for_from_gives_the_plugin_line(
    root: Path, args: list[str], extra: dict[str, str], words: str, as_json: bool
) -> None:
    """A malformed endpoint URL for ``--from`` is a usage error (exit 2) like any bad
    option of ``check``: the monitoring agent gets the plugin line with its cause, not
    nothing on stdout."""
    tail = ["--json"] if as_json else []
    done = run_cli(root, "check", "--from", "s3://usage-bucket/prod", *args, *tail, **extra)
    assert_usage_plugin_line(done, words, as_json)


@pytest.mark.parametrize(
    ("args", "extra"),
    [
        (["check"], {"INGESTER_RETENTION_DAYS": "abc"}),
        (["--log-format", "xml", "check"], {}),
        (["check", "--max-age", "soon"], {}),
    ],
    ids=["environment", "global-option", "check-option"],
)
def test_a_usage_error_exits_critical_even_when_stderr_cannot_be_written(
    root: Path, args: list[str], extra: dict[str, str]
) -> None:
    """The plugin line says CRITICAL, so the exit is 2 (CRITICAL to the agent) also when
    click's usage text after it fails on a full stderr; never 1, which reads WARNING."""
    with open("/dev/full", "w") as full:
        done = subprocess.run(
            [sys.executable, "-m", "ingester", "--root", str(root), *args],
            env=cli_env(**extra),
            stdout=subprocess.PIPE,
            stderr=full,
            text=True,
            check=False,
        )
    assert done.stdout.startswith("INGESTER CRITICAL - usage error:"), done.stdout
    assert done.returncode == 2, f"exit {done.returncode} under {done.stdout!r}"


@pytest.mark.parametrize("tail", [(), ("--json",)], ids=["line", "json"])
@pytest.mark.parametrize("stdout", ["full", "reader-gone"])
def test_a_critical_check_exits_critical_even_when_stdout_cannot_be_written(
    root: Path, tmp_path: Path, tail: tuple[str, ...], stdout: str
) -> None:
    """A check whose output lands on a full disk (``check >> log`` on the disk that
    filled) or in a pipe its reader closed still exits 2: its judgement is the exit
    code, and 1 would read WARNING to an agent or a script that pages on CRITICAL only.
    A full disk is said in one line; a reader that went away, as for every command, is
    not said at all."""
    ingest(root, tmp_path, timedelta(minutes=40))
    if stdout == "full":
        sink = os.open("/dev/full", os.O_WRONLY)
        said = "error: cannot write to standard output: No space left on device [ENOSPC]\n"
    else:
        reader, sink = os.pipe()
        os.close(reader)
        said = ""
    try:
        done = subprocess.run(
            [sys.executable, "-m", "ingester", "--root", str(root), "check", *tail],
            env=cli_env(),
            stdout=sink,
            stderr=subprocess.PIPE,
            text=True,
            check=False,
        )
    finally:
        os.close(sink)
    assert done.stderr == said, done.stderr
    assert done.returncode == 2


def test_quiet_prints_nothing_when_ok_and_everything_on_failure(root: Path, tmp_path: Path) -> None:
    ingest(root, tmp_path, timedelta(minutes=20))
    fine = run_cli(root, "-q", "check", "--max-age", "1h")
    assert (fine.returncode, fine.stdout, fine.stderr) == (0, "", "")
    cleanup = run_cli(root, "-q", "cleanup")
    assert (cleanup.returncode, cleanup.stdout, cleanup.stderr) == (0, "", "")
    warned = run_cli(root, "-q", "check")
    assert warned.returncode == 1
    assert warned.stdout == ""
    assert warned.stderr.startswith("INGESTER WARNING - newest data 20 min old")


def test_quiet_leaves_out_the_word_on_an_unreadable_reset(root: Path, tmp_path: Path) -> None:
    # Every run would say it again, and cron would mail each one; the answer shows the
    # reset as unknown anyway.
    body = {
        "currentSession": {"resetsIn": "whenever it likes", "percentageUsed": 50},
        "lastUpdated": iso_utc(datetime.now(UTC)),
    }
    ingest_payload(root, tmp_path, body)
    loud = run_cli(root, "forecast")
    assert loud.returncode == 0 and "no wording this version reads" in loud.stderr
    for args in (("forecast",), ("check", "--forecast"), ("check", "--usage-warning", "90")):
        quiet = run_cli(root, "-q", *args)
        assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, "", ""), args


def test_quiet_holds_back_the_commands_that_write_bytes(root: Path, tmp_path: Path) -> None:
    # show and export write bytes to stdout: held back like text, never an internal error.
    ingest(root, tmp_path, timedelta(minutes=1))
    for args in (("show",), ("export",), ("export", "--format", "jsonl")):
        quiet = run_cli(root, "-q", *args)
        assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, "", ""), (args, quiet)
    # On a failure what was held back comes out on stderr, bytes and all.
    failed = run_cli(root, "-q", "show", "2000-01-01T00-00-00-nope.json")
    assert failed.returncode == 1 and failed.stdout == ""
    assert failed.stderr.startswith("error: "), failed.stderr


def perf(line: str) -> dict[str, str]:
    """The performance data of a check line, token by label."""
    tokens = line.split(" | ", 1)[1].split()
    return {t.split("=", 1)[0]: t.split("=", 1)[1] for t in tokens}


def test_perfdata_in_every_state_follows_the_plugin_grammar(root: Path, tmp_path: Path) -> None:
    """Plain decimals only, never an empty value: what Icinga 2 and the guidelines accept."""
    # No history, then an empty one: the age is unknown, so its token is left out.
    code, line = check(root)
    assert code == 2 and "age" not in perf(line), line
    assert run_cli(root, "init").returncode == 0
    code, line = check(root)
    assert code == 2 and "age" not in perf(line) and perf(line)["backlog"] == "0;50;100", line
    # Six-year-old data, a month's threshold: numbers past a million stay plain.
    ingest(root, tmp_path, timedelta(days=6 * 365))
    code, line = check(root, "--max-age", "30d")
    assert code == 2, line
    age = perf(line)["age"]
    assert age.endswith("s;2592000;5184000") and float(age.split("s;")[0]) > 1.8e8, line
    # Huge thresholds of every kind.
    code, line = check(
        root,
        "--max-age",
        "100000000d",
        "--max-backlog",
        "1000000000000000",
        "--max-rejected-per-hour",
        "1000000000000000",
        "--mirror-hold-warning",
        "99.5",
    )
    assert code == 0, line
    assert perf(line)["age"].endswith(";8640000000000;17280000000000"), line
    assert perf(line)["backlog"] == "0;1000000000000000;2000000000000000", line


def test_a_duration_too_long_to_count_is_a_usage_error(root: Path) -> None:
    result = run_cli(root, "check", "--max-age", "9" * 400 + "d")
    assert result.returncode == 2 and "too long" in result.stderr, result.stderr


def test_warns_before_retention_deletes_what_the_mirror_never_uploaded(
    root: Path, tmp_path: Path
) -> None:
    """The hold fills while the mirror is away: WARNING near --mirror-hold, CRITICAL at it."""
    ingest(root, tmp_path, timedelta(0))
    history = root / HISTORY
    # Ten expired versions (8 days old: past the 7 days, and beyond the newest 1).
    for seq in range(10):
        old_version(root, timedelta(days=8, minutes=seq), 100 + seq)
    newest = max(p.name for p in history.glob("2*.json"))
    policy = ("--max-versions", "1")

    def held(hold: int, *args: str) -> tuple[int, str, dict[str, object]]:
        write_mirror_state(history, MirrorState(state="unreachable", hold_max=hold))
        result = run_cli(root, *policy, "check", "--json", *args)
        item = json.loads(result.stdout)["checks"][-1]
        code, line = check(root, *args, before=policy)
        assert code == result.returncode
        return code, line, item

    code, line, item = held(100)
    assert item["name"] == "mirror_held" and item["value"] == 10 and item["status"] == "OK"
    assert perf(line)["mirror_held"] == "10;80;100", line
    code, line, item = held(12)  # 10 of 12: past 80 %
    assert item["status"] == "WARNING", item
    assert "10 of 12 expired versions kept for the mirror (80% of the hold or more)" in line
    assert held(12, "--mirror-hold-warning", "90")[2]["status"] == "OK"
    code, line, item = held(10)  # full: the next expiry deletes a version never uploaded
    assert code == 2 and item["status"] == "CRITICAL", line
    assert "retention deletes versions that were never uploaded" in line
    # Mirrored through the newest: nothing is held, however small the hold.
    write_mirror_state(history, MirrorState(mirrored_through=newest, hold_max=1))
    code, line = check(root, before=policy)
    assert perf(line)["mirror_held"] == "0;0.8;1", line


def test_a_reading_short_of_a_bound_is_never_shown_at_or_over_it(
    root: Path, tmp_path: Path
) -> None:
    # 99.97 % rounded to one decimal would read "100.0 %", a limit reached; 89.96 would
    # read "90.0 %" beside a warning at 90 it has not reached.
    stamp = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    body = {
        "currentSession": {"resetsIn": "1 hr", "percentageUsed": 99.97},
        "weeklyLimits": {
            "allModels": {"resetsIn": "3 days", "percentageUsed": 89.96},
            "sonnetOnly": {"resetsIn": "3 days", "percentageUsed": 12.34},
        },
        "lastUpdated": stamp,
    }
    ingest_payload(root, tmp_path, body)
    code, line = check(root, "--usage-warning", "90")
    assert code == 1, line
    assert "currentSession 99.97 % used (at or above 90 %)" in line
    assert "weeklyLimits.allModels 89.96 % used;" in line
    assert "weeklyLimits.sonnetOnly 12.3 % used" in line
    assert "usage_currentSession=99.97%;90;100" in line
    table = run_cli(root, "forecast")
    assert table.returncode == 0, table.stderr
    rows = {row.split()[0]: row for row in table.stdout.splitlines()[1:]}
    assert " 99.97 % " in rows["currentSession"] + " "
    assert " 90.0 % " in rows["weeklyLimits.allModels"] + " "


def test_a_limit_inside_a_window_is_judged_too(root: Path, tmp_path: Path) -> None:
    # weeklyLimits carries a window's two fields of its own (unknown fields are allowed):
    # the limits inside it are still read, and the one at 97 % warns.
    stamp = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    window = {"resetsIn": "3 days", "percentageUsed": 3}
    body = {
        "currentSession": {"resetsIn": "1 hr", "percentageUsed": 23},
        "weeklyLimits": {
            **window,
            "allModels": {**window, "percentageUsed": 97},
            "sonnetOnly": {**window, "percentageUsed": 7},
        },
        "lastUpdated": stamp,
    }
    ingest_payload(root, tmp_path, body)
    code, line = check(root, "--usage-warning", "90")
    assert code == 1, line
    assert "weeklyLimits.allModels 97 % used (at or above 90 %)" in line, line
    table = run_cli(root, "forecast")
    assert table.returncode == 0, table.stderr
    rows = [row.split()[0] for row in table.stdout.splitlines()[2:] if row.strip()]
    assert rows[:4] == [
        "currentSession",
        "weeklyLimits.allModels",
        "weeklyLimits.sonnetOnly",
        "weeklyLimits",
    ], table.stdout


def test_a_limit_whose_reset_has_passed_since_its_reading_is_not_held_against_it(
    root: Path, tmp_path: Path
) -> None:
    # At 100 % forty minutes ago, with five minutes to its reset then: the window has
    # reset since, so the reading says nothing of now (the forecast item agrees).
    then = datetime.now(UTC) - timedelta(minutes=40)
    body = {
        "currentSession": {"resetsIn": "5 min", "percentageUsed": 100},
        "weeklyLimits": {
            "allModels": {"resetsIn": "3 days", "percentageUsed": 95},
            "sonnetOnly": {"resetsIn": "3 days", "percentageUsed": 12},
        },
        "lastUpdated": then.isoformat(timespec="seconds").replace("+00:00", "Z"),
    }
    ingest_payload(root, tmp_path, body)
    code, line = check(root, "--max-age", "2h", "--usage-warning", "90")
    assert code == 1, line  # the weekly limit at 95 % still holds
    assert "currentSession 100 % used (the reset has passed since)" in line, line
    assert "weeklyLimits.allModels 95 % used (at or above 90 %)" in line, line
    items = {
        c["name"]: c["status"]
        for c in json.loads(
            run_cli(root, "check", "--max-age", "2h", "--usage-warning", "90", "--json").stdout
        )["checks"]
    }
    assert items["usage_currentSession"] == "OK", items
    assert items["usage_weeklyLimits.allModels"] == "WARNING", items


def test_the_hold_item_judges_by_the_mirror_hold_check_is_given(root: Path, tmp_path: Path) -> None:
    """A --mirror-hold given to the command that runs retention bounds its hold in place
    of the one the mirror recorded; check given the same setting judges the hold item by
    it (CRITICAL: full), and by the mirror's bound only when it is given none."""
    ingest(root, tmp_path, timedelta(0))
    history = root / HISTORY
    for seq in range(5):
        old_version(root, timedelta(days=8, minutes=seq), 100 + seq)
    write_mirror_state(history, MirrorState(target="s3://b/p", hold_max=10_000))
    policy = ("--max-versions", "1")

    def item(*given: str) -> dict[str, Any]:
        result = run_cli(root, *policy, *given, "check", "--json")
        items = {c["name"]: c for c in json.loads(result.stdout)["checks"]}
        return items["mirror_held"]

    assert item()["status"] == "OK"
    held = item("--mirror-hold", "3")
    assert (held["status"], held["value"], held["critical"]) == ("CRITICAL", 5, 3), held
    assert "mirror hold full (5 of 3 expired versions kept" in held["message"], held


def test_a_full_spool_disk_is_critical_at_once_not_once_the_data_is_old(
    tmp_path: Path, can_mount: None
) -> None:
    """Every POST gets a 503 and every submit fails on a full disk, while the newest data
    is still fresh: check sees the room left where drops are written, so it alerts
    now, not only once --max-age has passed."""
    root = tmp_path / "root"
    with tmpfs(root, size="4m"):
        assert run_cli(root, "init").returncode == 0
        ingest(root, tmp_path, timedelta(minutes=1))
        code, line = check(root, before=("--max-bytes", "262144"))  # room for 10 and more
        assert code == 0 and "free" not in line, line
        report = json.loads(run_cli(root, "--max-bytes", "262144", "check", "--json").stdout)
        (room,) = report["freeSpace"]
        assert room["holds"] == ["spool", "history"] and room["readOnly"] is False
        assert 0 < room["freeBytes"] <= 4 << 20

        code, line = check(root, before=("--max-bytes", "524288"))  # 4 MiB: fewer than 10
        assert code == 1, line
        assert f"free on the filesystem of the spool and history ({root / 'spool'}), room " in line
        assert "for fewer than 10 drops of the largest size (--max-bytes 524288)" in line

        filler = fill(root / "spool" / "tmp")
        refused = run_cli(root, "submit", "-", input=snapshot_at(timedelta(0)))
        assert refused.returncode == 1 and "No space left on device" in refused.stderr
        code, line = check(root)
        assert code == 2, line
        assert line.startswith(
            "INGESTER CRITICAL - 0.0 MiB free on the filesystem of the spool and history "
            f"({root / 'spool'}), less than one drop of the largest size (--max-bytes "
            "1048576): POSTs are refused (503) and submit fails, and the watcher cannot "
            "store drops; newest data "
        ), line
        assert " free_space=" in line and "B;10485760:;1048576:" in line

        filler.unlink()
        code, line = check(root, before=("--max-bytes", "262144"))
        assert code == 0 and "free" not in line, line
