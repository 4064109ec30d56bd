"""A limit missing from the newest snapshots is held, however long ago it was last read.

The history is made as the watcher makes it (versions named by their ingest time, some
of them days old), then read by the real CLI: ``check``, ``forecast --json``. The
forecast reads the last day of versions for the rate; a limit only older versions hold
must still be held (its last reading, its age) until its window is known to have ended,
and ``check`` must keep saying it is missing.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from support import run_cli
from support.plugin_output import perfdata_problems

HISTORY = "console-usage-history"
WEEKLY = "weeklyLimits.allModels"


def iso(stamp: datetime) -> str:
    return stamp.isoformat(timespec="seconds").replace("+00:00", "Z")


def place(root: Path, payload: dict[str, Any], ingested: datetime, seq: int) -> None:
    """A version ingested at ``ingested``, written straight into the history."""
    name = f"{ingested.strftime('%Y-%m-%dT%H-%M-%S')}-{seq:08x}.json"
    (root / HISTORY).mkdir(exist_ok=True)
    (root / HISTORY / name).write_text(json.dumps(payload))


def full(observed: datetime) -> dict[str, Any]:
    return {
        "currentSession": {"resetsIn": "1 hr", "percentageUsed": 20},
        "weeklyLimits": {
            "allModels": {"resetsIn": "5 days", "percentageUsed": 95},
            "sonnetOnly": {"resetsIn": "5 days", "percentageUsed": 7},
        },
        "lastUpdated": iso(observed),
    }


def partial(observed: datetime) -> dict[str, Any]:
    payload = json.loads(
        (Path(__file__).parent / "samples" / "valid" / "partial-with-errors.json").read_text()
    )
    payload["lastUpdated"] = iso(observed)
    return payload


def history(root: Path, full_age: timedelta, partial_ages: list[timedelta]) -> datetime:
    assert run_cli(root, "init").returncode == 0
    now = datetime.now(UTC).replace(microsecond=0)
    place(root, full(now - full_age), now - full_age, 1)
    for seq, age in enumerate(partial_ages, start=2):
        place(root, partial(now - age), now - age, seq)
    return now - full_age


def forecast_limits(root: Path) -> dict[str, dict[str, Any]]:
    result = run_cli(root, "forecast", "--json")
    assert result.returncode == 0, result.stderr
    return {limit["limit"]: limit for limit in json.loads(result.stdout)["limits"]}


@pytest.mark.parametrize(
    "full_age",
    [timedelta(hours=23), timedelta(hours=25), timedelta(days=3)],
    ids=["23h", "25h", "3days"],
)
@pytest.mark.parametrize("partials", [1, 3], ids=["one-partial", "partials-each-day"])
def test_a_limit_last_read_long_ago_is_held_and_warned(
    root: Path, full_age: timedelta, partials: int
) -> None:
    ages = [timedelta(0)] if partials == 1 else [full_age - timedelta(hours=h) for h in (1, 20)]
    ages += [] if partials == 1 else [timedelta(0)]
    seen = history(root, full_age, ages)
    held = forecast_limits(root)[WEEKLY]
    assert held["percentageUsed"] == 95
    assert held["inNewest"] is False
    assert held["observedAt"].startswith(iso(seen)[:19])
    assert "extractionErrors.weeklyLimits" in held["missingReason"]

    result = run_cli(root, "check", "--usage-warning", "90")
    assert "Traceback" not in result.stderr
    line = result.stdout.strip()
    assert result.returncode == 1, line
    assert f"{WEEKLY} 95 % used (at or above 90 %)" in line
    assert "(not read for more than 15 min)" in line
    assert f"usage_{WEEKLY}=95%;90;100" in line
    assert perfdata_problems(line) == []
    only_forecast = run_cli(root, "check", "--forecast").stdout
    assert "(not read for more than 15 min)" in only_forecast


def test_after_its_reset_a_missing_limit_has_no_reading_but_still_warns(root: Path) -> None:
    # Read 6 days ago with "5 days" to go: its window has ended, its 95 % says nothing now.
    history(root, timedelta(days=6), [timedelta(0)])
    assert WEEKLY not in forecast_limits(root)
    result = run_cli(root, "--quiet", "check", "--usage-warning", "90", "--json")
    body = json.loads(result.stderr or result.stdout)
    assert body["status"] == "WARNING", body
    item = next(i for i in body["checks"] if i["name"] == f"usage_{WEEKLY}")
    assert item["status"] == "WARNING"
    assert item["value"] is None
    assert "not in the newest snapshot, last read 6.0 days before it" in item["message"]
    assert "its window has reset since" in item["message"]
    line = run_cli(root, "check", "--usage-warning", "90").stdout.strip()
    assert f"usage_{WEEKLY}=" not in line
    assert perfdata_problems(line) == []


def test_a_limit_read_again_is_no_longer_missing(root: Path) -> None:
    history(root, timedelta(days=2), [timedelta(hours=30)])
    now = datetime.now(UTC).replace(microsecond=0)
    place(root, full(now), now, 9)
    limits = forecast_limits(root)
    assert limits[WEEKLY]["inNewest"] is True
    assert run_cli(root, "check", "--usage-warning", "96").returncode == 0
