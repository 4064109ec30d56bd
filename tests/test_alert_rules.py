"""The documented Prometheus alert rules on usage limits, checked and unit-tested by promtool.

The rules are taken from docs/monitoring.md (the usage limits) and docs/serve.md (serve's
and the watcher's) as a user would copy them; ``promtool`` comes from Debian's
``prometheus`` package (``.ci/run`` installs it where missing).
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from support import PROMTOOL, promtool, run_cli, wait_for
from support.serveproc import ServeProcess, put_version, version_name

REPO = Path(__file__).resolve().parents[1]
FORECAST = "/api/claude/console-usage/forecast"

# Evaluated at 10 minutes, so time() is 600. Each limit's series is constant.
UNIT_TESTS = """
rule_files: [rules.yml]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'ingester_usage_percent{job="u", limit="weeklyLimits.allModels"}'
        values: '85 86 87 88 89 90 91 92 93 94 95'
      - series: 'ingester_usage_percent{job="u", limit="currentSession"}'
        values: '40x10'
      # runs out in an hour, reset next week: fires
      - series: 'ingester_usage_exhausts_timestamp_seconds{job="u", limit="soon"}'
        values: '4200x10'
      - series: 'ingester_usage_resets_timestamp_seconds{job="u", limit="soon"}'
        values: '605400x10'
      - series: 'ingester_usage_resets_latest_timestamp_seconds{job="u", limit="soon"}'
        values: '605460x10'
      # runs out in an hour, but the reset comes first: silent
      - series: 'ingester_usage_exhausts_timestamp_seconds{job="u", limit="resetFirst"}'
        values: '4200x10'
      - series: 'ingester_usage_resets_timestamp_seconds{job="u", limit="resetFirst"}'
        values: '3000x10'
      - series: 'ingester_usage_resets_latest_timestamp_seconds{job="u", limit="resetFirst"}'
        values: '3060x10'
      # runs out in three hours: silent
      - series: 'ingester_usage_exhausts_timestamp_seconds{job="u", limit="later"}'
        values: '11400x10'
      - series: 'ingester_usage_resets_timestamp_seconds{job="u", limit="later"}'
        values: '605400x10'
      - series: 'ingester_usage_resets_latest_timestamp_seconds{job="u", limit="later"}'
        values: '605460x10'
      # the reset has passed since the newest snapshot: silent
      - series: 'ingester_usage_exhausts_timestamp_seconds{job="u", limit="stale"}'
        values: '300x10'
      - series: 'ingester_usage_resets_timestamp_seconds{job="u", limit="stale"}'
        values: '400x10'
      - series: 'ingester_usage_resets_latest_timestamp_seconds{job="u", limit="stale"}'
        values: '460x10'
      # at 100 % since 5 min, reset next week: fires, in words (its time left is negative)
      - series: 'ingester_usage_exhausts_timestamp_seconds{job="u", limit="full"}'
        values: '300x10'
      - series: 'ingester_usage_resets_timestamp_seconds{job="u", limit="full"}'
        values: '605400x10'
      - series: 'ingester_usage_resets_latest_timestamp_seconds{job="u", limit="full"}'
        values: '605460x10'
      # runs out in an hour, within the hour its reset is worded to ("2 hr"): fires
      - series: 'ingester_usage_exhausts_timestamp_seconds{job="u", limit="aboutReset"}'
        values: '4200x10'
      - series: 'ingester_usage_resets_timestamp_seconds{job="u", limit="aboutReset"}'
        values: '3600x10'
      - series: 'ingester_usage_resets_latest_timestamp_seconds{job="u", limit="aboutReset"}'
        values: '7200x10'
      # no reset time known: fires
      - series: 'ingester_usage_exhausts_timestamp_seconds{job="u", limit="noReset"}'
        values: '1800x10'
      # read at 0 s and never since: an hour old at 60 min (fires), not at 59
      - series: 'ingester_usage_observed_timestamp_seconds{job="u", limit="unread"}'
        values: '0x70'
      - series: 'ingester_usage_observed_timestamp_seconds{job="u", limit="fresh"}'
        values: '0+60x70'
    alert_rule_test:
      - eval_time: 10m
        alertname: ConsoleUsageLimitHigh
        exp_alerts:
          - exp_labels: {severity: warning, job: u, limit: weeklyLimits.allModels}
            exp_annotations: {summary: "weeklyLimits.allModels is 95 % used"}
      - eval_time: 7m
        alertname: ConsoleUsageLimitHigh
        exp_alerts: []
      - eval_time: 10m
        alertname: ConsoleUsageRunsOutBeforeReset
        exp_alerts:
          - exp_labels: {severity: critical, job: u, limit: soon}
            exp_annotations:
              summary: "soon runs out in 1h 0m 0s,
                before it resets or about when it does"
          - exp_labels: {severity: critical, job: u, limit: aboutReset}
            exp_annotations:
              summary: "aboutReset runs out in 1h 0m 0s,
                before it resets or about when it does"
          - exp_labels: {severity: critical, job: u, limit: noReset}
            exp_annotations:
              summary: "noReset runs out in 20m 0s,
                before it resets or about when it does"
          - exp_labels: {severity: critical, job: u, limit: full}
            exp_annotations:
              summary: "full is at 100 %, or due there by now,
                before it resets or about when it does"
      - eval_time: 59m
        alertname: ConsoleUsageLimitUnread
        exp_alerts: []
      - eval_time: 61m
        alertname: ConsoleUsageLimitUnread
        exp_alerts:
          - exp_labels: {severity: warning, job: u, limit: unread}
            exp_annotations: {summary: "unread last read 1h 1m 0s ago"}
"""


def marked_rules(doc: str, mark: str) -> str:
    """The rules block of ``docs/DOC`` marked ``<!-- rules: MARK -->``, as it stands."""
    text = (REPO / "docs" / doc).read_text()
    found = re.search(rf"<!-- rules: {mark} -->\n```yaml\n(.*?)```", text, re.S)
    assert found, f"docs/{doc} has no rules block marked <!-- rules: {mark} -->"
    return found.group(1)


def documented_rules() -> str:
    return marked_rules("monitoring.md", "usage-limits")


@pytest.fixture
def rules(tmp_path: Path) -> Path:
    if PROMTOOL is None:
        pytest.skip("promtool is not installed (Debian's prometheus package; .ci/run installs it)")
    (tmp_path / "rules.yml").write_text(documented_rules())
    (tmp_path / "tests.yml").write_text(UNIT_TESTS)
    return tmp_path


def test_the_documented_usage_rules_are_valid(rules: Path) -> None:
    done = promtool("check", "rules", "rules.yml", cwd=rules)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 3 rules found" in done.stdout


def test_the_documented_usage_rules_fire_when_they_should(rules: Path) -> None:
    done = promtool("test", "rules", "tests.yml", cwd=rules)
    assert done.returncode == 0, done.stdout + done.stderr


# -- the rules over a real serve's scrapes, through partial snapshots --------------------------

STEPS = 12  # scrapes, one a minute of promtool's time
PARTIAL = (6, 7)  # the steps whose snapshot lacks weeklyLimits
FAMILIES = (
    "ingester_usage_percent",
    "ingester_usage_resets_timestamp_seconds",
    "ingester_usage_resets_latest_timestamp_seconds",
    "ingester_usage_rate_percent_per_hour",
    "ingester_usage_exhausts_timestamp_seconds",
    "ingester_usage_observed_timestamp_seconds",
)
TIMES = {name for name in FAMILIES if name.endswith("_seconds")}


def iso(stamp: datetime) -> str:
    return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def usage_snapshot(at: datetime, t0: datetime, partial: bool) -> bytes:
    """allModels at 92 % at ``t0``, rising 6 %/h: 100 % in 80 minutes, the reset in 3 days."""
    body: dict[str, Any] = {
        "currentSession": {"resetsIn": "3 hr", "percentageUsed": 20},
        "lastUpdated": iso(at),
    }
    if partial:
        body["isPartial"] = True
        body["extractionErrors"] = {"weeklyLimits": "selector 'Weekly limits' not found"}
    else:
        pct = round(92 + 6 * (at - t0) / timedelta(hours=1), 1)
        body["weeklyLimits"] = {
            "allModels": {"resetsIn": "3 days", "percentageUsed": pct},
            "sonnetOnly": {"resetsIn": "3 days", "percentageUsed": 5},
        }
    return json.dumps(body).encode()


def humanize_duration(value: float) -> str:
    """Prometheus' ``humanizeDuration`` template function, for a value of a second or more."""
    whole = int(value)
    days, hours = whole // 86400, whole // 3600 % 24
    minutes, seconds = whole // 60 % 60, whole % 60
    if days:
        return f"{days}d {hours}h {minutes}m {seconds}s"
    if hours:
        return f"{hours}h {minutes}m {seconds}s"
    return f"{minutes}m {seconds}s"


def usage_scrape(server: ServeProcess) -> dict[tuple[str, str], float]:
    """The usage series of one scrape of ``server``'s ``/metrics``: (name, limit) -> value."""
    text = server.get("/metrics").text
    return {
        (s.name, s.labels["limit"]): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name in FAMILIES
    }


def input_series(scrapes: list[dict[tuple[str, str], float]], base: float) -> list[dict[str, str]]:
    """``scrapes`` as promtool's ``input_series``, one value per scrape; times made relative
    to ``base`` (promtool's 0 s)."""
    keys = sorted({key for scrape in scrapes for key in scrape})
    series = []
    for name, limit in keys:
        cells = []
        for scrape in scrapes:
            value = scrape.get((name, limit))
            # A series missing from a scrape is marked stale, as Prometheus marks it.
            cells.append("stale" if value is None else repr(value - (base if name in TIMES else 0)))
        series.append({"series": f'{name}{{job="u", limit="{limit}"}}', "values": " ".join(cells)})
    return series


def test_the_rules_hold_through_a_partial_scrape_of_a_real_serve(rules: Path, root: Path) -> None:
    t0 = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=30)
    assert run_cli(root, "init").returncode == 0
    # Two hours of full snapshots before the first scrape, one every 10 minutes.
    for k in range(12):
        at = t0 - timedelta(minutes=120 - 10 * k)
        put_version(root, version_name(at), usage_snapshot(at, t0, partial=False))
    scrapes: list[dict[tuple[str, str], float]] = []
    with ServeProcess(root) as server:
        for step in range(STEPS):
            at = t0 + timedelta(minutes=step)
            put_version(root, version_name(at), usage_snapshot(at, t0, step in PARTIAL))
            wait_for(
                lambda at=at: server.get(FORECAST).json()["asOf"] == iso(at),
                20,
                f"the snapshot of step {step} in the forecast",
            )
            scrapes.append(usage_scrape(server))
    # Times as promtool's clock reads them: t0 is its 0 s, one scrape a minute.
    base = t0.timestamp()
    series = input_series(scrapes, base)

    weekly = "weeklyLimits.allModels"
    tests = []
    for minute in range(5, STEPS):
        scrape = scrapes[minute]
        pct = scrape[("ingester_usage_percent", weekly)]
        left = scrape[("ingester_usage_exhausts_timestamp_seconds", weekly)] - base - 60 * minute
        tests += [
            {
                "eval_time": f"{minute}m",
                "alertname": "ConsoleUsageLimitHigh",
                "exp_alerts": [
                    {
                        "exp_labels": {"severity": "warning", "job": "u", "limit": weekly},
                        "exp_annotations": {"summary": f"{weekly} is {pct:g} % used"},
                    }
                ],
            },
            {
                "eval_time": f"{minute}m",
                "alertname": "ConsoleUsageRunsOutBeforeReset",
                "exp_alerts": [
                    {
                        "exp_labels": {"severity": "critical", "job": "u", "limit": weekly},
                        "exp_annotations": {
                            "summary": f"{weekly} runs out in {humanize_duration(left)}, "
                            "before it resets or about when it does"
                        },
                    }
                ],
            },
            {"eval_time": f"{minute}m", "alertname": "ConsoleUsageLimitUnread", "exp_alerts": []},
        ]
    unit = {
        "rule_files": ["rules.yml"],
        "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": series, "alert_rule_test": tests}],
    }
    # JSON is YAML: promtool reads it as it is.
    (rules / "scrapes.yml").write_text(json.dumps(unit, indent=1))
    done = promtool("test", "rules", "scrapes.yml", cwd=rules)
    assert done.returncode == 0, done.stdout + done.stderr
    # The partial steps held the weekly reading: the series were there, with its old time.
    for step in PARTIAL:
        observed = scrapes[step][("ingester_usage_observed_timestamp_seconds", weekly)]
        assert observed == (t0 + timedelta(minutes=PARTIAL[0] - 1)).timestamp()


def test_a_limit_the_scraper_keeps_missing_stays_unread_after_its_reset(
    rules: Path, root: Path
) -> None:
    """The weekly limit is read once, its window resetting 40 minutes later, and every
    snapshot after lacks it: past its reset it has no percentage to show, but the scraper
    still misses it, so the unread alert fires at the hour and goes on firing."""
    t0 = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=30)
    assert run_cli(root, "init").returncode == 0
    weekly = "weeklyLimits.allModels"
    scrapes: list[dict[tuple[str, str], float]] = []
    with ServeProcess(root) as server:
        for step in range(20):  # one scrape every 5 minutes, 95 minutes in all
            at = t0 + timedelta(minutes=5 * step)
            body: dict[str, Any] = {
                "currentSession": {"resetsIn": "3 hr", "percentageUsed": 20},
                "lastUpdated": iso(at),
            }
            if step == 0:
                window = {"resetsIn": "40 min", "percentageUsed": 50}
                body["weeklyLimits"] = {"allModels": window, "sonnetOnly": window}
            else:
                body["isPartial"] = True
                body["extractionErrors"] = {"weeklyLimits": "selector 'Weekly limits' not found"}
            put_version(root, version_name(at), json.dumps(body).encode())
            wait_for(
                lambda at=at: server.get(FORECAST).json()["asOf"] == iso(at),
                20,
                f"the snapshot of step {step} in the forecast",
            )
            scrapes.append(usage_scrape(server))
    assert ("ingester_usage_percent", weekly) not in scrapes[-1]  # its window has reset
    tests: list[dict[str, Any]] = [
        {"eval_time": f"{minute}m", "alertname": "ConsoleUsageLimitUnread", "exp_alerts": []}
        for minute in (30, 55)
    ]
    for minute in (65, 80, 95):
        tests.append(
            {
                "eval_time": f"{minute}m",
                "alertname": "ConsoleUsageLimitUnread",
                "exp_alerts": [
                    {
                        "exp_labels": {"severity": "warning", "job": "u", "limit": limit},
                        "exp_annotations": {
                            "summary": f"{limit} last read {humanize_duration(60 * minute)} ago"
                        },
                    }
                    for limit in (weekly, "weeklyLimits.sonnetOnly")
                ],
            }
        )
    unit = {
        "rule_files": ["rules.yml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "5m",
                "input_series": input_series(scrapes, t0.timestamp()),
                "alert_rule_test": tests,
            }
        ],
    }
    (rules / "unread.yml").write_text(json.dumps(unit, indent=1))
    done = promtool("test", "rules", "unread.yml", cwd=rules)
    assert done.returncode == 0, done.stdout + done.stderr


# -- serve's and the watcher's rules (docs/serve.md) --------------------------------------------

BLOCKS = (("serve.md", "serve"), ("serve.md", "watch"), ("monitoring.md", "usage-limits"))


def rules_of(block: str) -> list[tuple[str, str | None, str | None]]:
    """``(alert, severity, summary)`` of each rule of ``block`` (the docs' one style:
    ``labels: {severity: ...}`` and a double-quoted summary on one line)."""
    found = []
    for rule in re.split(r"\n\s*- alert: ", block)[1:]:
        severity = re.search(r"^\s*labels: \{severity: (\w+)\}\s*$", rule, re.M)
        summary = re.search(r'^\s*summary: "(.*)"\s*$', rule, re.M)
        found.append(
            (
                rule.split("\n", 1)[0].strip(),
                severity[1] if severity else None,
                summary[1].replace('\\"', '"') if summary else None,
            )
        )
    return found


def summary_of(alert: str, severity: str) -> str:
    for doc, mark in BLOCKS:
        for name, level, summary in rules_of(marked_rules(doc, mark)):
            if (name, level) == (alert, severity) and summary is not None:
                return summary
    raise AssertionError(f"no {severity} rule {alert} in the docs")


def test_every_documented_rule_has_a_severity_and_a_summary() -> None:
    for doc, mark in BLOCKS:
        rules = rules_of(marked_rules(doc, mark))
        assert rules, (doc, mark)
        for name, severity, summary in rules:
            assert severity in ("warning", "critical"), f"{doc} {name}: severity {severity}"
            assert summary, f"{doc} {name}: no summary"
        # One name has at most one rule per level.
        assert len({(n, s) for n, s, _ in rules}) == len(rules), (doc, mark)


@pytest.fixture
def ops_rules(tmp_path: Path) -> Path:
    if PROMTOOL is None:
        pytest.skip("promtool is not installed (Debian's prometheus package; .ci/run installs it)")
    (tmp_path / "serve.yml").write_text(marked_rules("serve.md", "serve"))
    (tmp_path / "watch.yml").write_text(marked_rules("serve.md", "watch"))
    return tmp_path


def run_rule_tests(folder: Path, series: list[dict[str, str]], tests: list[Any]) -> None:
    unit = {
        "rule_files": ["serve.yml", "watch.yml"],
        "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": series, "alert_rule_test": tests}],
    }
    (folder / "unit.yml").write_text(json.dumps(unit, indent=1))
    done = promtool("test", "rules", "unit.yml", cwd=folder)
    assert done.returncode == 0, done.stdout + done.stderr


def alert(severity: str, name: str, summary: str | None = None, **labels: str) -> dict[str, Any]:
    return {
        "exp_labels": {"severity": severity, **labels},
        "exp_annotations": {"summary": summary or summary_of(name, severity)},
    }


def expect(minute: int, name: str, *alerts: dict[str, Any]) -> dict[str, Any]:
    return {"eval_time": f"{minute}m", "alertname": name, "exp_alerts": list(alerts)}


def test_no_new_data_fires_after_the_clock_stepped_back(ops_rules: Path) -> None:
    """The clock stepped back an hour at 0 s: the newest version is named an hour ahead,
    and the versions stored after it are named just above it, in the same second, so its
    time stands. Versions stop coming at 10 minutes on job "s"; they keep coming on "ok"."""
    series = [
        {"series": 'ingester_newest_version_timestamp_seconds{job="s"}', "values": "4200x60"},
        {"series": 'ingester_versions_stored_total{job="s"}', "values": "100+1x10 110x50"},
        {"series": 'ingester_newest_version_timestamp_seconds{job="ok"}', "values": "4200x60"},
        {"series": 'ingester_versions_stored_total{job="ok"}', "values": "100+1x60"},
    ]
    name = "ConsoleUsageNoNewData"
    tests = [
        expect(22, name),
        expect(30, name, alert("warning", name, job="s")),
        expect(38, name, alert("warning", name, job="s")),
        expect(50, name, alert("warning", name, job="s"), alert("critical", name, job="s")),
    ]
    run_rule_tests(ops_rules, series, tests)


def test_each_rule_fires_at_the_level_check_gives(ops_rules: Path) -> None:
    series = [
        # The newest lastUpdated one minute older each minute, from 0; on "d" none can
        # be read (a damaged newest version).
        {"series": 'ingester_payload_age_seconds{job="a"}', "values": "0+60x70"},
        {"series": 'ingester_payload_stale{job="a"}', "values": "0x10 1x60"},
        {"series": 'ingester_payload_stale{job="d"}', "values": "1x70"},
        {"series": 'ingester_history_readable{job="h"}', "values": "1x5 0x65"},
        # A drop waiting since 0 s, and ten more each minute.
        {"series": 'ingester_spool_oldest_drop_age_seconds{job="a"}', "values": "0+60x70"},
        {"series": 'ingester_spool_backlog{job="a"}', "values": "0+10x70"},
        # One invalid POST a minute; one with a wrong key every 4 minutes; POSTs that
        # could not be written from 6 minutes.
        {"series": 'ingester_http_posts_total{outcome="invalid"}', "values": "0+1x70"},
        {"series": 'ingester_http_posts_total{outcome="unauthorized"}', "values": "0+0.25x70"},
        {"series": 'ingester_http_posts_total{outcome="spool_error"}', "values": "0x5 1x65"},
        # One schema rejection a minute; none of the other kind.
        {"series": 'ingester_watch_drops_rejected_total{reason="schema"}', "values": "0+1x70"},
        {"series": 'ingester_watch_drops_rejected_total{reason="not_json"}', "values": "0x70"},
    ]
    stale, damaged = "ConsoleUsageStaleData", alert("critical", "ConsoleUsageStaleData", job="d")
    stuck, backlog = "ConsoleUsageSpoolStuck", "ConsoleUsageSpoolBacklog"
    refused, rejected = "ConsoleUsagePostsRefused", "ConsoleUsageDropsRejected"
    backlog_words = "{} drops wait in the spool: the watcher falls behind, or stores nothing"
    posts_words = (
        "serve refused {} POSTs as {} in the last hour; its log's 'answered 400' / "
        "'answered 401' lines name the client and why"
    )
    tests = [
        # No version series at all: serve answers none (or is down).
        expect(1, "ConsoleUsageNoNewData"),
        expect(5, "ConsoleUsageNoNewData", alert("critical", "ConsoleUsageNoNewData")),
        expect(14, stale, damaged),
        expect(20, stale, alert("warning", stale, job="a"), damaged),
        expect(
            35, stale, alert("warning", stale, job="a"), alert("critical", stale, job="a"), damaged
        ),
        expect(8, "ConsoleUsageHistoryUnreadable"),
        expect(
            15,
            "ConsoleUsageHistoryUnreadable",
            alert("critical", "ConsoleUsageHistoryUnreadable", job="h"),
        ),
        expect(9, stuck),
        expect(12, stuck, alert("warning", stuck, job="a")),
        expect(20, stuck, alert("warning", stuck, job="a"), alert("critical", stuck, job="a")),
        expect(9, backlog),
        expect(13, backlog, alert("warning", backlog, backlog_words.format(130), job="a")),
        expect(
            18,
            backlog,
            alert("warning", backlog, backlog_words.format(180), job="a"),
            alert("critical", backlog, backlog_words.format(180), job="a"),
        ),
        expect(5, refused),
        expect(
            70,
            refused,
            alert("warning", refused, posts_words.format(60, "invalid"), outcome="invalid"),
            alert("critical", refused, posts_words.format(60, "invalid"), outcome="invalid"),
            alert(
                "warning", refused, posts_words.format(15, "unauthorized"), outcome="unauthorized"
            ),
        ),
        expect(3, "ConsoleUsagePostsNotStored"),
        expect(
            8,
            "ConsoleUsagePostsNotStored",
            alert(
                "critical",
                "ConsoleUsagePostsNotStored",
                summary_of("ConsoleUsagePostsNotStored", "critical").replace(
                    "{{ $labels.outcome }}", "spool_error"
                ),
                outcome="spool_error",
            ),
        ),
        expect(5, rejected),
        expect(15, rejected, alert("warning", rejected)),
        expect(30, rejected, alert("warning", rejected), alert("critical", rejected)),
    ]
    run_rule_tests(ops_rules, series, tests)
