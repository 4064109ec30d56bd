"""Probes of the forecast with histories an unlucky or hostile user would have.

Each test here shows a fault of the current code (it fails until the fault is fixed), or
is marked as doubtful behaviour in its docstring. They run the real CLI in a subprocess
(or a real ``serve`` on 127.0.0.1) over versions placed by hand in a real temp folder,
named by the time each snapshot was observed, as a watcher would have stored them.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from support import run_cli
from support.serveproc import version_name

HISTORY = "console-usage-history"
FORECAST = "/api/claude/console-usage/forecast"
UTC_ZONE = {"INGESTER_CONSOLE_TIMEZONE": "UTC"}


def iso(stamp: datetime) -> str:
    return stamp.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def minute_now() -> datetime:
    return datetime.now(UTC).replace(second=0, microsecond=0)


def until_words(reset: datetime, observed: datetime) -> str:
    """``reset`` as the console's relative wording seen at ``observed``: ``2 days 3 hr 4 min``."""
    minutes = int((reset - observed).total_seconds() // 60)
    days, rest = divmod(minutes, 24 * 60)
    hours, mins = divmod(rest, 60)
    words = []
    if days:
        words.append(f"{days} days")
    if hours:
        words.append(f"{hours} hr")
    words.append(f"{mins} min")
    return " ".join(words)


def place(root: Path, observed: datetime, payload: dict[str, Any], seq: int) -> str:
    """A version holding ``payload``, named for ``observed`` (read-only, as stored)."""
    history = root / HISTORY
    history.mkdir(parents=True, exist_ok=True)
    name = version_name(observed, seq)
    path = history / name
    path.write_text(json.dumps(payload))
    path.chmod(0o444)
    return name


def weekly(observed: datetime, all_models: float, resets_in: str) -> dict[str, Any]:
    return {
        "currentSession": {"resetsIn": "4 hr 59 min", "percentageUsed": 0},
        "weeklyLimits": {
            "allModels": {"resetsIn": resets_in, "percentageUsed": all_models},
            "sonnetOnly": {"resetsIn": resets_in, "percentageUsed": 1},
        },
        "lastUpdated": iso(observed),
    }


def forecast_json(root: Path) -> dict[str, dict[str, Any]]:
    done = run_cli(root, "forecast", "--json", INGESTER_CONSOLE_TIMEZONE="UTC")
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    return {limit["limit"]: limit for limit in json.loads(done.stdout)["limits"]}


# -- a limit at 100 % for longer than the basis ----------------------------------------------


def test_a_limit_at_100_for_30_hours_says_when_it_reached_100(root: Path) -> None:
    """FAULT (minor): ``exhaustsAt`` of a limit at 100 % is the start of the 24-hour basis,
    not when it reached 100 %.

    The weekly limit was at 90 % until 30 hours ago and at 100 % since (readings every 30
    minutes over 48 hours, the reset 3 days away). docs/serve.md: "``exhaustsAt``: ... (when
    it was reached, for a limit at 100 %)"; ``ingester forecast`` says ``at the limit since
    TIME``. Both give the first reading of the last 24 hours (``_limit_forecast`` takes the
    first point at 100 % of the *basis* window), 6 hours after it was actually reached, and
    the time moves forward with every new snapshot while the limit sits at 100 %.
    """
    now = minute_now()
    reset = now + timedelta(days=3)
    reached = now - timedelta(hours=30)
    for i in range(48 * 2 + 1):
        observed = now - timedelta(hours=48) + timedelta(minutes=30 * i)
        pct = 100 if observed >= reached else 90
        place(root, observed, weekly(observed, pct, until_words(reset, observed)), i)
    limit = forecast_json(root)["weeklyLimits.allModels"]
    assert limit["percentageUsed"] == 100
    assert limit["beforeReset"] is True
    assert limit["exhaustsAt"] == iso(reached), limit
