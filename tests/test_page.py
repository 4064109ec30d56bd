"""The usage page and its series endpoint, on a real ``ingester serve``, in headless Chromium.

The browser is Debian's ``chromium`` (installed by ``.ci/run`` where missing), driven by
Playwright for Python through ``executable_path``: Playwright's own browser download is
never used. Screenshots are saved under ``$INGESTER_TEST_ARTIFACTS`` (default: the test's
temp folder) and their paths printed.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from support import cli_env, run_cli, wait_for

from ingester.export import COLUMNS
from ingester.names import generate_version_filename

HISTORY = "console-usage-history"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# Hours before now of each version: 3 older than 7 days, 4 within 7 days but older than a
# day, 5 within the last day; none near an edge, so the counts cannot flip mid-test.
AGES_H = [240, 200, 170, 160, 100, 50, 30, 20, 10, 5, 1, 0.05]
IN_7D = 9
IN_24H = 5


# -- a history and a server ----------------------------------------------------------------


def body_for(i: int, updated: datetime, **extra: Any) -> dict[str, Any]:
    return {
        "currentSession": {"resetsIn": f"{i} hr 5 min", "percentageUsed": 10 + i * 3.5},
        "weeklyLimits": {
            "allModels": {"resetsIn": "Mon 8:59 AM", "percentageUsed": min(100, 20 + i * 4)},
            "sonnetOnly": {"resetsIn": "Thu 10:00 AM", "percentageUsed": i},
        },
        "lastUpdated": updated.isoformat().replace("+00:00", "Z"),
        **extra,
    }


def build_history(root: Path, newest_age: timedelta, **newest_extra: Any) -> list[dict[str, Any]]:
    """Versions at ``AGES_H`` (the newest one ``newest_age`` old by its lastUpdated)."""
    assert run_cli(root, "init").returncode == 0
    now = datetime.now(UTC)
    after = None
    bodies = []
    for i, hours in enumerate(AGES_H):
        ingested = now - timedelta(hours=hours)
        last = i == len(AGES_H) - 1
        updated = now - newest_age if last else ingested - timedelta(seconds=20)
        body = body_for(i, updated, **(newest_extra if last else {}))
        name = generate_version_filename(ingested, after=after)
        after = name
        (root / HISTORY / name).write_text(json.dumps(body))
        bodies.append({**body, "name": name})
    return bodies


@dataclass
class Server:
    url: str
    proc: subprocess.Popen[bytes]


def start(root: Path, *command: str, log_name: str) -> tuple[subprocess.Popen[bytes], Path]:
    log = root.parent / log_name
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ingester", "--root", str(root), *command],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=cli_env(),
        )
    return proc, log


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def serve(root: Path) -> Iterator[Any]:
    """Start ``ingester serve`` on a free loopback port; stopped after the test."""
    procs: list[subprocess.Popen[bytes]] = []

    def launch() -> Server:
        proc, log = start(root, "serve", "--listen", "127.0.0.1:0", log_name="serve.log")
        procs.append(proc)

        def listening() -> str | None:
            assert proc.poll() is None, log.read_text()
            found = re.search(r"listening on (http://127\.0\.0\.1:\d+)", log.read_text())
            return found.group(1) if found else None

        url = str(wait_for(listening, 20, "serve to listen"))
        return Server(url, proc)

    yield launch
    for proc in procs:
        stop(proc)


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


# -- the series endpoint, over HTTP --------------------------------------------------------


def test_series_rows_etag_and_range(root: Path, serve: Any) -> None:
    bodies = build_history(root, timedelta(minutes=1))
    server = serve()
    status, headers, raw = get(f"{server.url}/api/claude/console-usage/series")
    assert status == 200
    series = json.loads(raw)
    assert series["columns"] == list(COLUMNS)
    assert [row[-1] for row in series["rows"]] == [b["name"] for b in bodies]
    newest = dict(zip(COLUMNS, series["rows"][-1], strict=True))
    assert (
        newest["weeklyLimits.allModels.percentageUsed"]
        == bodies[-1]["weeklyLimits"]["allModels"]["percentageUsed"]
    )
    etag = headers["etag"]
    status, _, raw = get(f"{server.url}/api/claude/console-usage/series", {"If-None-Match": etag})
    assert (status, raw) == (304, b"")

    since = (datetime.now(UTC) - timedelta(hours=24)).strftime("%Y-%m-%dT%H:%M:%S")
    status, day_headers, raw = get(f"{server.url}/api/claude/console-usage/series?since={since}")
    assert status == 200
    assert json.loads(raw)["count"] == IN_24H
    assert day_headers["etag"] != etag

    for bad in ("last+tuesday", "0001-01-01T00:00%2B01:00"):
        status, _, raw = get(f"{server.url}/api/claude/console-usage/series?until={bad}")
        assert status == 400, bad
        assert json.loads(raw)["error"] == "InvalidTime"


def test_page_and_assets_are_served_from_the_package(root: Path, serve: Any) -> None:
    assert run_cli(root, "init").returncode == 0
    server = serve()
    status, headers, html = get(server.url + "/")
    assert status == 200
    assert headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in headers["content-security-policy"]
    assert get(server.url + "/", {"If-None-Match": headers["etag"]})[0] == 304
    # Every asset the page names is served, and none is fetched from elsewhere.
    assets = re.findall(rb'(?:src|href)="([^"]+)"', html)
    assert assets
    for asset in assets:
        target = asset.decode()
        assert not urlsplit(target).netloc, target
        if not target.startswith("page/"):
            continue  # the API link for browsers without JavaScript
        status, asset_headers, _ = get(f"{server.url}/{target}")
        assert status == 200, target
        assert asset_headers["cache-control"] == "no-cache"
    # No snapshot yet: the series is empty, not an error.
    status, _, raw = get(server.url + "/api/claude/console-usage/series")
    assert (status, json.loads(raw)["rows"]) == (200, [])


# -- in the browser ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's Chromium through Playwright; skipped with the reason when it cannot be had."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is not installed (.ci/run installs Debian's chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@dataclass
class Watched:
    """A page and what it did: console errors, page errors, requests it tried elsewhere."""

    page: Any
    problems: list[str]
    foreign: list[str]
    answers: list[tuple[str, int]]


@pytest.fixture
def open_page(browser: Any) -> Iterator[Any]:
    contexts: list[Any] = []

    def opener(url: str, width: int = 1100, height: int = 900) -> Watched:
        context = browser.new_context(
            viewport={"width": width, "height": height}, timezone_id="UTC", locale="en-GB"
        )
        contexts.append(context)
        page = context.new_page()
        watched = Watched(page, [], [], [])

        def on_console(message: Any) -> None:
            if message.type in ("error", "warning"):
                watched.problems.append(f"console {message.type}: {message.text}")

        def guard(route: Any) -> None:
            # Anything not addressed to the test server is refused and remembered.
            if urlsplit(route.request.url).hostname != "127.0.0.1":
                watched.foreign.append(route.request.url)
                route.abort()
            else:
                route.continue_()

        page.on("console", on_console)
        page.on("pageerror", lambda exc: watched.problems.append(f"page error: {exc}"))
        page.on("response", lambda r: watched.answers.append((r.url, r.status)))
        page.route("**/*", guard)
        page.goto(url)
        return watched

    yield opener
    for context in contexts:
        context.close()


def artefact_dir(tmp_path: Path) -> Path:
    base = os.environ.get("INGESTER_TEST_ARTIFACTS")
    folder = Path(base) if base else tmp_path / "artefacts"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def points(page: Any) -> int:
    return int(page.get_attribute("#chart", "data-points"))


def expect(locator: Any) -> Any:
    """Playwright's waiting assertions (they run outside the page, so its CSP allows them)."""
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(locator)


def wait_points(page: Any, count: int) -> None:
    expect(page.locator("#chart")).to_have_attribute("data-points", str(count), timeout=10_000)


def pct(value: float) -> str:
    return (str(int(value)) if float(value).is_integer() else f"{value:.1f}") + "\u00a0%"


def test_page_shows_the_newest_snapshot_and_the_history(
    root: Path, serve: Any, open_page: Any, tmp_path: Path
) -> None:
    bodies = build_history(
        root,
        timedelta(minutes=2),
        isPartial=True,
        extractionErrors={"sonnetOnly": "selector not found"},
    )
    newest = bodies[-1]
    server = serve()
    watched = open_page(server.url + "/?refresh=1")
    page = watched.page
    wait_points(page, IN_7D)  # the default range is 7 days

    assert page.inner_text("#gauge-session .pct") == pct(newest["currentSession"]["percentageUsed"])
    assert page.inner_text("#gauge-all .pct") == pct(
        newest["weeklyLimits"]["allModels"]["percentageUsed"]
    )
    assert page.inner_text("#gauge-sonnet .pct") == pct(
        newest["weeklyLimits"]["sonnetOnly"]["percentageUsed"]
    )
    assert page.inner_text("#gauge-session .resets-in") == newest["currentSession"]["resetsIn"]
    meter = page.locator("#gauge-all .bar")
    assert meter.get_attribute("aria-valuenow") == str(
        newest["weeklyLimits"]["allModels"]["percentageUsed"]
    )
    assert page.inner_text("#fresh-badge") == "Fresh"
    assert page.is_visible("#partial-badge")
    assert page.inner_text("#errors-badge") == "1 extraction error"
    assert newest["name"] in page.inner_text("#version-info")

    page.get_by_role("radio", name="24 hours", exact=True).check()
    wait_points(page, IN_24H)
    # Hovering the chart's right edge reads out the newest values (the next point is an
    # hour older, tens of pixels away at this range).
    box = page.locator("#chart .u-over").bounding_box()
    page.mouse.move(box["x"] + box["width"] - 2, box["y"] + box["height"] / 2)
    readout = page.inner_text("#readout")
    assert f"Current session {pct(newest['currentSession']['percentageUsed'])}" in readout
    sonnet = newest["weeklyLimits"]["sonnetOnly"]["percentageUsed"]
    assert f"Weekly, Sonnet only {pct(sonnet)}" in readout
    page.get_by_role("radio", name="All", exact=True).check()
    wait_points(page, len(AGES_H))

    folder = artefact_dir(tmp_path)
    page.screenshot(path=str(folder / "page-desktop.png"), full_page=True)
    phone = open_page(server.url + "/?refresh=1", width=390, height=844)
    wait_points(phone.page, IN_7D)
    # Phone width: nothing wider than the screen.
    assert phone.page.evaluate("document.documentElement.scrollWidth") <= 390
    phone.page.screenshot(path=str(folder / "page-phone.png"), full_page=True)
    print(f"screenshots: {folder / 'page-desktop.png'} {folder / 'page-phone.png'}")

    assert watched.problems + phone.problems == []
    assert watched.foreign + phone.foreign == []


def test_a_new_drop_appears_without_a_reload(
    root: Path, serve: Any, open_page: Any, tmp_path: Path
) -> None:
    build_history(root, timedelta(minutes=1))
    watcher, watch_log = start(root, "watch", log_name="watch.log")
    try:
        wait_for(
            lambda: json.loads(run_cli(root, "status", "--json").stdout)["watcher"]["running"],
            20,
            "the watcher to hold the history",
        )
        server = serve()
        watched = open_page(server.url + "/?refresh=1")
        page = watched.page
        wait_points(page, IN_7D)
        page.evaluate("window.notReloaded = true")
        # While nothing changes, each poll is answered 304.
        latest_url = server.url + "/api/claude/console-usage"
        with page.expect_response(
            lambda r: r.url == latest_url and r.status == 304, timeout=10_000
        ):
            pass

        drop = tmp_path / "drop.json"
        body = body_for(40, datetime.now(UTC))
        body["currentSession"]["percentageUsed"] = 77.5
        drop.write_text(json.dumps(body))
        submitted = run_cli(root, "submit", str(drop))
        assert submitted.returncode == 0, submitted.stderr
        expect(page.locator("#gauge-session .pct")).to_have_text("77.5\u00a0%", timeout=15_000)
        wait_points(page, IN_7D + 1)
        assert page.evaluate("window.notReloaded") is True
        assert page.inner_text("#gauge-session .resets-in") == "40 hr 5 min"
        assert watched.problems == []
        assert watched.foreign == []
    finally:
        stop(watcher)
    assert watcher.returncode == 0, watch_log.read_text()


def test_a_stale_history_shows_the_stale_badge(
    root: Path, serve: Any, open_page: Any, tmp_path: Path
) -> None:
    # 45.5 min: the page's clock comes from the Date header, whole seconds, so the age
    # it shows is 45 min whatever the rounding and however long the test takes.
    build_history(root, timedelta(minutes=45, seconds=30))
    # A damaged version is left out of the chart and said so, without breaking the page.
    damaged = generate_version_filename(datetime.now(UTC) - timedelta(hours=2))
    (root / HISTORY / damaged).write_text("{not json")
    server = serve()
    watched = open_page(server.url + "/?refresh=1")
    page = watched.page
    expect(page.locator("#fresh-badge")).to_have_attribute("data-state", "stale", timeout=10_000)
    assert page.inner_text("#fresh-badge") == "Stale"
    assert "older than 10 minutes" in page.inner_text("#freshness")
    assert "45 min ago" in page.inner_text("#freshness")
    assert not page.is_visible("#partial-badge")
    wait_points(page, IN_7D)
    assert "1 damaged version(s) not drawn" in page.inner_text("#chart-summary")
    page.screenshot(path=str(artefact_dir(tmp_path) / "page-stale.png"), full_page=True)
    assert watched.problems == []
    assert watched.foreign == []


# -- observation times and the forecast ------------------------------------------------------


def forecast_history(root: Path) -> tuple[datetime, list[datetime]]:
    """Eight snapshots observed 30 minutes apart, all stored in one second (a backfill).

    currentSession rises 10 %/h from 10 % (resets in 2 hr: before it runs out);
    allModels 4 %/h from 30 % (reaches 100 % 14 h after the newest, 34 h before its reset
    2 days on); sonnetOnly flat, then reset in the newest (one point: not enough data);
    monthly.credits flat with a reset time nobody can read (not rising).
    """
    assert run_cli(root, "init").returncode == 0
    stored = datetime.now(UTC).replace(microsecond=0)
    last = stored - timedelta(minutes=1)
    times = [last - timedelta(minutes=30 * (7 - i)) for i in range(8)]
    after = None
    for i, updated in enumerate(times):
        body = {
            "currentSession": {"resetsIn": "2 hr", "percentageUsed": 10 + 5 * i},
            "weeklyLimits": {
                "allModels": {"resetsIn": "2 days", "percentageUsed": 30 + 2 * i},
                "sonnetOnly": {"resetsIn": "2 days", "percentageUsed": 1 if i == 7 else 20},
            },
            "monthly": {"credits": {"resetsIn": "at some point", "percentageUsed": 3}},
            "lastUpdated": updated.isoformat().replace("+00:00", "Z"),
        }
        name = generate_version_filename(stored, after=after)
        after = name
        (root / HISTORY / name).write_text(json.dumps(body))
    names = sorted(p.name for p in (root / HISTORY).glob("2*.json"))
    assert len({n[:19] for n in names}) == 1  # one ingest second for all eight
    return last, times


def iso_ms(stamp: datetime) -> str:
    return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def test_backfilled_versions_draw_at_their_own_times_with_the_forecast(
    root: Path, serve: Any, open_page: Any, tmp_path: Path
) -> None:
    last, times = forecast_history(root)
    server = serve()
    watched = open_page(server.url + "/?refresh=1")
    page = watched.page
    chart = page.locator("#chart")
    for label in ("24 hours", "7 days", "All"):
        page.get_by_role("radio", name=label, exact=True).check()
        wait_points(page, 8)
        # One point per snapshot, each at its own lastUpdated (not eight at one second).
        expect(chart).to_have_attribute("data-distinct-times", "8")
        assert chart.get_attribute("data-first") == iso_ms(times[0])
        assert chart.get_attribute("data-last") == iso_ms(times[-1])
    summary = page.inner_text("#chart-summary")
    assert "8 snapshots" in summary

    def day_time(stamp: datetime) -> str:
        return stamp.strftime("%a %H:%M")  # en-GB, UTC: the page's context

    weekly = page.locator("#gauge-all .forecast")
    expect(weekly).to_have_text(
        f"at this rate 100\u00a0% by {day_time(last + timedelta(hours=14))}, 34 h before the "
        f"reset ({day_time(last + timedelta(days=2))})",
        timeout=10_000,
    )
    assert weekly.get_attribute("data-verdict") == "exhausts"
    session = page.locator("#gauge-session .forecast")
    assert session.inner_text() == "resets before the limit"
    assert session.get_attribute("data-verdict") == "resets"
    assert page.inner_text("#gauge-sonnet .forecast") == "not enough data"
    # A window the three cards do not know gets a card of its own, by its dotted path.
    extra = page.locator('.gauge[data-key="monthly.credits"]')
    expect(extra).to_be_visible()
    assert extra.locator("h3").inner_text() == "monthly.credits"
    assert extra.locator(".forecast").inner_text() == "not rising"
    # Dashed projections for the two rising limits; the resets (two instants) marked.
    assert chart.get_attribute("data-projections") == "2"
    assert chart.get_attribute("data-resets") == "2"
    page.get_by_role("radio", name="24 hours", exact=True).check()
    wait_points(page, 8)
    page.screenshot(path=str(artefact_dir(tmp_path) / "page-forecast.png"), full_page=True)
    assert watched.problems == []
    assert watched.foreign == []


def test_series_by_observation_time(root: Path, serve: Any) -> None:
    last, times = forecast_history(root)
    server = serve()
    base = f"{server.url}/api/claude/console-usage/series"
    # Stored now, observed hours ago: by ingest time, all eight are newer than an hour ago.
    since = (last - timedelta(hours=1, seconds=30)).strftime("%Y-%m-%dT%H:%M:%SZ")
    status, _, raw = get(f"{base}?since={since}")
    assert (status, json.loads(raw)["count"]) == (200, 8)
    status, headers, raw = get(f"{base}?since={since}&by=lastUpdated")
    body = json.loads(raw)
    assert (status, body["count"], body["by"]) == (200, 3, "lastUpdated")
    at = body["columns"].index("lastUpdated")
    assert [row[at] for row in body["rows"]] == [iso_ms(t) for t in times[-3:]]
    status, _, _ = get(f"{base}?since={since}&by=lastUpdated", {"If-None-Match": headers["etag"]})
    assert status == 304
    until = (times[2] + timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    status, _, raw = get(f"{base}?until={until}&by=lastUpdated")
    assert [row[at] for row in json.loads(raw)["rows"]] == [iso_ms(t) for t in times[:3]]
    status, _, raw = get(f"{base}?by=storedAt")
    assert status == 400 and json.loads(raw)["error"] == "InvalidBy"
