"""The page's cards and chart follow the forecast's newest snapshot, and say when that is
not the latest version (Chromium through Playwright, on a real ``serve``)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from support.serveproc import put_version, version_name
from test_page import browser, expect, open_page, pct, serve, wait_points

__all__ = ["browser", "open_page", "serve"]  # the fixtures this module uses


def snapshot(used: float, updated: datetime) -> bytes:
    body = {
        "weeklyLimits": {
            "allModels": {"resetsIn": "3 days", "percentageUsed": used},
            "sonnetOnly": {"resetsIn": "3 days", "percentageUsed": 1},
        },
        "lastUpdated": updated.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
    }
    return json.dumps(body).encode()


def test_a_snapshot_dated_ahead_gives_way_on_the_cards_and_the_chart(
    root: Path, serve: Any, open_page: Any
) -> None:
    # Four snapshots 10 minutes apart; the second's scraper clock ran 40 minutes ahead
    # (90 %). The card shows the one stored last (43 %), the chart the three in line.
    now = datetime.now(UTC).replace(microsecond=0)
    for i in range(4):
        stored = now - timedelta(minutes=35 - 10 * i)
        updated, used = stored - timedelta(seconds=5), 40 + i
        if i == 1:
            updated, used = stored + timedelta(minutes=40), 90
        put_version(root, version_name(stored, i), snapshot(used, updated))
    watched = open_page(serve().url + "/")
    page = watched.page
    wait_points(page, 3)
    expect(page.locator("#gauge-all .pct")).to_have_text(pct(43), timeout=10_000)
    assert "1 snapshot(s) dated ahead of the clock not drawn" in page.inner_text("#chart-summary")
    assert not page.is_visible("#forecast-of")
    assert watched.problems == []


def test_a_forecast_not_of_the_latest_version_says_why_under_the_cards(
    root: Path, serve: Any, open_page: Any
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    for i in range(3):
        stored = now - timedelta(minutes=30 - 10 * i)
        put_version(root, version_name(stored, i), snapshot(40 + i, stored))
    late = version_name(now - timedelta(minutes=1), 9)
    put_version(root, late, snapshot(5, now - timedelta(hours=3)))  # sent late
    watched = open_page(serve().url + "/")
    page = watched.page
    note = page.locator("#forecast-of")
    expect(note).to_contain_text(
        f"The cards and the forecast are of {version_name(now - timedelta(minutes=10), 2)}, "
        f"not the latest version: the latest version, {late}, was observed at ",
        timeout=10_000,
    )
    assert note.inner_text().endswith("before this snapshot (a snapshot sent late).")
    assert page.inner_text("#gauge-all .pct") == pct(42)
    assert watched.problems == []
