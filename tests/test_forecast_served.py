"""The forecast end to end: snapshots POSTed to a real ``serve`` and stored by a real
``watch``, then read back over HTTP, by ``ingester forecast --json``, in ``/metrics`` and
by ``ingester check`` (``test_forecast_s3.py``: the same over a mirror in an object store).

The snapshots span six hours of ``lastUpdated`` (one every 30 minutes) and rise at known
rates, so the answers are known exactly:

=========================  ============  ==========  =======================================
limit                      rises         resetsIn    forecast
=========================  ============  ==========  =======================================
currentSession             20 % + 5 %/h  ``2 hr``    100 % in 10 h, after the reset (2 h)
weeklyLimits.allModels     40 % + 2 %/h  ``3 days``  100 % in 24 h, 48 h before the reset
weeklyLimits.sonnetOnly    5 % flat      ``Thu ...`` never
=========================  ============  ==========  =======================================

The weekly reset's day is the one three days ahead in the console's zone, so no snapshot's
six hours ever hold it (a fixed ``Mon 8:59 AM`` moved to the next week half-way through
them on a Monday morning, and the forecast rightly counted no rate across it).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from prometheus_client.parser import text_string_to_metric_families
from support import run_cli, wait_for
from support.capabilities import AS_OTHER, other_user_problem, others_folder, run_as_other
from support.plugin_output import perfdata_problems
from support.serveproc import KEY, ServeProcess, put_version, version_name
from support.watchproc import WatchProcess, versions

ZONE = "America/New_York"
FORECAST = "/api/claude/console-usage/forecast"
API = "/api/claude/console-usage"
WHY_NOT_OTHER = other_user_problem()
WEEKLY_DAY = (datetime.now(ZoneInfo(ZONE)) + timedelta(days=3)).strftime("%a")
"""The weekday of the weekly reset (``Thu`` on a Monday): always days ahead of the snapshots."""


def iso(stamp: datetime) -> str:
    return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def snapshot(i: int, updated: datetime) -> dict[str, Any]:
    return {
        "currentSession": {"resetsIn": "2 hr", "percentageUsed": 20 + 2.5 * i},
        "weeklyLimits": {
            "allModels": {"resetsIn": "3 days", "percentageUsed": 40 + i},
            "sonnetOnly": {"resetsIn": f"{WEEKLY_DAY} 8:59 AM", "percentageUsed": 5},
        },
        "lastUpdated": iso(updated),
    }


@pytest.fixture
def fed(root: Path) -> Iterator[tuple[ServeProcess, datetime]]:
    """serve and watch on ``root``, fed 13 snapshots through POST; yields (server, last)."""
    assert run_cli(root, "init").returncode == 0
    env = {"INGESTER_CONSOLE_TIMEZONE": ZONE}
    last = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=2)
    first = last - timedelta(hours=6)
    with WatchProcess(root, env=env) as watcher, ServeProcess(root, env=env) as server:
        for i in range(13):
            sent = server.post(
                API,
                content=json.dumps(snapshot(i, first + timedelta(minutes=30 * i))),
                headers={"X-API-Key": KEY, "Content-Type": "application/json"},
            )
            assert sent.status_code == 202, sent.text
        wait_for(lambda: len(versions(root)) == 13, 20, "13 versions stored")
        yield server, last
        assert "Traceback" not in server.log + watcher.log


def limits_of(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {limit["limit"]: limit for limit in body["limits"]}


def until_words(reset: datetime, observed: datetime) -> str:
    """``reset`` as the console words it when seen at ``observed``: ``2 days 3 hr 4 min``."""
    minutes = int((reset - observed).total_seconds() // 60)
    days, rest = divmod(minutes, 24 * 60)
    hours, mins = divmod(rest, 60)
    words = [f"{days} days"] if days else []
    if hours:
        words.append(f"{hours} hr")
    return " ".join([*words, f"{mins} min"])


def place_weekly(
    root: Path, observed: datetime, all_models: float, reset: datetime, seq: int
) -> str:
    """A version placed by hand, named for when it was observed (as a watcher stores it),
    whose ``weeklyLimits.allModels`` is ``all_models`` % and resets at ``reset``."""
    words = until_words(reset, observed)
    body = {
        "currentSession": {"resetsIn": "4 hr 59 min", "percentageUsed": 0},
        "weeklyLimits": {
            "allModels": {"resetsIn": words, "percentageUsed": all_models},
            "sonnetOnly": {"resetsIn": words, "percentageUsed": 1},
        },
        "lastUpdated": iso(observed),
    }
    name = version_name(observed, seq)
    put_version(root, name, json.dumps(body).encode())
    return name


def cli_limits(root: Path) -> dict[str, dict[str, Any]]:
    done = run_cli(root, "forecast", "--json", INGESTER_CONSOLE_TIMEZONE="UTC")
    assert done.returncode == 0, done.stderr
    return limits_of(json.loads(done.stdout))


def expect_known_answer(body: dict[str, Any], last: datetime) -> None:
    assert body["asOf"] == iso(last)
    assert body["consoleTimeZone"] == ZONE
    limits = limits_of(body)
    assert list(limits) == ["currentSession", "weeklyLimits.allModels", "weeklyLimits.sonnetOnly"]
    weekly = limits["weeklyLimits.allModels"]
    assert weekly["percentageUsed"] == 52
    assert weekly["ratePerHour"] == 2.0
    assert weekly["exhaustsAt"] == iso(last + timedelta(hours=24))
    assert weekly["resetsAt"] == iso(last + timedelta(days=3))
    assert weekly["beforeReset"] is True
    assert weekly["basis"] == {"points": 13, "since": iso(last - timedelta(hours=6))}
    session = limits["currentSession"]
    assert session["ratePerHour"] == 5.0
    assert session["exhaustsAt"] == iso(last + timedelta(hours=10))
    assert session["resetsAt"] == iso(last + timedelta(hours=2))
    assert session["beforeReset"] is False
    sonnet = limits["weeklyLimits.sonnetOnly"]
    assert (sonnet["ratePerHour"], sonnet["exhaustsAt"], sonnet["beforeReset"]) == (0, None, False)
    # That weekday at 8:59 in New York, whatever zone this machine is in.
    resets = datetime.fromisoformat(sonnet["resetsAt"].replace("Z", "+00:00"))
    local = resets.astimezone(ZoneInfo(ZONE))
    assert (local.strftime("%a"), local.hour, local.minute) == (WEEKLY_DAY, 8, 59)
    assert timedelta(0) < resets - last <= timedelta(days=7)


def test_the_forecasts_tag_on_a_second_if_none_match_line_answers_304(
    fed: tuple[ServeProcess, datetime],
) -> None:
    """A proxy may send a list field on several lines: they are one field (RFC 9110
    5.3), so the current tag on the second line is as good as on the first."""
    server, _ = fed
    etag = server.get(FORECAST).headers["etag"]
    lines = [("If-None-Match", '"other"'), ("If-None-Match", etag)]
    assert server.get(FORECAST, headers=lines).status_code == 304
    assert server.get(FORECAST, headers=lines[:1]).status_code == 200


def test_forecast_over_http_cli_metrics_and_check(
    root: Path, fed: tuple[ServeProcess, datetime]
) -> None:
    server, last = fed
    answer = server.get(FORECAST)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    expect_known_answer(body, last)
    etag = answer.headers["etag"]
    assert server.get(FORECAST, headers={"If-None-Match": etag}).status_code == 304

    # The command line gives the same answer.
    cli = run_cli(root, "forecast", "--json", INGESTER_CONSOLE_TIMEZONE=ZONE)
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout) == body
    table = run_cli(root, "forecast", INGESTER_CONSOLE_TIMEZONE=ZONE)
    assert table.returncode == 0, table.stderr
    row = next(line for line in table.stdout.splitlines() if "allModels" in line)
    assert "52 %" in row and "+2.00 %/h" in row
    assert "at this rate 100 % by " in row and "48 h before the reset" in row

    # /metrics: per limit, absent where there is no value.
    text = server.get("/metrics").text
    samples = {
        (s.name, s.labels.get("limit")): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    weekly = "weeklyLimits.allModels"
    assert samples[("ingester_usage_percent", weekly)] == 52
    assert samples[("ingester_usage_rate_percent_per_hour", weekly)] == 2.0
    exhausts = (last + timedelta(hours=24)).timestamp()
    assert samples[("ingester_usage_exhausts_timestamp_seconds", weekly)] == pytest.approx(exhausts)
    resets = (last + timedelta(days=3)).timestamp()
    assert samples[("ingester_usage_resets_timestamp_seconds", weekly)] == pytest.approx(resets)
    # "3 days" is 3 to 4 days away: the latest the reset may come is a day after the first.
    latest = samples[("ingester_usage_resets_latest_timestamp_seconds", weekly)]
    assert latest == pytest.approx(resets + 86400)
    assert ("ingester_usage_exhausts_timestamp_seconds", "weeklyLimits.sonnetOnly") not in samples
    assert samples[("ingester_usage_rate_percent_per_hour", "weeklyLimits.sonnetOnly")] == 0
    assert samples[("ingester_usage_resets_unparsable_total", None)] == 0

    # check: 52 % is at or above 45; the run-out 24 h ahead comes before the reset.
    env = {"INGESTER_CONSOLE_TIMEZONE": ZONE}
    warned = run_cli(root, "check", "--usage-warning", "45", "--forecast", **env)
    assert warned.returncode == 1, warned.stdout + warned.stderr
    line = warned.stdout.strip()
    assert line.startswith("INGESTER WARNING - ")
    assert "weeklyLimits.allModels 52 % used (at or above 45 %)" in line
    assert "weeklyLimits.sonnetOnly 5 % used;" in line
    assert "weeklyLimits.allModels: at this rate 100 % by " in line
    assert perfdata_problems(line) == []  # the lower-bound thresholds ("N:") included
    perf = line.split(" | ", 1)[1].split()
    assert any(
        p.startswith("forecast_weeklyLimits.allModels=") and p.endswith(":;3600:") for p in perf
    )
    # No projection for the flat limit: its token is left out, not written empty.
    assert not any(p.startswith("forecast_weeklyLimits.sonnetOnly=") for p in perf)
    assert "usage_weeklyLimits.allModels=52%;45;100" in perf
    assert any(p.startswith("forecast_weeklyLimits.allModels=") for p in perf)
    soon = run_cli(root, "check", "--forecast", "--forecast-critical", "25", "--json", **env)
    assert soon.returncode == 2, soon.stdout + soon.stderr
    verdict = json.loads(soon.stdout)
    checks = {c["name"]: c for c in verdict["checks"]}
    assert checks["forecast_weeklyLimits.allModels"]["status"] == "CRITICAL"
    assert checks["forecast_currentSession"]["status"] == "OK"  # resets first
    assert verdict["usage"] == body
    # A threshold alone asks for the forecast: --forecast-critical without --forecast.
    implied = run_cli(root, "check", "--forecast-critical", "25", "--json", **env)
    assert implied.returncode == 2, implied.stdout + implied.stderr
    statuses = {c["name"]: c["status"] for c in json.loads(implied.stdout)["checks"]}
    assert statuses == {c["name"]: c["status"] for c in verdict["checks"]}
    # Judged OK, so the perfdata must not say otherwise: the session runs out in 10 h,
    # after its reset in 2 h; a 40 h CRITICAL bound is capped at the time to the reset.
    late = run_cli(root, "check", "--forecast", "--forecast-critical", "40", **env)
    perf = late.stdout.split(" | ", 1)[1].split()
    session = next(p for p in perf if p.startswith("forecast_currentSession="))
    value, warn, crit = session.split("=", 1)[1].split(";")
    assert float(value.removesuffix("s")) > float(warn.removesuffix(":"))
    assert float(warn.removesuffix(":")) == float(crit.removesuffix(":"))
    assert "currentSession: resets before the limit" in late.stdout
    quiet = run_cli(root, "check", "--usage-critical", "60", **env)
    assert quiet.returncode == 0, quiet.stdout
    plain = run_cli(root, "check")
    assert (
        "usage_" not in plain.stdout
        and json.loads(run_cli(root, "check", "--json").stdout)["usage"] is None
    )

    # One more snapshot: a new tag and a new answer.
    newer = snapshot(13, last + timedelta(minutes=30))
    sent = server.post(
        API,
        content=json.dumps(newer),
        headers={"X-API-Key": KEY, "Content-Type": "application/json"},
    )
    assert sent.status_code == 202
    wait_for(lambda: server.get(FORECAST).headers["etag"] != etag, 20, "a new forecast")
    again = limits_of(server.get(FORECAST).json())["weeklyLimits.allModels"]
    assert again["percentageUsed"] == 53
    assert again["exhaustsAt"] == iso(last + timedelta(minutes=30, hours=23.5))


def test_no_version_is_404_and_exit_1(root: Path) -> None:
    assert run_cli(root, "init").returncode == 0
    with ServeProcess(root) as server:
        answer = server.get(FORECAST)
        assert answer.status_code == 404
        assert answer.json()["versionsAvailable"] == 0
    none = run_cli(root, "forecast")
    assert none.returncode == 1 and none.stderr.startswith("error: no version")
    missing = run_cli(root.parent / "nowhere", "forecast")
    assert missing.returncode == 1 and len(missing.stderr.splitlines()) == 1
    # A history holding only a version dated days ahead holds a version: the words say
    # why none is forecast from, as status names it.
    ahead = datetime.now(UTC) + timedelta(days=3)
    name = ahead.strftime("%Y-%m-%dT%H-%M-%S") + "-00000000.json"
    (root / "console-usage-history" / name).write_text(json.dumps(snapshot(0, ahead)))
    future = run_cli(root, "forecast")
    assert future.returncode == 1
    assert future.stderr == (
        f"error: no version to forecast from in {root / 'console-usage-history'}: the 1 held "
        "are dated more than a day ahead of this clock (see 'ingester status')\n"
    )


def test_a_history_of_versions_dated_days_ahead_is_not_called_empty_over_http(
    root: Path,
) -> None:
    # Two versions named three days ahead of the clock (a clock set back since): none is
    # the latest, so there is nothing to forecast from, but the history is not empty, as
    # the data's own answer (it serves the oldest of them) and the command line say: the
    # message says why, not "nothing stored yet".
    assert run_cli(root, "init").returncode == 0
    ahead = datetime.now(UTC).replace(microsecond=0) + timedelta(days=3)
    for seq in range(2):
        put_version(root, version_name(ahead, seq), json.dumps(snapshot(seq, ahead)).encode())
    with ServeProcess(root) as server:
        data = server.get(API)
        assert data.status_code == 200
        assert data.json()["versionInfo"]["total"] == 2
        answer = server.get(FORECAST)
        assert answer.status_code == 404
        assert answer.json() == {
            "error": "NotFound",
            "message": "no version to forecast from: the 2 held are dated more than a day "
            "ahead of this server's clock",
            "versionsAvailable": 0,  # to forecast from (the schema's NoVersions)
        }
        assert "Traceback" not in server.log


def test_a_history_with_no_snapshot_to_go_by_answers_alike_in_text_and_json(
    root: Path, tmp_path: Path
) -> None:
    # Stored now, dated three hours ahead: the scraper's clock was wrong, so it is left out.
    drop = tmp_path / "ahead.json"
    drop.write_text(json.dumps(snapshot(0, datetime.now(UTC) + timedelta(hours=3))))
    assert run_cli(root, "ingest", str(drop)).returncode == 0
    as_json = run_cli(root, "forecast", "--json")
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout)["asOf"] is None
    text = run_cli(root, "forecast")
    assert (text.returncode, text.stderr) == (0, "")
    assert text.stdout == (
        "no snapshot to forecast from: no version has a lastUpdated that is readable "
        "and at most 1 h ahead of when it was stored\n"
    )
    # A check asked to judge usage cannot see any: never a silent OK.
    for option in (("--usage-warning", "45"), ("--forecast",)):
        judged = run_cli(root, "check", *option)
        assert judged.returncode == 1, judged.stdout
        assert (
            "; no snapshot to judge usage by: no version has a lastUpdated that is readable "
            "and at most 1 h ahead of when it was stored; "
        ) in judged.stdout
        item = json.loads(run_cli(root, "check", *option, "--json").stdout)["checks"][-1]
        assert (item["name"], item["status"], item["value"]) == ("usage", "WARNING", None)
    # Not asked about usage, the age alone cannot be told either: never "0 s old".
    plain = run_cli(root, "check")
    assert plain.returncode == 1, plain.stdout
    assert plain.stdout.startswith("INGESTER WARNING - newest data dated 3.0 h ahead of this clock")


def forecast_with_a_limit_named(root: Path, tmp_path: Path, key: str) -> str:
    """The forecast table of a fresh snapshot that also holds the window ``odd.KEY``."""
    body = snapshot(0, datetime.now(UTC) - timedelta(minutes=1))
    body["odd"] = {key: {"resetsIn": "2 hr", "percentageUsed": 3}}
    drop = tmp_path / "odd.json"
    drop.write_text(json.dumps(body))
    assert run_cli(root, "ingest", str(drop)).returncode == 0
    table = run_cli(root, "forecast")
    assert table.returncode == 0, table.stderr
    return table.stdout


def test_a_limit_named_with_control_characters_keeps_its_row_one_line(
    root: Path, tmp_path: Path
) -> None:
    table = forecast_with_a_limit_named(root, tmp_path, "line\nbreak\x1b[31m")
    lines = table.splitlines()
    assert len(lines) == 2 + 4  # the as-of line, the header, four limits
    assert lines[-1].startswith("odd.line\\nbreak\\x1b[31m  "), lines[-1]
    assert "\x1b" not in table


def test_a_limit_named_with_a_bidi_control_cannot_reverse_its_line(
    root: Path, tmp_path: Path
) -> None:
    # U+202E printed as itself makes a terminal show the rest of the line reversed,
    # the numbers too: written escaped, as the other controls are.
    table = forecast_with_a_limit_named(root, tmp_path, "rtl\u202egnp")
    assert "odd.rtl\\u202egnp  " in table, table
    judged = run_cli(root, "check", "--forecast")
    for out in (table, judged.stdout):
        assert "\u202e" not in out, out


def test_a_reset_a_week_or_more_away_shows_its_date_in_the_table(
    root: Path, tmp_path: Path
) -> None:
    seen = datetime(2026, 11, 27, 14, 5, tzinfo=UTC)  # a Friday
    body = snapshot(0, seen)
    body["currentSession"]["resetsIn"] = "21 days"  # a Friday again, three weeks on
    drop = tmp_path / "far.json"
    drop.write_text(json.dumps(body))
    assert run_cli(root, "ingest", str(drop)).returncode == 0
    table = run_cli(root, "forecast", INGESTER_CONSOLE_TIMEZONE="UTC")
    assert table.returncode == 0, table.stderr
    row = next(line for line in table.stdout.splitlines() if line.startswith("currentSession"))
    assert "Fri 18 Dec 2026 14:05" in row, row


def test_a_reset_that_has_passed_is_said_and_dated_from_now(root: Path, tmp_path: Path) -> None:
    # Data eight days old: its reset lies a week behind the reader, so a weekday alone
    # would name the coming one; and the reading no longer holds.
    seen = (datetime.now(UTC) - timedelta(days=8)).replace(microsecond=0)
    body = snapshot(0, seen)
    body["currentSession"]["resetsIn"] = "4 hr"
    drop = tmp_path / "old.json"
    drop.write_text(json.dumps(body))
    assert run_cli(root, "ingest", str(drop)).returncode == 0
    table = run_cli(root, "forecast", INGESTER_CONSOLE_TIMEZONE="UTC")
    assert table.returncode == 0, table.stderr
    row = next(line for line in table.stdout.splitlines() if line.startswith("currentSession"))
    assert (seen + timedelta(hours=4)).strftime("%a %d %b %Y %H:%M") in row, row
    assert row.endswith(" (the reset has passed since)"), row


def test_a_limit_last_read_a_week_or_more_ago_shows_its_date_under_the_table(
    root: Path, tmp_path: Path
) -> None:
    seen = datetime(2026, 11, 27, 14, 5, tzinfo=UTC)  # a Friday
    old = snapshot(0, seen - timedelta(days=14))
    old["legacy"] = {"resetsIn": "60 days", "percentageUsed": 42}  # held: not reset yet
    drops = [tmp_path / "old.json", tmp_path / "new.json"]
    drops[0].write_text(json.dumps(old))
    drops[1].write_text(json.dumps(snapshot(1, seen)))
    assert run_cli(root, "ingest", *map(str, drops)).returncode == 0
    table = run_cli(root, "forecast", INGESTER_CONSOLE_TIMEZONE="UTC")
    assert table.returncode == 0, table.stderr
    [note] = [line for line in table.stdout.splitlines() if line.startswith("legacy:")]
    # The same words the table's row uses: a weekday alone would name last Friday.
    assert note.startswith("legacy: last read Fri 13 Nov 2026 14:05; not in the newest"), note


def test_an_unknown_console_time_zone_is_a_usage_error(root: Path) -> None:
    bad = run_cli(root, "--console-timezone", "Mars/Olympus", "forecast")
    assert bad.returncode == 2
    assert "--console-timezone" in bad.stderr and "Mars/Olympus" in bad.stderr
    from_env = run_cli(root, "forecast", INGESTER_CONSOLE_TIMEZONE="Europe/Nowhere")
    assert from_env.returncode == 2 and "INGESTER_CONSOLE_TIMEZONE" in from_env.stderr


@pytest.mark.parametrize(
    ("tz", "zone"),
    [
        ("CET-1CEST,M3.5.0,M10.5.0/3", None),  # a POSIX rule: no zone this can load
        ("Nowhere/Atlantis", None),
        ("Europe/Berlin", "Europe/Berlin"),
        (":Europe/Berlin", "Europe/Berlin"),
    ],
)
def test_a_tz_that_names_no_zone_is_utc_and_said_once(
    root: Path, tmp_path: Path, tz: str, zone: str | None
) -> None:
    source = tmp_path / "one.json"
    source.write_text(json.dumps(snapshot(0, datetime.now(UTC) - timedelta(minutes=5))))
    assert run_cli(root, "ingest", str(source)).returncode == 0
    done = run_cli(root, "forecast", TZ=tz)
    assert done.returncode == 0, done.stderr
    said = [line for line in done.stderr.splitlines() if "names no time zone" in line]
    if zone is None:
        assert len(said) == 1, done.stderr
        assert f" WARNING TZ={tz!r} names no time zone this can read " in said[0]
        assert said[0].endswith(
            "set --console-timezone (INGESTER_CONSOLE_TIMEZONE) to the console's zone"
        )
        assert "times in UTC" in done.stdout
    else:
        assert said == [], done.stderr
        assert f"times in {zone}" in done.stdout


def test_a_partial_scrape_keeps_every_limit_everywhere(
    root: Path, fed: tuple[ServeProcess, datetime]
) -> None:
    """A scraper that misses the weekly section once must not make the weekly limits, their
    metrics and check's items vanish: each keeps its last reading, said to be held."""
    server, last = fed
    before = server.get(FORECAST).json()
    env = {"INGESTER_CONSOLE_TIMEZONE": ZONE}
    warned = run_cli(root, "check", "--usage-warning", "45", "--forecast", **env)
    assert warned.returncode == 1, warned.stdout

    seen = last + timedelta(minutes=2)  # when the fixture started: not in the future
    partial = {  # the shape of tests/samples/valid/partial-with-errors.json
        "currentSession": {"resetsIn": "2 hr", "percentageUsed": 52.5},
        "lastUpdated": iso(seen),
        "isPartial": True,
        "extractionErrors": {"weeklyLimits": "selector 'Weekly limits' not found after 10000 ms"},
    }
    sent = server.post(
        API,
        content=json.dumps(partial),
        headers={"X-API-Key": KEY, "Content-Type": "application/json"},
    )
    assert sent.status_code == 202, sent.text
    wait_for(lambda: server.get(FORECAST).json()["asOf"] == iso(seen), 20, "the partial stored")

    body = server.get(FORECAST).json()
    limits = limits_of(body)
    assert list(limits) == ["currentSession", "weeklyLimits.allModels", "weeklyLimits.sonnetOnly"]
    assert limits["currentSession"]["inNewest"] is True
    assert limits["currentSession"]["observedAt"] == iso(seen)
    reason = "extractionErrors.weeklyLimits: selector 'Weekly limits' not found after 10000 ms"
    for name in ("weeklyLimits.allModels", "weeklyLimits.sonnetOnly"):
        held = limits[name]
        was = limits_of(before)[name]
        assert (held["inNewest"], held["observedAt"], held["missingReason"]) == (
            False,
            iso(last),
            reason,
        )
        # Everything else is the answer before the partial snapshot.
        for key in ("percentageUsed", "resetsAt", "ratePerHour", "exhaustsAt", "beforeReset"):
            assert held[key] == was[key], (name, key)
    cli = run_cli(root, "forecast", "--json", **env)
    assert json.loads(cli.stdout) == body
    table = run_cli(root, "forecast", **env).stdout
    assert "weeklyLimits.allModels: last read " in table and reason in table

    samples = {
        (s.name, s.labels.get("limit")): s.value
        for family in text_string_to_metric_families(server.get("/metrics").text)
        for s in family.samples
    }
    weekly = "weeklyLimits.allModels"
    assert samples[("ingester_usage_percent", weekly)] == 52
    assert samples[("ingester_usage_exhausts_timestamp_seconds", weekly)] == pytest.approx(
        (last + timedelta(hours=24)).timestamp()
    )
    assert samples[("ingester_usage_observed_timestamp_seconds", weekly)] == last.timestamp()
    assert samples[("ingester_usage_observed_timestamp_seconds", "currentSession")] == (
        seen.timestamp()
    )

    still = run_cli(root, "check", "--usage-warning", "45", "--forecast", **env)
    assert still.returncode == 1, still.stdout
    line = still.stdout
    assert (
        "weeklyLimits.allModels 52 % used (at or above 45 %) (last read 2 min before the "
        "newest snapshot, which lacks it)" in line
    )
    assert "weeklyLimits.allModels: at this rate 100 % by " in line
    assert "usage_weeklyLimits.allModels=52%;45;100" in line
    assert perfdata_problems(line.strip()) == []
    # Missing for longer than --max-age (2 min > 110 s, while the newest data is younger):
    # the scraper runs but no longer reads it.
    strict = run_cli(root, "check", "--usage-critical", "99", "--max-age", "110s", **env)
    assert strict.returncode == 1, strict.stdout
    assert "weeklyLimits.allModels 52 % used (last read 2 min before" in strict.stdout
    assert "(not read for more than 110 s)" in strict.stdout
    only_forecast = run_cli(root, "check", "--forecast", "--max-age", "110s", **env)
    assert only_forecast.returncode == 1, only_forecast.stdout
    assert "not in the newest snapshot (not read for more than 110 s)" in only_forecast.stdout


def test_a_working_day_after_a_night_idle_runs_out_at_the_days_pace(root: Path) -> None:
    """A weekly limit read every 5 minutes for a day: flat at 40 % for 18 hours (a night,
    a day off), then 3 %/h for the last 6 (a working day), to 58 %, the reset 3 days away.
    18 points a day from 58 % reach 100 % in about 56 h, before the reset: the rate is the day's
    net pace (0.75 %/h), not the flat stretch most readings lie on, and ``check`` says so."""
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    reset = now + timedelta(days=3)
    start = now - timedelta(hours=24)
    for i in range(24 * 12 + 1):
        observed = start + timedelta(minutes=5 * i)
        working = max(0.0, (observed - (now - timedelta(hours=6))).total_seconds() / 3600)
        place_weekly(root, observed, round(40 + 3 * working, 4), reset, i)
    limit = cli_limits(root)["weeklyLimits.allModels"]
    assert (limit["percentageUsed"], limit["resetsAt"]) == (58, iso(reset))
    assert limit["ratePerHour"] == pytest.approx(0.75, abs=0.01), limit
    runs_out = datetime.fromisoformat(limit["exhaustsAt"].replace("Z", "+00:00"))
    assert abs(runs_out - (now + timedelta(hours=56))) < timedelta(hours=1), limit
    assert limit["beforeReset"] is True, limit
    judged = run_cli(root, "check", "--forecast", INGESTER_CONSOLE_TIMEZONE="UTC")
    assert judged.returncode == 1, judged.stdout
    assert "weeklyLimits.allModels: at this rate 100 % by " in judged.stdout


def _weekly_rise(root: Path, step: float) -> None:
    """Thirteen readings two hours apart of ``weeklyLimits.allModels`` rising by ``step``
    percentage points each from 10 %, with a reset wording the tool does not read."""
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    for i in range(13):
        observed = now - timedelta(hours=2 * (12 - i))
        body = snapshot(0, observed)
        body["weeklyLimits"]["allModels"] = {
            "resetsIn": "when the week ends",
            "percentageUsed": 10 + step * i,
        }
        put_version(root, version_name(observed, i), json.dumps(body).encode())


def test_a_rise_too_slow_to_project_is_not_called_not_rising(root: Path) -> None:
    """A limit rising 0.009 %/h from 10 % (100 % in some 10,000 h, beyond the year a
    projection reaches), its reset wording one the tool does not read: the table's row
    shows ``+0.01 %/h`` and, beside it, that 100 % is not within a year, not ``not
    rising``; ``check --forecast`` words it alike."""
    _weekly_rise(root, 0.018)
    done = run_cli(root, "forecast", INGESTER_CONSOLE_TIMEZONE="UTC")
    assert done.returncode == 0, done.stderr
    row = next(line for line in done.stdout.splitlines() if "allModels" in line)
    assert row.endswith("+0.01 %/h  100 % not within a year"), row
    judged = run_cli(root, "check", "--forecast", INGESTER_CONSOLE_TIMEZONE="UTC")
    assert "weeklyLimits.allModels: 100 % not within a year" in judged.stdout, judged.stdout
    assert "not rising" not in judged.stdout


def test_a_rise_shown_as_0_is_not_rising_in_every_surface(root: Path) -> None:
    """0.00001 %/h: ``+0.00 %/h`` in the table and ``0`` in the JSON, so the table and
    ``check`` say ``not rising``, as the page does from the JSON, not ``100 % not within a
    year`` beside a rate shown as none."""
    _weekly_rise(root, 0.00002)
    assert cli_limits(root)["weeklyLimits.allModels"]["ratePerHour"] == 0
    done = run_cli(root, "forecast", INGESTER_CONSOLE_TIMEZONE="UTC")
    assert done.returncode == 0, done.stderr
    row = next(line for line in done.stdout.splitlines() if "allModels" in line)
    assert row.endswith("+0.00 %/h  not rising"), row
    judged = run_cli(root, "check", "--forecast", INGESTER_CONSOLE_TIMEZONE="UTC")
    assert "weeklyLimits.allModels: not rising" in judged.stdout, judged.stdout


def test_a_reset_over_a_year_ahead_is_not_said_to_come_before_a_slow_rise(root: Path) -> None:
    """The same crawl (100 % past the year a projection reaches), its reset ``390 days``
    ahead: which comes first is not known, and no surface says the reset comes first.
    The JSON's ``beforeReset`` is null, the table and ``check`` say so in words, and
    ``/metrics`` has the reset's series but no run-out, so no alert rule sets one against
    the other."""
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    for i in range(13):
        observed = now - timedelta(hours=2 * (12 - i))
        body = snapshot(0, observed)
        body["weeklyLimits"]["allModels"] = {
            "resetsIn": "390 days",
            "percentageUsed": 10 + 0.018 * i,
        }
        put_version(root, version_name(observed, i), json.dumps(body).encode())
    weekly = cli_limits(root)["weeklyLimits.allModels"]
    assert weekly["resetsAt"] == iso(now + timedelta(days=390))
    assert (weekly["exhaustsAt"], weekly["beforeReset"]) == (None, None), weekly
    words = "100 % not within a year; whether before or after the reset"
    done = run_cli(root, "forecast", INGESTER_CONSOLE_TIMEZONE="UTC")
    assert done.returncode == 0, done.stderr
    row = next(line for line in done.stdout.splitlines() if "allModels" in line)
    assert words in row and row.endswith("at the earliest) is not known"), row
    judged = run_cli(root, "check", "--forecast", INGESTER_CONSOLE_TIMEZONE="UTC")
    assert f"weeklyLimits.allModels: {words}" in judged.stdout, judged.stdout
    assert "weeklyLimits.allModels: resets before the limit" not in judged.stdout
    with ServeProcess(root, env={"INGESTER_CONSOLE_TIMEZONE": "UTC"}) as server:
        served = limits_of(server.get(FORECAST).json())["weeklyLimits.allModels"]
        assert served == weekly
        samples = {
            (s.name, s.labels.get("limit")): s.value
            for family in text_string_to_metric_families(server.get("/metrics").text)
            for s in family.samples
        }
    limit = "weeklyLimits.allModels"
    assert ("ingester_usage_exhausts_timestamp_seconds", limit) not in samples
    assert samples[("ingester_usage_resets_timestamp_seconds", limit)] == pytest.approx(
        (now + timedelta(days=390)).timestamp()
    )


def place_partials(root: Path, after: datetime) -> None:
    """39 partial scrapes without the weekly limits, one every 45 minutes after ``after``."""
    for i in range(1, 40):
        observed = after + timedelta(minutes=45 * i)
        partial = {
            "currentSession": {"resetsIn": "3 hr", "percentageUsed": 10},
            "lastUpdated": iso(observed),
            "isPartial": True,
            "extractionErrors": {"weeklyLimits": "selector not found"},
        }
        put_version(root, version_name(observed, i + 1), json.dumps(partial).encode())


def served_all_models(server: ServeProcess) -> float:
    """``weeklyLimits.allModels``' percentage in the served forecast."""
    answer = server.get(FORECAST)
    assert answer.status_code == 200, answer.text
    return float(limits_of(answer.json())["weeklyLimits.allModels"]["percentageUsed"])


def test_a_version_deleted_by_hand_leaves_the_served_forecast(root: Path) -> None:
    """The weekly limits were last read 30 hours ago, wrongly (99 %; 40 % an hour before),
    and every snapshot since is a partial scrape without them, so the forecast holds
    them at their last reading. Deleted by hand, the wrong version leaves the answer of a
    running ``serve`` as it leaves that of ``ingester forecast --json``: both hold 40 %."""
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    reset = now + timedelta(days=4)
    first, second = now - timedelta(hours=31), now - timedelta(hours=30)
    place_weekly(root, first, 40, reset, 0)
    wrong = place_weekly(root, second, 99, reset, 1)
    place_partials(root, second)

    with ServeProcess(root, env={"INGESTER_CONSOLE_TIMEZONE": "UTC"}) as server:
        assert served_all_models(server) == 99
        (root / "console-usage-history" / wrong).unlink()
        assert cli_limits(root)["weeklyLimits.allModels"]["percentageUsed"] == 40
        wait_for(
            lambda: served_all_models(server) == 40, 10, "serve to leave out the deleted version"
        )
    assert "Traceback" not in server.log


def test_a_version_restored_among_the_old_ones_joins_the_served_forecast(root: Path) -> None:
    """The weekly limits were read 32 hours ago (40 %), and every snapshot since is a
    partial scrape without them. A version of 31 hours ago (70 %) is then restored by
    hand among the old ones, renamed in whole as a restore does: a running ``serve``
    takes it, as ``ingester forecast --json`` does, though it sorts before every version
    the server has already read."""
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    reset = now + timedelta(days=4)
    place_weekly(root, now - timedelta(hours=32), 40, reset, 0)
    place_partials(root, now - timedelta(hours=30))
    elsewhere = root / "restored"
    elsewhere.mkdir()
    # Made beside the history, then renamed in whole.
    name = place_weekly(elsewhere, now - timedelta(hours=31), 70, reset, 99)
    made = elsewhere / "console-usage-history" / name

    with ServeProcess(root, env={"INGESTER_CONSOLE_TIMEZONE": "UTC"}) as server:
        assert served_all_models(server) == 40
        made.rename(root / "console-usage-history" / name)
        assert cli_limits(root)["weeklyLimits.allModels"]["percentageUsed"] == 70
        wait_for(lambda: served_all_models(server) == 70, 10, "serve to take the restored version")
    assert "Traceback" not in server.log


def test_a_limit_at_100_for_longer_than_the_basis_is_at_the_limit_since_at_least(
    root: Path,
) -> None:
    """At 90 % until 30 hours ago and at 100 % since, read every 30 minutes over two days:
    the first reading of the 24-hour basis is at 100 % already, so when it was reached is
    not known, only that it was by then. ``exhaustsAt`` is that reading (the basis'
    ``since``), and the words say ``since at least``, not a time it was reached."""
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    reset = now + timedelta(days=3)
    reached = now - timedelta(hours=30)
    for i in range(48 * 2 + 1):
        observed = now - timedelta(hours=48) + timedelta(minutes=30 * i)
        place_weekly(root, observed, 100 if observed >= reached else 90, reset, i)
    limit = cli_limits(root)["weeklyLimits.allModels"]
    assert (limit["percentageUsed"], limit["beforeReset"]) == (100, True)
    assert limit["exhaustsAt"] == limit["basis"]["since"] == iso(now - timedelta(hours=24))
    table = run_cli(root, "forecast", INGESTER_CONSOLE_TIMEZONE="UTC")
    row = next(line for line in table.stdout.splitlines() if "allModels" in line)
    since = (now - timedelta(hours=24)).strftime("%a %H:%M")
    assert row.endswith(f"at the limit since at least {since}"), row


def test_a_limit_at_100_for_longer_than_the_basis_claims_no_rate(root: Path) -> None:
    """At 100 % through the whole 24-hour basis: the console shows no more than 100 %, so
    the flat readings say nothing of how fast it is used, and no rate is claimed (no
    ``+0.00 %/h``, which reads as "not rising"): ``ratePerHour`` null, ``-`` in the table,
    no rate in ``/metrics``; it is still at the limit, before its reset."""
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    reset = now + timedelta(days=3)
    for i in range(30 * 2 + 1):
        observed = now - timedelta(hours=30) + timedelta(minutes=30 * i)
        place_weekly(root, observed, 100, reset, i)
    limit = cli_limits(root)["weeklyLimits.allModels"]
    assert (limit["percentageUsed"], limit["ratePerHour"], limit["beforeReset"]) == (
        100,
        None,
        True,
    )
    assert limit["exhaustsAt"] == limit["basis"]["since"]
    table = run_cli(root, "forecast", INGESTER_CONSOLE_TIMEZONE="UTC")
    row = next(line for line in table.stdout.splitlines() if "allModels" in line)
    assert " - " in row and "%/h" not in row.split("100 %", 1)[1].split("at the limit")[0], row
    with ServeProcess(root, env={"INGESTER_CONSOLE_TIMEZONE": "UTC"}) as server:
        text = server.get("/metrics").text
    rates = {
        s.labels.get("limit")
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "ingester_usage_rate_percent_per_hour"
    }
    assert "weeklyLimits.allModels" not in rates and "weeklyLimits.sonnetOnly" in rates
    assert "Traceback" not in server.log


def test_a_reset_worded_to_the_hour_or_the_day_is_never_judged_to_the_minute(root: Path) -> None:
    """``2 hr`` means a reset 2 to 3 hours away, ``3 days`` 3 to 4 days: the forecast
    says no more than that. The session, 100 % in 2.5 hours, runs out within the hour its
    reset may come in: neither before nor after (``beforeReset`` null, "about when it
    resets"; the table shows the reset's hour as a span), never "resets before the
    limit", and ``check`` still judges it a run-out, up to the reset's latest instant:
    WARNING, CRITICAL within ``--forecast-critical``, its perfdata bounds saying the same.
    The weekly limit's reset, of which only the day is known, is shown as the day-long
    span it allows."""
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    newest = now - timedelta(minutes=1)
    for i in range(13):
        observed = newest - timedelta(minutes=10 * (12 - i))
        body = snapshot(0, observed)
        body["currentSession"] = {"resetsIn": "2 hr", "percentageUsed": 10 + 40 * i / 12}
        body["weeklyLimits"]["allModels"] = {"resetsIn": "3 days", "percentageUsed": 40 + i / 2}
        put_version(root, version_name(observed, i), json.dumps(body).encode())
    limits = cli_limits(root)
    session = limits["currentSession"]
    assert session["ratePerHour"] == pytest.approx(20)
    assert session["exhaustsAt"] == iso(newest + timedelta(hours=2.5))
    assert session["resetsAt"] == iso(newest + timedelta(hours=2))
    assert session["beforeReset"] is None, session
    assert limits["weeklyLimits.allModels"]["beforeReset"] is True
    table = run_cli(root, "forecast", INGESTER_CONSOLE_TIMEZONE="UTC")
    assert table.returncode == 0, table.stderr

    def hm(delta: timedelta) -> str:
        return (newest + delta).strftime("%a %H:%M")

    rows = {line.split()[0]: line for line in table.stdout.splitlines()[2:]}
    hour = f"{hm(timedelta(hours=2))} to {hm(timedelta(hours=2, minutes=59))}"
    assert hour in rows["currentSession"], rows
    assert rows["currentSession"].endswith(
        f"at this rate 100 % by {hm(timedelta(hours=2.5))}, about when it resets "
        f"({hm(timedelta(hours=2))} at the earliest)"
    ), rows
    days = f"{hm(timedelta(days=3))} to {hm(timedelta(days=4, minutes=-1))}"
    assert days in rows["weeklyLimits.allModels"], rows
    judged = run_cli(
        root, "check", "--forecast-critical", "3", "--json", INGESTER_CONSOLE_TIMEZONE="UTC"
    )
    checks = {c["name"]: c for c in json.loads(judged.stdout)["checks"]}
    session_check = checks["forecast_currentSession"]
    assert session_check["status"] == "CRITICAL", session_check
    assert "about when it resets" in json.dumps(session_check), session_check
    for hours, status in (("3", "CRITICAL"), ("1", "WARNING")):
        line = run_cli(root, "check", "--forecast-critical", hours).stdout.rstrip("\n")
        assert perfdata_problems(line) == [], line
        [token] = [t for t in line.split(" | ")[1].split() if t.startswith("forecast_currentS")]
        value, warn, crit = (float(n.rstrip("s:")) for n in token.split("=")[1].split(";"))
        # By the plugin range rules alone (N: alerts below N), as a grapher judges it.
        assert status == ("CRITICAL" if value < crit else "WARNING" if value < warn else "OK")
        assert f"{status} - currentSession: at this rate 100 % by" in line, line


def test_a_version_swapped_in_the_middle_by_hand_gives_the_forecast_a_new_tag(root: Path) -> None:
    """A version deleted by hand and another put among the old ones, between two requests:
    the newest, the oldest and the count stay as they were, but the forecast is another
    (a limit read only in the swapped-in version). A running ``serve`` answers the new
    forecast, under a new tag: a client's old tag must not match, and the server must
    not serve the body it kept under that tag."""
    last = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=2)
    seen = [last - timedelta(minutes=30 * (12 - i)) for i in range(13)]
    for i, observed in enumerate(seen):
        put_version(root, version_name(observed, i), json.dumps(snapshot(i, observed)).encode())
    with ServeProcess(root, env={"INGESTER_CONSOLE_TIMEZONE": ZONE}) as server:
        first = server.get(FORECAST)
        assert first.status_code == 200, first.text
        assert "legacy" not in limits_of(first.json())
        swapped = snapshot(6, seen[6])
        swapped["legacy"] = {"resetsIn": "60 days", "percentageUsed": 42}
        put_version(root, version_name(seen[6], 0x600), json.dumps(swapped).encode())
        (root / "console-usage-history" / version_name(seen[6], 6)).unlink()
        wait_for(
            lambda: "legacy" in limits_of(server.get(FORECAST).json()),
            20,
            "the forecast of the swapped history",
        )
        again = server.get(FORECAST, headers={"If-None-Match": first.headers["etag"]})
        assert again.status_code == 200, again.headers
        assert again.headers["etag"] != first.headers["etag"]
        assert "legacy" in limits_of(again.json())


@pytest.mark.skipif(WHY_NOT_OTHER is not None, reason=WHY_NOT_OTHER or "")
def test_a_forecast_that_left_out_an_unreadable_version_is_no_304_once_it_counts() -> None:
    """Served by another user, one version of five (mode 0) is left out. Its mode put right
    and the server restarted, the versions' names are the same, but the forecast now
    counts it: the tag the client holds must not get a 304 for a body without it."""
    with others_folder("ingester-forecast-tag-") as root:
        assert run_as_other(root, "init").returncode == 0
        last = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=2)
        names = []
        for i in range(5):
            at = last - timedelta(minutes=30 * (4 - i))
            names.append(version_name(at, i))
            put_version(root, names[-1], json.dumps(snapshot(i, at)).encode())
        unreadable = root / "console-usage-history" / names[2]
        unreadable.chmod(0)
        with ServeProcess(root, wrapper=tuple(AS_OTHER)) as server:
            first = server.get(FORECAST)
            assert first.status_code == 200, first.text
            assert limits_of(first.json())["currentSession"]["basis"]["points"] == 4
            assert server.stop() == 0
        unreadable.chmod(0o644)
        with ServeProcess(root, wrapper=tuple(AS_OTHER)) as server:
            again = server.get(FORECAST, headers={"If-None-Match": first.headers["etag"]})
            assert again.status_code == 200, again.headers
            assert limits_of(again.json())["currentSession"]["basis"]["points"] == 5
            assert again.headers["etag"] != first.headers["etag"]
            same = server.get(FORECAST, headers={"If-None-Match": again.headers["etag"]})
            assert same.status_code == 304
            assert server.stop() == 0


def test_a_snapshot_dated_ahead_gives_way_to_the_one_stored_after_it_everywhere(
    root: Path,
) -> None:
    """The data's own answer shows the version stored last (the latest link's); the
    forecast is of that snapshot too, over HTTP, by ``ingester forecast`` and by
    ``check``, not of one stored before it whose scraper's clock ran 40 minutes ahead
    (which it would otherwise show until a snapshot observed later still came)."""
    now = datetime.now(UTC).replace(microsecond=0)
    for i in range(6):
        stored = now - timedelta(minutes=55 - 10 * i)
        updated = stored - timedelta(seconds=5)
        used = 40 + i
        if i == 2:
            updated, used = stored + timedelta(minutes=40), 90  # dated ahead of the clock
        body = snapshot(i, updated)
        body["weeklyLimits"]["allModels"]["percentageUsed"] = used
        put_version(root, version_name(stored, i), json.dumps(body).encode())
    env = {"INGESTER_CONSOLE_TIMEZONE": ZONE}
    with ServeProcess(root, env=env) as server:
        card = server.get(API).json()
        served = server.get(FORECAST).json()
        assert "Traceback" not in server.log
    assert card["weeklyLimits"]["allModels"]["percentageUsed"] == 45
    assert served["asOf"] == iso(datetime.fromisoformat(card["lastUpdated"]))
    assert (served["version"], served["notLatest"]) == (card["versionInfo"]["filename"], None)
    weekly = limits_of(served)["weeklyLimits.allModels"]
    assert (weekly["percentageUsed"], weekly["observedAt"]) == (45, served["asOf"])
    # The rate is the five snapshots in line, the one dated ahead left out: 1 % in 10 min.
    assert weekly["basis"]["points"] == 5 and weekly["ratePerHour"] == 6.0
    cli = run_cli(root, "forecast", "--json", **env)
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout) == served
    checked = run_cli(root, "check", "--forecast", "--json", **env)
    assert json.loads(checked.stdout)["usage"] == served, checked.stdout + checked.stderr
    table = run_cli(root, "check", "--usage-warning", "80", **env)
    assert "weeklyLimits.allModels 45 % used" in table.stdout, table.stdout


@pytest.mark.parametrize("late", ["sent late", "clock far ahead"])
def test_a_forecast_not_of_the_latest_version_says_why(root: Path, late: str) -> None:
    """Where the forecast is not of the snapshot the data's own answer shows, it says so
    and why, over HTTP and by ``ingester forecast``: a snapshot stored last but observed
    before the others (a scraper sending what it queued: the forecast stays with the
    console's present), or one dated more than an hour after it was stored (left out)."""
    now = datetime.now(UTC).replace(microsecond=0)
    for i in range(3):
        stored = now - timedelta(minutes=30 - 10 * i)
        put_version(root, version_name(stored, i), json.dumps(snapshot(i, stored)).encode())
    observed = now - timedelta(hours=3) if late == "sent late" else now + timedelta(hours=2)
    latest = version_name(now - timedelta(minutes=1), 9)
    put_version(root, latest, json.dumps(snapshot(9, observed)).encode())
    env = {"INGESTER_CONSOLE_TIMEZONE": ZONE}
    with ServeProcess(root, env=env) as server:
        assert server.get(API).json()["versionInfo"]["filename"] == latest
        served = server.get(FORECAST).json()
    newest = version_name(now - timedelta(minutes=10), 2)
    assert served["version"] == newest
    assert served["asOf"] == iso(now - timedelta(minutes=10))
    if late == "sent late":
        why = (
            f"the latest version, {latest}, was observed at {iso(observed)}, before this "
            "snapshot (a snapshot sent late)"
        )
    else:
        why = (
            f"the latest version, {latest}, is dated more than 1 h after it was stored (its "
            "scraper's clock ran ahead), so it is left out"
        )
    assert served["notLatest"] == why
    cli = run_cli(root, "forecast", "--json", **env)
    assert json.loads(cli.stdout) == served, cli.stderr
    table = run_cli(root, "forecast", **env)
    assert table.stdout.splitlines()[-1] == f"of {newest}, not the latest version: {why}"
