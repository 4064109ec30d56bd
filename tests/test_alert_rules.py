"""The documented Prometheus alert rules on usage limits, checked and unit-tested by promtool.

The rules are taken from docs/monitoring.md as a user would copy them; ``promtool`` comes
from Debian's ``prometheus`` package (``.ci/run`` installs it where missing).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PROMTOOL = shutil.which("promtool")

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
      - series: 'ingester_usage_exhausts_at_seconds{job="u", limit="soon"}'
        values: '4200x10'
      - series: 'ingester_usage_resets_at_seconds{job="u", limit="soon"}'
        values: '605400x10'
      # runs out in an hour, but the reset comes first: silent
      - series: 'ingester_usage_exhausts_at_seconds{job="u", limit="resetFirst"}'
        values: '4200x10'
      - series: 'ingester_usage_resets_at_seconds{job="u", limit="resetFirst"}'
        values: '3000x10'
      # runs out in three hours: silent
      - series: 'ingester_usage_exhausts_at_seconds{job="u", limit="later"}'
        values: '11400x10'
      - series: 'ingester_usage_resets_at_seconds{job="u", limit="later"}'
        values: '605400x10'
      # the reset has passed since the newest snapshot: silent
      - series: 'ingester_usage_exhausts_at_seconds{job="u", limit="stale"}'
        values: '300x10'
      - series: 'ingester_usage_resets_at_seconds{job="u", limit="stale"}'
        values: '400x10'
      # no reset time known: fires
      - series: 'ingester_usage_exhausts_at_seconds{job="u", limit="noReset"}'
        values: '1800x10'
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
            exp_annotations: {summary: "soon runs out in 1h 0m 0s, before it resets"}
          - exp_labels: {severity: critical, job: u, limit: noReset}
            exp_annotations: {summary: "noReset runs out in 20m 0s, before it resets"}
"""


def documented_rules() -> str:
    text = (REPO / "docs" / "monitoring.md").read_text()
    found = re.search(r"<!-- rules: usage-limits -->\n```yaml\n(.*?)```", text, re.S)
    assert found, "docs/monitoring.md has no rules block marked <!-- rules: usage-limits -->"
    return found.group(1)


@pytest.fixture
def rules(tmp_path: Path) -> Path:
    if PROMTOOL is None:
        pytest.skip("promtool is not installed (Debian's prometheus package; .ci/run installs it)")
    (tmp_path / "rules.yml").write_text(documented_rules())
    (tmp_path / "tests.yml").write_text(UNIT_TESTS)
    return tmp_path


def promtool(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *args],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_documented_usage_rules_are_valid(rules: Path) -> None:
    done = promtool(rules, "check", "rules", "rules.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 2 rules found" in done.stdout


def test_the_documented_usage_rules_fire_when_they_should(rules: Path) -> None:
    done = promtool(rules, "test", "rules", "tests.yml")
    assert done.returncode == 0, done.stdout + done.stderr
