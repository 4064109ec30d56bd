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

from support import run_cli, wait_for
from support.serveproc import ServeProcess, version_name

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


# -- a version deleted by hand under a running serve --------------------------------------------


def test_a_version_deleted_by_hand_leaves_the_served_forecast(root: Path) -> None:
    """FAULT: ``serve`` keeps answering a held limit from a version deleted by hand.

    The weekly limits were last read 30 hours ago, and that snapshot is bogus (the
    scraper misread 99 %); the one 31 hours ago read 40 %. Every snapshot since is a partial
    scrape without ``weeklyLimits``, so the forecast holds the weekly limits at their last
    reading. The operator deletes the bogus version by hand to silence the alert.
    ``ingester forecast --json`` then holds 40 % (the last reading the history holds), but
    the running ``serve`` goes on answering 99 % (and exporting it in ``/metrics``, so the
    alert rule keeps firing) until it is restarted or the limit is read again.

    docs/serve.md: ``GET .../forecast`` is "the same answer as ``ingester forecast
    --json``". ``UsageHistory._fold`` drops a reading from ``_earlier`` only when its
    version sorts before the oldest one left (retention's deletions), never when the
    version itself is gone; a version in the middle deleted by hand stays in the answer.
    """
    now = minute_now()
    reset = now + timedelta(days=4)
    first = now - timedelta(hours=31)
    second = now - timedelta(hours=30)
    place(root, first, weekly(first, 40, until_words(reset, first)), 0)
    bogus = place(root, second, weekly(second, 99, until_words(reset, second)), 1)
    for i in range(2, 40):
        observed = second + timedelta(minutes=45 * (i - 1))
        if observed > now:
            break
        partial = {
            "currentSession": {"resetsIn": "3 hr", "percentageUsed": 10},
            "lastUpdated": iso(observed),
            "isPartial": True,
            "extractionErrors": {"weeklyLimits": "selector not found"},
        }
        place(root, observed, partial, i)

    def served() -> float:
        answer = server.get(FORECAST)
        assert answer.status_code == 200, answer.text
        limits = {limit["limit"]: limit for limit in answer.json()["limits"]}
        return float(limits["weeklyLimits.allModels"]["percentageUsed"])

    with ServeProcess(root, env=UTC_ZONE) as server:
        assert served() == 99
        (root / HISTORY / bogus).unlink()
        assert forecast_json(root)["weeklyLimits.allModels"]["percentageUsed"] == 40
        # The served answer would follow within the index's one-second listing time.
        wait_for(lambda: served() == 40, 10, "serve to drop the deleted version's reading")
    assert "Traceback" not in server.log
