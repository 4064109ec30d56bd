"""The usage page and its series endpoint, on a real ``ingester serve``, in headless Chromium.

The browser is Debian's ``chromium`` (installed by ``.ci/run`` where missing), driven by
Playwright for Python through ``executable_path``: Playwright's own browser download is
never used. Screenshots are saved under ``$INGESTER_TEST_ARTIFACTS`` (default: the test's
temp folder) and their paths printed.
"""

from __future__ import annotations

import contextlib
import http.client
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
from support.capabilities import AS_OTHER, other_user_problem, others_folder, run_as_other
from support.serveproc import ServeProcess

from ingester.history.names import generate_version_filename
from ingester.usage.export import COLUMNS
from ingester.usage.forecast import MAX_LIMIT_NAME

HISTORY = "console-usage-history"
SERIES = "/api/claude/console-usage/series"
WHY_NOT_OTHER = other_user_problem()
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

    def launch(listen: str = "127.0.0.1:0") -> Server:
        proc, log = start(root, "serve", "--listen", listen, log_name="serve.log")
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

    # A start within a version's second takes it, as export --since does: names carry
    # the second, so its 14 s stands for 14.5 s.
    newest = bodies[-1]["name"]
    within = newest[:10] + "T" + newest[11:19].replace("-", ":") + ".5Z"
    status, _, raw = get(f"{server.url}/api/claude/console-usage/series?since={within}")
    assert [row[-1] for row in json.loads(raw)["rows"]] == [newest], within
    exported = run_cli(root, "export", "--format", "jsonl", "--since", within)
    assert [json.loads(line)["version"] for line in exported.stdout.splitlines()] == [newest]

    for bad in ("last+tuesday", "0001-01-01T00:00%2B01:00"):
        status, _, raw = get(f"{server.url}/api/claude/console-usage/series?until={bad}")
        assert status == 400, bad
        assert json.loads(raw)["error"] == "InvalidTime"
    # Bounds the wrong way round select nothing by construction: refused, as export does.
    window = "since=2026-12-06T00:00:00Z&until=2026-12-01T00:00:00Z"
    status, _, raw = get(f"{server.url}/api/claude/console-usage/series?{window}")
    assert status == 400
    assert json.loads(raw) == {
        "error": "InvalidRange",
        "message": "since 2026-12-06T00:00:00.000Z is after until 2026-12-01T00:00:00.000Z",
        "example": json.loads(raw)["example"],
    }
    backwards = run_cli(root, "export", "--since", "2026-12-06", "--until", "2026-12-01")
    assert backwards.returncode == 2
    assert "Error: --since 2026-12-06T00:00:00.000Z is after --until 2026-12-01T00:00:00.000Z" in (
        backwards.stderr
    )


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


def get_with_lines(url: str, lines: list[tuple[str, str]]) -> int:
    """The status of a GET of ``url`` sending ``lines`` as they are, a name repeated on
    several lines where it is (which ``urllib`` cannot)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.netloc, timeout=10)
    try:
        conn.putrequest("GET", parts.path + (f"?{parts.query}" if parts.query else ""))
        for name, value in lines:
            conn.putheader(name, value)
        conn.endheaders()
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def test_a_tag_on_the_second_if_none_match_line_answers_304_on_every_page_route(
    root: Path, serve: Any
) -> None:
    """A proxy may send a list field on several lines: they are one field (RFC 9110 5.3),
    so the current tag on the second line is as good as on the first, for the page, its
    series and its assets as for the API; two ``If-Modified-Since`` lines are no date."""
    build_history(root, timedelta(minutes=1))
    server = serve()
    status, headers, html = get(server.url + "/")
    asset = next(a.decode() for a in re.findall(rb'(?:src|href)="(page/[^"]+)"', html))
    for url in (
        server.url + "/",
        f"{server.url}/api/claude/console-usage/series",
        f"{server.url}/{asset}",
    ):
        status, headers, _ = get(url)
        assert status == 200, url
        lines = [("If-None-Match", '"other"'), ("If-None-Match", headers["etag"])]
        assert get_with_lines(url, lines) == 304, url
        assert get_with_lines(url, [("If-None-Match", '"other"')]) == 200, url
    modified = get(f"{server.url}/{asset}")[1]["last-modified"]
    assert get_with_lines(f"{server.url}/{asset}", [("If-Modified-Since", modified)]) == 304
    earlier = "Wed, 01 Jan 2020 00:00:00 GMT"
    dates = [("If-Modified-Since", modified), ("If-Modified-Since", earlier)]
    assert get_with_lines(f"{server.url}/{asset}", dates) == 200


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

    def opener(
        url: str,
        width: int = 1100,
        height: int = 900,
        locale: str = "en-GB",
        init_script: str | None = None,
        timezone: str = "UTC",
    ) -> Watched:
        context = browser.new_context(
            viewport={"width": width, "height": height}, timezone_id=timezone, locale=locale
        )
        contexts.append(context)
        page = context.new_page()
        if init_script is not None:
            page.add_init_script(init_script)
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


def pick_range(page: Any, label: str) -> None:
    """Pick the chart's range as a user would: once the page has shown its first answer
    (``<main aria-busy="false">``). Until then the cards above the picker fill in and
    push it down, and a click that lands mid-move misses it."""
    expect(page.locator("main")).to_have_attribute("aria-busy", "false", timeout=10_000)
    page.get_by_role("radio", name=label, exact=True).check()


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
    # The reset in the page's one format and zone, with how far off it is; the console's
    # own words ("11 hr 5 min") in the title.
    session_resets = page.locator("#gauge-session .resets")
    resets_at = datetime.fromisoformat(newest["lastUpdated"].replace("Z", "+00:00")) + timedelta(
        hours=11, minutes=5
    )
    expect(session_resets).to_have_text(f"resets {resets_at:%a %H:%M} (in 11 h)", timeout=10_000)
    assert session_resets.get_attribute("title") == "the console says \u201c11 hr 5 min\u201d"
    assert "UTC" in page.inner_text("#zone-note")
    meter = page.locator("#gauge-all .bar")
    assert meter.get_attribute("aria-valuenow") == str(
        newest["weeklyLimits"]["allModels"]["percentageUsed"]
    )
    assert page.inner_text("#fresh-badge") == "Fresh"
    assert page.is_visible("#partial-badge")
    assert page.inner_text("#errors-badge") == "1 extraction error"
    assert newest["name"] in page.inner_text("#version-info")

    pick_range(page, "24 hours")
    wait_points(page, IN_24H)
    # Hovering the chart's right edge reads out the newest values (the next point is an
    # hour older, tens of pixels away at this range).
    box = page.locator("#chart .u-over").bounding_box()
    page.mouse.move(box["x"] + box["width"] - 2, box["y"] + box["height"] / 2)
    readout = page.inner_text("#readout")
    assert f"Current session {pct(newest['currentSession']['percentageUsed'])}" in readout
    sonnet = newest["weeklyLimits"]["sonnetOnly"]["percentageUsed"]
    assert f"Weekly, Sonnet only {pct(sonnet)}" in readout
    pick_range(page, "All")
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
        expect(page.locator("#gauge-session .resets")).to_have_text(
            re.compile(r"^resets \w{3} \d\d:\d\d \(in 40 h\)$"), timeout=10_000
        )
        assert watched.problems == []
        assert watched.foreign == []
    finally:
        stop(watcher)
    assert watcher.returncode == 0, watch_log.read_text()


def _open_on_every_version(root: Path, serve: Any, open_page: Any) -> tuple[Any, Any, Any]:
    """A history of every age in AGES_H, served, open in a page polling every second with
    the whole range drawn: (the versions' bodies, the server, the watched page)."""
    bodies = build_history(root, timedelta(minutes=1))
    server = serve()
    watched = open_page(server.url + "/?refresh=1")
    pick_range(watched.page, "All")
    wait_points(watched.page, len(AGES_H))
    return bodies, server, watched


def test_an_open_page_follows_retention_deleting_old_versions(
    root: Path, serve: Any, open_page: Any
) -> None:
    # The newest version stays the same; what changes is how many are held: the count
    # and the chart follow without a reload.
    bodies, _server, watched = _open_on_every_version(root, serve, open_page)
    page = watched.page
    info = page.locator("#version-info")
    expect(info).to_contain_text(f"Version {len(AGES_H)} of {len(AGES_H)}")
    done = run_cli(root, "--max-versions", str(IN_24H), "--retention-days", "1", "cleanup")
    assert done.returncode == 0, done.stderr
    expect(info).to_contain_text(f"Version {IN_24H} of {IN_24H}", timeout=10_000)
    wait_points(page, IN_24H)
    assert bodies[-1]["name"] in info.inner_text()
    assert watched.problems == []


def test_an_open_page_follows_a_history_emptied_across_a_restart(
    root: Path, serve: Any, open_page: Any
) -> None:
    bodies, server, watched = _open_on_every_version(root, serve, open_page)
    page = watched.page
    stop(server.proc)
    for body in bodies:
        (root / HISTORY / body["name"]).unlink()
    serve(server.url.removeprefix("http://"))
    expect(page.locator("#fresh-badge")).to_have_text("No data", timeout=15_000)
    wait_points(page, 0)
    expect(page.locator("#version-info")).to_have_text("")
    expect(page.locator("#connection")).to_be_hidden()
    # The browser reports the answers the server gave while the history was empty (404)
    # and those it could not get while the server was down; nothing else went wrong.
    assert [p for p in watched.problems if not re.search(r"404|Failed to load", p)] == []


def test_a_forecast_the_server_fails_leaves_the_rest_shown_and_the_page_not_busy(
    root: Path, serve: Any, browser: Any
) -> None:
    """A forecast the server fails (500) is said as an answer, not as a server out of
    reach; the newest snapshot and the chart are still shown; and ``<main>``, busy while
    the first answer fills in, is not left hidden from assistive technology as busy."""
    build_history(root, timedelta(minutes=2))
    server = serve()
    context = browser.new_context(timezone_id="UTC", locale="en-GB")
    try:
        page = context.new_page()
        page.route(
            "**/api/claude/console-usage/forecast",
            lambda route: route.fulfill(status=500, content_type="application/json", body="{}"),
        )
        page.goto(server.url + "/?refresh=1")
        expect(page.locator("#connection")).to_have_text(
            "The server answered 500 for the forecast; retrying.", timeout=10_000
        )
        expect(page.locator("main")).to_have_attribute("aria-busy", "false", timeout=10_000)
        expect(page.locator("#gauge-session .pct")).to_contain_text("%")
        wait_points(page, IN_7D)
    finally:
        context.close()


def test_a_server_that_holds_the_pages_requests_is_said_out_of_reach(
    root: Path, serve: Any, open_page: Any
) -> None:
    """A server (or a proxy) that takes the page's requests and never answers: each
    request gives up after 15 s and the page says the server is out of reach, where it
    sat on its last look, "Fresh", for as long as the requests were held. Once answers
    come again the line goes."""
    build_history(root, timedelta(minutes=2))
    server = serve()
    watched = open_page(server.url + "/?refresh=1")
    page = watched.page
    expect(page.locator("#fresh-badge")).to_have_attribute("data-state", "fresh", timeout=10_000)
    held: list[Any] = []

    def hold(route: Any) -> None:
        held.append(route)  # taken, never answered

    page.route("**/api/**", hold)
    expect(page.locator("#connection")).to_have_text(
        "Cannot reach the server (no answer in 15 s); retrying.", timeout=45_000
    )
    page.unroute("**/api/**")
    for route in held:
        with contextlib.suppress(Exception):  # the page gave up on it already
            route.abort()
    expect(page.locator("#connection")).to_be_hidden(timeout=30_000)
    assert watched.foreign == []


RECORD_DELAYS = """
(() => {
  window.__delays = [];
  const later = window.setTimeout;
  window.setTimeout = function (callback, delay, ...rest) {
    window.__delays.push(Number(delay) || 0);
    return later.call(this, callback, delay, ...rest);
  };
})();
"""


def test_a_refresh_beyond_a_day_is_read_as_a_day(root: Path, serve: Any, open_page: Any) -> None:
    """``?refresh=N`` past what setTimeout's 32 bits hold (about 24.8 days) would fire at
    once, and the page would ask the server as fast as it answers: N is read as at most
    a day."""
    build_history(root, timedelta(minutes=2))
    server = serve()
    watched = open_page(server.url + "/?refresh=2592000", init_script=RECORD_DELAYS)
    page = watched.page
    expect(page.locator("#fresh-badge")).to_have_attribute("data-state", "fresh", timeout=10_000)
    wait_for(lambda: 86_400_000 in page.evaluate("window.__delays"), 10, "the next look set")
    assert max(page.evaluate("window.__delays")) <= 2**31 - 1


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


def test_a_damaged_newest_version_is_said_and_the_rest_still_shown(
    root: Path, serve: Any, open_page: Any
) -> None:
    # The server answers 502 for the latest (the version is damaged): the page must not
    # call that an unreachable server and show nothing, while the forecast and the chart
    # have every readable version to go by.
    bodies = build_history(root, timedelta(minutes=2))
    damaged = generate_version_filename(datetime.now(UTC), after=bodies[-1]["name"])
    (root / HISTORY / damaged).write_bytes(b"\x00\xff")
    server = serve()
    watched = open_page(server.url + "/?refresh=1")
    page = watched.page
    expect(page.locator("#fresh-badge")).to_have_text("Damaged", timeout=10_000)
    assert f"The newest version cannot be read: version {damaged} is damaged" in page.inner_text(
        "#freshness"
    )
    wait_points(page, IN_7D)
    assert "1 damaged version(s) not drawn" in page.inner_text("#chart-summary")
    assert not page.is_visible("#connection")
    # The cards hold the newest readable reading (the forecast's).
    newest = bodies[-1]
    assert page.inner_text("#gauge-session .pct") == pct(newest["currentSession"]["percentageUsed"])
    # The browser itself reports the 502 it was answered; nothing else went wrong.
    assert [p for p in watched.problems if "502" not in p] == []
    assert watched.foreign == []


def newest_with_last_updated(root: Path, updated: object) -> str:
    """A readable history, then a newest version whose lastUpdated is ``updated`` (put in
    by hand, or adopted from the original's history: the judge would refuse it)."""
    build_history(root, timedelta(minutes=2))
    name = generate_version_filename(datetime.now(UTC))
    body = {"currentSession": {"percentageUsed": 10, "resetsIn": "2 hr"}, "lastUpdated": updated}
    (root / HISTORY / name).write_text(json.dumps(body))
    return name


def test_a_newest_last_updated_the_server_reads_as_no_time_is_shown_as_such_and_stale(
    root: Path, serve: Any, open_page: Any
) -> None:
    """The API answers ``ageMinutes: null`` and ``isStale: true`` for a lastUpdated that
    is no date-time; the page agrees, never a date of the browser's own reading (it
    reads the number 5 as a day in 2001)."""
    name = newest_with_last_updated(root, 5)
    server = serve()
    answer = json.loads(get(server.url + "/api/claude/console-usage")[2])
    assert answer["versionInfo"]["filename"] == name
    assert answer["ageMinutes"] is None and answer["isStale"] is True
    watched = open_page(server.url + "/?refresh=1")
    page = watched.page
    expect(page.locator("#fresh-badge")).to_have_attribute("data-state", "stale", timeout=10_000)
    freshness = page.inner_text("#freshness")
    assert freshness.startswith("Last updated an unreadable time (?)"), freshness
    assert watched.problems == []
    assert watched.foreign == []


def test_a_newest_last_updated_without_an_offset_is_read_as_utc_as_the_server_reads_it(
    root: Path, serve: Any, open_page: Any
) -> None:
    """A lastUpdated naming no offset is UTC to the server (``ageMinutes``, ``isStale``,
    health); a browser an hour east of UTC must not read it as its own time, an hour
    older, and call fresh data stale."""
    taken = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=90)
    newest_with_last_updated(root, taken.strftime("%Y-%m-%dT%H:%M:%S"))
    server = serve()
    answer = json.loads(get(server.url + "/api/claude/console-usage")[2])
    assert answer["isStale"] is False and answer["ageMinutes"] < 10
    watched = open_page(server.url + "/?refresh=1", timezone="Europe/Berlin")
    page = watched.page
    expect(page.locator("#fresh-badge")).to_have_attribute("data-state", "fresh", timeout=10_000)
    freshness = page.inner_text("#freshness")
    assert freshness.endswith(" min ago)."), freshness
    assert " h " not in freshness, freshness
    assert watched.problems == []
    assert watched.foreign == []


def test_a_snapshot_dated_days_ahead_is_left_out_of_the_chart_as_of_the_cards(
    root: Path, serve: Any, open_page: Any
) -> None:
    # A version stored and observed two days ahead (a clock set wrong): the cards and the
    # forecast leave it out, so the chart must too, or its peak would contradict them.
    bodies = build_history(root, timedelta(minutes=2))
    ahead = datetime.now(UTC) + timedelta(days=2)
    body = body_for(0, ahead)
    body["currentSession"]["percentageUsed"] = 90
    name = generate_version_filename(ahead, after=bodies[-1]["name"])
    (root / HISTORY / name).write_text(json.dumps(body))
    server = serve()
    watched = open_page(server.url + "/?refresh=1")
    page = watched.page
    wait_points(page, IN_7D)
    summary = page.inner_text("#chart-summary")
    assert "1 snapshot(s) dated ahead of the clock not drawn" in summary, summary
    assert "peaked at 90" not in summary, summary
    newest = bodies[-1]
    assert page.inner_text("#gauge-session .pct") == pct(newest["currentSession"]["percentageUsed"])
    assert watched.problems == []


# -- observation times and the forecast ------------------------------------------------------


def forecast_history(root: Path) -> tuple[datetime, list[datetime]]:
    """Eight snapshots observed 30 minutes apart, all stored in one second (a backfill).

    currentSession rises 10 %/h from 10 % (resets in 2 hr: before it runs out);
    allModels 4 %/h from 30 % (reaches 100 % 14 h after the newest, 34 h before its reset
    2 days on); sonnetOnly flat, then reset in the newest, its reset time moved on (one point: not
    enough data);
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
                # Its reset in the newest moves the reset time on, as the console's does.
                "sonnetOnly": {
                    "resetsIn": "7 days" if i == 7 else "2 days",
                    "percentageUsed": 1 if i == 7 else 20,
                },
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
        pick_range(page, label)
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
    # Dashed projections for the two rising limits; the resets (three instants: the
    # session's, the weekly limits', and sonnetOnly's next one) marked.
    assert chart.get_attribute("data-projections") == "2"
    assert chart.get_attribute("data-resets") == "3"
    pick_range(page, "24 hours")
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


# -- partial scrapes, clocks, gaps and the reset marks -----------------------------------------


@pytest.mark.skipif(WHY_NOT_OTHER is not None, reason=WHY_NOT_OTHER or "")
def test_a_version_the_series_could_not_read_is_drawn_once_it_can() -> None:
    """Served by another user, one version (mode 0) is skipped as unreadable; once its mode
    is put right the same request with the tag it was given gets the row, not a 304
    that keeps it out until some other version is stored."""
    with others_folder("ingester-series-unreadable-") as root:
        assert run_as_other(root, "init").returncode == 0
        now = datetime.now(UTC) - timedelta(minutes=30)
        names = []
        for i in range(3):
            body = body_for(i, now + timedelta(minutes=i))
            names.append(generate_version_filename(now + timedelta(minutes=i)))
            (root / HISTORY / names[-1]).write_text(json.dumps(body))
        unreadable = root / HISTORY / names[1]
        unreadable.chmod(0)
        with ServeProcess(root, wrapper=tuple(AS_OTHER)) as server:
            first = server.get(SERIES)
            assert first.status_code == 200, first.text
            assert first.json()["count"] == 2
            [skipped] = first.json()["skipped"]
            assert skipped["version"] == names[1] and "unreadable" in skipped["reason"]
            still = server.get(SERIES, headers={"If-None-Match": first.headers["etag"]})
            assert still.status_code == 304  # nothing changed: still one it cannot read
            unreadable.chmod(0o644)
            after = server.get(SERIES, headers={"If-None-Match": first.headers["etag"]})
            assert after.status_code == 200, after.headers
            assert (after.json()["count"], after.json()["skipped"]) == (3, [])
            again = server.get(SERIES, headers={"If-None-Match": after.headers["etag"]})
            assert again.status_code == 304
            assert server.stop() == 0


def test_a_damaged_version_put_right_from_a_backup_is_drawn_without_a_restart(root: Path) -> None:
    """troubleshooting.md's repair for a damaged version: its file restored from a backup
    (``cp`` writes over it in place, the names stay the same). The same request with the
    tag it was given then gets the row, not a 304 that keeps it out until a restart."""
    assert run_cli(root, "init").returncode == 0
    now = datetime.now(UTC) - timedelta(minutes=30)
    names = [generate_version_filename(now + timedelta(minutes=i)) for i in range(3)]
    for i, name in enumerate(names):
        (root / HISTORY / name).write_text(json.dumps(body_for(i, now + timedelta(minutes=i))))
    damaged = root / HISTORY / names[1]
    good = damaged.read_bytes()
    damaged.write_bytes(b"{damaged")
    with ServeProcess(root) as server:
        first = server.get(SERIES)
        assert first.json()["count"] == 2
        [skipped] = first.json()["skipped"]
        assert skipped["version"] == names[1] and "not JSON" in skipped["reason"]
        still = server.get(SERIES, headers={"If-None-Match": first.headers["etag"]})
        assert still.status_code == 304  # nothing changed: still damaged
        damaged.write_bytes(good)
        after = server.get(SERIES, headers={"If-None-Match": first.headers["etag"]})
        assert after.status_code == 200, after.headers
        assert (after.json()["count"], after.json()["skipped"]) == (3, [])
        again = server.get(SERIES, headers={"If-None-Match": after.headers["etag"]})
        assert again.status_code == 304


def test_the_series_tag_changes_with_the_console_time_zone(root: Path) -> None:
    """troubleshooting.md's fix for reset times hours off: set ``--console-timezone`` and
    restart. The rows' ``resetsAt`` of a "Mon 8:59 AM" wording then differ, so the tag a
    page kept from before must not get a 304 that keeps the old reset marks."""
    assert run_cli(root, "init").returncode == 0
    now = datetime.now(UTC) - timedelta(minutes=30)
    for i in range(2):
        name = generate_version_filename(now + timedelta(minutes=i))
        (root / HISTORY / name).write_text(json.dumps(body_for(i, now + timedelta(minutes=i))))
    column = COLUMNS.index("weeklyLimits.allModels.resetsAt")
    with ServeProcess(root, env={"INGESTER_CONSOLE_TIMEZONE": "America/New_York"}) as server:
        before = server.get(SERIES)
        assert before.status_code == 200, before.text
        assert server.stop() == 0
    with ServeProcess(root, env={"INGESTER_CONSOLE_TIMEZONE": "UTC"}) as server:
        after = server.get(SERIES, headers={"If-None-Match": before.headers["etag"]})
        assert after.status_code == 200, after.headers
        assert after.json()["rows"][0][column] != before.json()["rows"][0][column]
        again = server.get(SERIES, headers={"If-None-Match": after.headers["etag"]})
        assert again.status_code == 304
        assert server.stop() == 0


def store(root: Path, snapshots: list[tuple[datetime, dict[str, Any]]]) -> None:
    """A new history of ``snapshots``, each ``(lastUpdated, body)``, stored at that time."""
    assert run_cli(root, "init").returncode == 0
    after = None
    for at, body in snapshots:
        after = generate_version_filename(at, after=after)
        (root / HISTORY / after).write_text(json.dumps({**body, "lastUpdated": iso_ms(at)}))


def test_a_run_out_within_the_hour_a_reset_is_worded_to_is_said_about_when_it_resets(
    root: Path, serve: Any, open_page: Any
) -> None:
    # The session rises 20 %/h to 50 % with its reset "2 hr" away (2 to 3 hours): 100 %
    # in 2.5 h falls within that hour, so which comes first is not known. The card must
    # not say "resets before the limit"; it says what `ingester forecast` says.
    newest = (datetime.now(UTC) - timedelta(minutes=1)).replace(second=0, microsecond=0)
    store(
        root,
        [
            (
                newest - timedelta(minutes=10 * (12 - i)),
                {"currentSession": {"resetsIn": "2 hr", "percentageUsed": 10 + 40 * i / 12}},
            )
            for i in range(13)
        ],
    )
    day_time = "%a %H:%M"  # en-GB, UTC: the page's context
    words = (
        f"at this rate 100 % by {(newest + timedelta(hours=2.5)).strftime(day_time)}, "
        f"about when it resets ({(newest + timedelta(hours=2)).strftime(day_time)} "
        "at the earliest)"
    )
    server = serve()
    page = open_page(server.url + "/").page
    wait_points(page, 13)
    card = page.locator("#gauge-session")
    expect(card.locator(".forecast")).to_have_text(words.replace(" %", "\u00a0%"), timeout=10_000)
    assert card.locator(".forecast").get_attribute("data-verdict") == "exhausts"


def test_a_slow_rise_and_a_reset_over_a_year_ahead_are_not_put_in_an_order(
    root: Path, serve: Any, open_page: Any
) -> None:
    # The session rises 0.009 %/h (100 % past the year a projection reaches) and resets
    # "390 days" ahead: which comes first is not known, so the card does not say "resets
    # before the limit"; it says what `ingester forecast` says.
    newest = (datetime.now(UTC) - timedelta(minutes=1)).replace(second=0, microsecond=0)
    store(
        root,
        [
            (
                newest - timedelta(hours=2 * (12 - i)),
                {"currentSession": {"resetsIn": "390 days", "percentageUsed": 10 + 0.018 * i}},
            )
            for i in range(13)
        ],
    )
    server = serve()
    page = open_page(server.url + "/").page
    wait_points(page, 13)
    words = page.locator("#gauge-session .forecast")
    expect(words).to_have_text(
        re.compile(
            "^100\u00a0% not within a year; whether before or after the reset \\(.+ at the "
            "earliest\\) is not known$"
        ),
        timeout=10_000,
    )
    assert words.get_attribute("data-verdict") == "unknown"


def test_a_partial_snapshot_keeps_the_weekly_cards_and_their_projection(
    root: Path, serve: Any, open_page: Any, tmp_path: Path
) -> None:
    # Six full snapshots 30 minutes apart (allModels rising 4 %/h), then one without
    # weeklyLimits, as tests/samples/valid/partial-with-errors.json has it.
    now = datetime.now(UTC).replace(microsecond=0)
    full = [
        (
            now - timedelta(minutes=5 + 30 * (5 - i)),
            {
                "currentSession": {"resetsIn": "3 hr", "percentageUsed": 10 + i},
                "weeklyLimits": {
                    "allModels": {"resetsIn": "2 days", "percentageUsed": 70 + 2 * i},
                    "sonnetOnly": {"resetsIn": "2 days", "percentageUsed": 4},
                },
            },
        )
        for i in range(6)
    ]
    partial = {
        "currentSession": {"resetsIn": "3 hr", "percentageUsed": 16},
        "isPartial": True,
        "extractionErrors": {"weeklyLimits": "selector 'Weekly limits' not found"},
    }
    store(root, [*full, (now - timedelta(minutes=1), partial)])
    server = serve()
    watched = open_page(server.url + "/?refresh=1")
    page = watched.page
    wait_points(page, 7)
    weekly = page.locator("#gauge-all")
    expect(weekly.locator(".pct")).to_have_text(pct(80), timeout=10_000)
    held = weekly.locator(".held")
    expect(held).to_be_visible()
    assert re.fullmatch(
        r"last read [56] min ago; not in the newest snapshot "
        r"\(extractionErrors\.weeklyLimits: selector 'Weekly limits' not found\)",
        held.inner_text(),
    ), held.inner_text()
    assert weekly.get_attribute("data-held") == "true"
    assert weekly.locator(".resets").inner_text().startswith("resets ")
    assert weekly.locator(".forecast").inner_text().startswith("at this rate 100\u00a0% by ")
    assert page.inner_text("#gauge-sonnet .pct") == pct(4)
    assert page.is_visible("#gauge-sonnet .held")
    session = page.locator("#gauge-session")
    assert session.locator(".pct").inner_text() == pct(16)
    assert session.get_attribute("data-held") == "false"
    assert not session.locator(".held").is_visible()
    # The weekly projections are still drawn, from their last reading, with the session's.
    assert page.get_attribute("#chart", "data-projections") == "3"
    page.screenshot(path=str(artefact_dir(tmp_path) / "page-partial.png"), full_page=True)
    assert watched.problems == []


def test_a_card_shows_one_reading_when_the_version_stored_last_was_observed_first(
    root: Path, serve: Any, open_page: Any
) -> None:
    # 60 % and 70 %, observed 40 and 20 minutes ago, then a snapshot observed three hours
    # ago stored last (a scraper sending what it had queued): 20 %, resetting in 5 hr.
    # The forecast goes by the newest observation, 70 %: rising 18.75 %/h over the three
    # (the median of the slopes 40/2.333 h, 50/2.667 h and 10/0.333 h), so 100 % 96 min
    # after it, 1 h 24 min before its reset (3 hr after it). The card must say 70 %
    # beside those words, as `ingester forecast` does, not the 20 % stored last.
    now = (datetime.now(UTC) - timedelta(minutes=1)).replace(second=30, microsecond=0)

    def session(used: float, resets_in: str) -> dict[str, Any]:
        return {"currentSession": {"resetsIn": resets_in, "percentageUsed": used}}

    store(
        root,
        [
            (now - timedelta(minutes=40), session(60, "3 hr 20 min")),
            (now - timedelta(minutes=20), session(70, "3 hr")),
        ],
    )
    queued = now - timedelta(hours=3)
    last = max(p.name for p in (root / HISTORY).glob("2*.json"))
    name = generate_version_filename(now, after=last)
    (root / HISTORY / name).write_text(
        json.dumps({**session(20, "5 hr"), "lastUpdated": iso_ms(queued)})
    )
    newest = now - timedelta(minutes=20)
    day_time = "%a %H:%M"  # en-GB, UTC: the page's context, and the command's below
    words = (
        f"at this rate 100 % by {(newest + timedelta(minutes=96)).strftime(day_time)}, "
        f"1 h 24 min before the reset ({(newest + timedelta(hours=3)).strftime(day_time)})"
    )
    server = serve()
    watched = open_page(server.url + "/")
    page = watched.page
    wait_points(page, 3)
    card = page.locator("#gauge-session")
    expect(card.locator(".forecast")).to_have_text(words.replace(" %", "\u00a0%"), timeout=10_000)
    assert card.locator(".pct").inner_text() == pct(70)
    assert card.get_attribute("data-held") == "false"
    shown = run_cli(root, "forecast", INGESTER_CONSOLE_TIMEZONE="UTC")
    assert shown.returncode == 0, shown.stderr
    row = shown.stdout.splitlines()[2]
    assert row.split()[:3] == ["currentSession", "70", "%"], shown.stdout
    assert row.endswith(words), shown.stdout
    assert watched.problems == []


def test_limits_whose_names_differ_only_beyond_ascii_get_a_card_each(
    root: Path, serve: Any, open_page: Any
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    extras = {"op\u00fcs": 12, "op\u00e4s": 78, "a_b": 30, "a b": 40}
    body = {
        "currentSession": {"resetsIn": "3 hr", "percentageUsed": 10},
        "weekly": {name: {"resetsIn": "2 days", "percentageUsed": v} for name, v in extras.items()},
    }
    store(root, [(now - timedelta(minutes=31), body), (now - timedelta(minutes=1), body)])
    server = serve()
    watched = open_page(server.url + "/")
    page = watched.page
    cards = page.locator('.gauge[data-extra="true"]')
    expect(cards).to_have_count(len(extras), timeout=10_000)
    shown = {cards.nth(i).locator("h3").inner_text(): cards.nth(i) for i in range(len(extras))}
    assert sorted(shown) == sorted(f"weekly.{name}" for name in extras)
    for name, value in extras.items():
        expect(shown[f"weekly.{name}"].locator(".pct")).to_have_text(pct(value))
    assert watched.problems == []


def test_a_very_long_limit_name_wraps_in_its_card(root: Path, serve: Any, open_page: Any) -> None:
    # A window name the payload chose, as long as a limit's name may be (a longer one is
    # left out of the forecast) and with no space: the page must not grow wider than
    # the screen for it.
    now = datetime.now(UTC).replace(microsecond=0)
    body = {
        "currentSession": {"resetsIn": "3 hr", "percentageUsed": 10},
        "x" * MAX_LIMIT_NAME: {"resetsIn": "2 days", "percentageUsed": 5},
    }
    store(root, [(now - timedelta(minutes=31), body), (now - timedelta(minutes=1), body)])
    server = serve()
    for width in (390, 1300):
        watched = open_page(server.url + "/", width=width)
        page = watched.page
        expect(page.locator('.gauge[data-extra="true"]')).to_have_count(1, timeout=10_000)
        assert page.evaluate("document.documentElement.scrollWidth") <= width
        assert watched.problems == []


def test_a_reading_short_of_100_is_never_shown_as_100(
    root: Path, serve: Any, open_page: Any
) -> None:
    # One decimal would round 99.97 up to "100.0 %": a limit reached, which it is not.
    now = datetime.now(UTC).replace(microsecond=0)
    body = {
        "currentSession": {"resetsIn": "3 hr", "percentageUsed": 99.97},
        "weeklyLimits": {
            "allModels": {"resetsIn": "2 days", "percentageUsed": 99.94},
            "sonnetOnly": {"resetsIn": "2 days", "percentageUsed": 100},
        },
    }
    store(root, [(now - timedelta(minutes=31), body), (now - timedelta(minutes=1), body)])
    server = serve()
    watched = open_page(server.url + "/")
    page = watched.page
    expect(page.locator("#gauge-session .pct")).to_have_text("99.97\u00a0%", timeout=10_000)
    expect(page.locator("#gauge-all .pct")).to_have_text("99.9\u00a0%")
    expect(page.locator("#gauge-sonnet .pct")).to_have_text("100\u00a0%")
    assert watched.problems == []


def test_the_cards_and_ingester_forecast_round_a_half_alike(
    root: Path, serve: Any, open_page: Any
) -> None:
    # Halves at each place a number is rounded for people: 12.25 % and 7.25 % to one
    # decimal, and a margin of 78 h (3.25 days) before the reset. Python's own rounding
    # (half to even) would make the command line say 12.2 % and 3.2 days where the page
    # says 12.3 % and 3.3 days, from one and the same forecast.
    last = (datetime.now(UTC) - timedelta(minutes=2)).replace(second=30, microsecond=0)

    def body(all_models: float, resets_in: str) -> dict[str, Any]:
        return {
            "currentSession": {"resetsIn": "3 hr", "percentageUsed": 12.25},
            "weeklyLimits": {
                "allModels": {"resetsIn": resets_in, "percentageUsed": all_models},
                "sonnetOnly": {"resetsIn": "2 days", "percentageUsed": 7.25},
            },
        }

    # allModels rises 10 %/h: 100 % 7 h after the newest, 85 h before its reset.
    store(
        root,
        [
            (last - timedelta(hours=1), body(20, "3 days 14 hr")),
            (last, body(30, "3 days 13 hr")),
        ],
    )
    day_time = "%a %H:%M"  # en-GB, UTC: the page's context, and the command's below
    words = (
        f"at this rate 100 % by {(last + timedelta(hours=7)).strftime(day_time)}, 3.3 days "
        f"before the reset ({(last + timedelta(hours=85)).strftime(day_time)})"
    )
    server = serve()
    watched = open_page(server.url + "/")
    page = watched.page
    expect(page.locator("#gauge-all .forecast")).to_have_text(
        words.replace(" %", "\u00a0%"), timeout=10_000
    )
    assert page.inner_text("#gauge-session .pct") == "12.3\u00a0%"
    assert page.inner_text("#gauge-sonnet .pct") == "7.3\u00a0%"
    shown = run_cli(root, "forecast", INGESTER_CONSOLE_TIMEZONE="UTC")
    assert shown.returncode == 0, shown.stderr
    rows = {line.split()[0]: line for line in shown.stdout.splitlines()[2:]}
    assert rows["weeklyLimits.allModels"].endswith(words), shown.stdout
    assert " 12.3 % " in rows["currentSession"], shown.stdout
    assert " 7.3 % " in rows["weeklyLimits.sonnetOnly"], shown.stdout
    assert watched.problems == []


def test_a_limit_keyed_with_a_dot_is_read_from_the_newest_snapshot(
    root: Path, serve: Any, open_page: Any
) -> None:
    # Its name quotes the key ("a.b"): the card must find it in the snapshot, not take
    # it for a limit the snapshot lacks.
    now = datetime.now(UTC).replace(microsecond=0)
    window = {"resetsIn": "2 days", "percentageUsed": 0}
    body = {
        "currentSession": {"resetsIn": "3 hr", "percentageUsed": 10},
        "a.b": {**window, "percentageUsed": 21},
        "a": {"b": {**window, "percentageUsed": 22}},
        '"x': {**window, "percentageUsed": 23},
        "w": {"\u00fc.\u2713": {**window, "percentageUsed": 24}},
    }
    store(root, [(now - timedelta(minutes=31), body), (now - timedelta(minutes=1), body)])
    server = serve()
    watched = open_page(server.url + "/")
    page = watched.page
    cards = page.locator('.gauge[data-extra="true"]')
    expect(cards).to_have_count(4, timeout=10_000)
    shown = {cards.nth(i).locator("h3").inner_text(): cards.nth(i) for i in range(4)}
    expected = {'"a.b"': 21, "a.b": 22, '"\\"x"': 23, 'w."\u00fc.\u2713"': 24}
    assert sorted(shown) == sorted(expected)
    for name, value in expected.items():
        expect(shown[name].locator(".pct")).to_have_text(pct(value))
        assert shown[name].get_attribute("data-held") == "false", name
        assert not shown[name].locator(".held").is_visible(), name
    assert watched.problems == []


def test_a_snapshot_a_little_ahead_of_the_server_clock_is_just_now(
    root: Path, serve: Any, open_page: Any
) -> None:
    # A scraper whose clock runs 20 s fast: the newest lastUpdated is after the server's now.
    build_history(root, -timedelta(seconds=20))
    server = serve()
    watched = open_page(server.url + "/?refresh=1")
    page = watched.page
    expect(page.locator("#fresh-badge")).to_have_attribute("data-state", "fresh", timeout=10_000)
    assert "(just now)" in page.inner_text("#freshness")
    assert "future" not in page.inner_text("#freshness")
    assert watched.problems == []


# Every fillText on a canvas, with where it starts and how wide it is (device pixels).
RECORD_TEXT = """
(() => {
  window.__texts = [];
  const fill = CanvasRenderingContext2D.prototype.fillText;
  CanvasRenderingContext2D.prototype.fillText = function (text, x, y, ...rest) {
    window.__texts.push({ text: String(text), x, width: this.measureText(text).width });
    return fill.call(this, text, x, y, ...rest);
  };
})();
"""


def plot_box(page: Any) -> dict[str, float]:
    """The plot area in the chart canvas's pixels: left, top, right, bottom."""
    return page.evaluate(
        """() => {
          const canvas = document.querySelector('#chart canvas').getBoundingClientRect();
          const over = document.querySelector('#chart .u-over').getBoundingClientRect();
          const r = window.devicePixelRatio || 1;
          return { left: (over.left - canvas.left) * r, top: (over.top - canvas.top) * r,
                   right: (over.right - canvas.left) * r, bottom: (over.bottom - canvas.top) * r };
        }"""
    )


def test_a_reset_mark_at_the_right_edge_keeps_its_whole_label(
    root: Path, serve: Any, open_page: Any, tmp_path: Path
) -> None:
    # Every limit resets in 5 hours, the furthest thing the chart shows: its mark is the
    # right edge of the plot.
    now = datetime.now(UTC).replace(microsecond=0)
    store(
        root,
        [
            (
                now - timedelta(minutes=1 + 30 * (3 - i)),
                {"currentSession": {"resetsIn": "5 hr", "percentageUsed": 10 + i}},
            )
            for i in range(4)
        ],
    )
    server = serve()
    watched = open_page(server.url + "/?refresh=1", init_script=RECORD_TEXT)
    page = watched.page
    pick_range(page, "24 hours")
    wait_points(page, 4)
    expect(page.locator("#chart")).to_have_attribute("data-resets", "1", timeout=10_000)
    box = plot_box(page)
    labels = wait_for(
        lambda: [t for t in page.evaluate("window.__texts") if t["text"] == "reset"],
        10,
        "the reset label drawn",
    )
    assert isinstance(labels, list)
    for label in labels:
        assert box["left"] <= label["x"], (label, box)
        assert label["x"] + label["width"] <= box["right"], (label, box)
    page.screenshot(path=str(artefact_dir(tmp_path) / "page-reset-edge.png"), full_page=True)
    assert watched.problems == []


COLOURS = {"session": (0x1F, 0x4E, 0x8C), "all": (0xB3, 0x59, 0x00), "sonnet": (0x1A, 0x7F, 0x37)}


def colours_in_columns(page: Any, xs: list[float], box: dict[str, float]) -> list[set[str]]:
    """Which lines' colours the chart canvas has in each pixel column of ``xs``, within
    the plot, all read from one copy of the canvas (so from one drawing of it)."""
    # Read from a copy made for reading (the chart's own canvas would have the browser
    # warn about repeated readbacks).
    columns = page.evaluate(
        """([xs, top, bottom]) => {
          const canvas = document.querySelector('#chart canvas');
          const copy = document.createElement('canvas');
          copy.width = canvas.width;
          copy.height = canvas.height;
          const ctx = copy.getContext('2d', { willReadFrequently: true });
          ctx.drawImage(canvas, 0, 0);
          return xs.map((x) => Array.from(ctx.getImageData(Math.round(x), Math.round(top), 1,
            Math.round(bottom - top)).data));
        }""",
        [xs, box["top"], box["bottom"]],
    )
    found: list[set[str]] = []
    for pixels in columns:
        names = set()
        for i in range(0, len(pixels), 4):
            r, g, b, a = pixels[i : i + 4]
            if a < 128:
                continue
            for name, (cr, cg, cb) in COLOURS.items():
                if abs(r - cr) + abs(g - cg) + abs(b - cb) < 60:
                    names.add(name)
        found.append(names)
    return found


def test_lines_break_across_a_gap_in_the_data_and_not_for_a_partial_snapshot(
    root: Path, serve: Any, open_page: Any, tmp_path: Path
) -> None:
    # Snapshots every 20 minutes for six hours, none for eight hours (the scraper was off
    # overnight), then six hours more; the session fell from 60 % to 10 % meanwhile. One
    # snapshot in the second part lacks the current session (a partial scrape).
    now = datetime.now(UTC).replace(microsecond=0)
    first = now - timedelta(hours=20)
    times = [first + timedelta(minutes=20 * k) for k in range(19)]
    times += [first + timedelta(hours=14, minutes=20 * k) for k in range(19)]
    partial_at = times[28]
    snapshots = []
    for at in times:
        early = at < first + timedelta(hours=7)
        body: dict[str, Any] = {
            "weeklyLimits": {
                "allModels": {"resetsIn": "at some point", "percentageUsed": 30},
                "sonnetOnly": {"resetsIn": "at some point", "percentageUsed": 5},
            },
        }
        if at == partial_at:
            body["isPartial"] = True
            body["extractionErrors"] = {"currentSession": "not found"}
        else:
            body["currentSession"] = {
                "resetsIn": "at some point",
                "percentageUsed": 60 if early else 10,
            }
        snapshots.append((at, body))
    store(root, snapshots)
    server = serve()
    watched = open_page(server.url + "/?refresh=1")
    page = watched.page
    pick_range(page, "All")
    wait_points(page, len(times))
    chart = page.locator("#chart")
    expect(chart).to_have_attribute("data-gaps", "1")
    assert "The lines break at 1 gap of more than 1 h 20 min without a snapshot." in (
        page.inner_text("#chart-summary")
    )
    box = plot_box(page)
    span = (times[-1] - times[0]).total_seconds()

    def column(at: datetime) -> float:
        share = (at - times[0]).total_seconds() / span
        return box["left"] + share * (box["right"] - box["left"])

    # Nothing rises, no reset time is known: the axis spans the snapshots and no more.
    assert chart.get_attribute("data-projections") == "0"
    # No line crosses the middle of the gap, while the session line runs on through the
    # snapshot that lacked it, as it does between two ordinary snapshots. All three are
    # read from one drawing, once it shows the lines: the page redraws every second, and a
    # copy taken while the canvas is being redrawn would prove nothing about the gap.
    middle = first + timedelta(hours=10, minutes=10)
    xs = [column(middle), column(partial_at), column(times[25] + timedelta(minutes=10))]
    drawn = wait_for(
        lambda: (c := colours_in_columns(page, xs, box))[2] and c,
        10,
        "a drawing of the chart with the session line",
    )
    assert isinstance(drawn, list)
    assert drawn[0] == set()
    assert "session" in drawn[1]
    assert "session" in drawn[2]
    page.screenshot(path=str(artefact_dir(tmp_path) / "page-gap.png"), full_page=True)
    assert watched.problems == []


def test_cards_read_the_reset_in_one_format_and_zone(
    root: Path, serve: Any, open_page: Any
) -> None:
    # A 12-hour clock: times read "8:59 AM", never "08:59 AM", and never the console's
    # raw words after "Resets in".
    forecast_history(root)
    server = serve()
    watched = open_page(server.url + "/?refresh=1", locale="en-US")
    page = watched.page
    wait_points(page, 8)
    resets = page.locator("#gauge-all .resets")
    expect(resets).to_have_text(
        re.compile(
            r"^resets \w{3}, \w{3} \d{1,2}, \d{1,2}:\d\d [AP]M \(in 4[78] h\)$|"
            r"^resets \w{3} \d{1,2}:\d\d [AP]M \(in 4[78] h\)$"
        ),
        timeout=10_000,
    )
    assert resets.get_attribute("title") == "the console says \u201c2 days\u201d"
    cards = page.inner_text(".gauges")
    assert "Resets in" not in cards
    assert not re.search(r"\b0\d:\d\d\s?[AP]M", cards), cards
    assert page.inner_text("#gauge-all .forecast").startswith("at this rate 100\u00a0% by ")
    assert watched.problems == []


# Every text and ring the chart canvas draws in its latest frame, as boxes in its pixels:
# fillText's ink (the text's own metrics, through the transform in effect) and each
# ctx.arc (the projections' rings), the list started again when the canvas is cleared.
RECORD_FRAME = """
(() => {
  window.__frame = { texts: [], rings: [] };
  const proto = CanvasRenderingContext2D.prototype;
  const box = (ctx, l, t, r, b) => {
    const m = ctx.getTransform();
    return { l: m.a * l + m.e, r: m.a * r + m.e, t: m.d * t + m.f, b: m.d * b + m.f };
  };
  const clear = proto.clearRect;
  proto.clearRect = function (x, y, w, h) {
    if (w >= this.canvas.width && h >= this.canvas.height) {
      window.__frame = { texts: [], rings: [] };
    }
    return clear.call(this, x, y, w, h);
  };
  const fill = proto.fillText;
  proto.fillText = function (text, x, y, ...rest) {
    const m = this.measureText(text);
    window.__frame.texts.push({
      text: String(text),
      ...box(this, x - m.actualBoundingBoxLeft, y - m.actualBoundingBoxAscent,
             x + m.actualBoundingBoxRight, y + m.actualBoundingBoxDescent),
    });
    return fill.call(this, text, x, y, ...rest);
  };
  const arc = proto.arc;
  proto.arc = function (x, y, r, ...rest) {
    const reach = r + this.lineWidth / 2;
    window.__frame.rings.push(box(this, x - reach, y - reach, x + reach, y + reach));
    return arc.call(this, x, y, r, ...rest);
  };
})();
"""


def overlap(a: dict[str, float], b: dict[str, float]) -> bool:
    return a["l"] < b["r"] and b["l"] < a["r"] and a["t"] < b["b"] and b["t"] < a["b"]


@pytest.mark.parametrize(("width", "locale"), [(390, "en-US"), (800, "en-GB"), (1300, "en-US")])
def test_time_labels_and_reset_labels_never_collide(
    root: Path, serve: Any, open_page: Any, tmp_path: Path, width: int, locale: str
) -> None:
    # Three days of snapshots every 2 hours, then the last 3 hours every 15 minutes with
    # the session rising 3 %/h to 89 %: its projection ends at its reset, 2 hours ahead,
    # at 95 %, so its ring sits on the reset mark, near the top where the labels are.
    now = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
    times = [now - timedelta(hours=71 - 2 * k) for k in range(35)]  # none 24 h ago
    recent = [now - timedelta(minutes=15 * (12 - k)) for k in range(13)]

    def body(at: datetime, session: float) -> dict[str, Any]:
        hours = (at - times[0]) / timedelta(hours=1)
        return {
            "currentSession": {"resetsIn": "2 hr", "percentageUsed": session},
            "weeklyLimits": {
                "allModels": {"resetsIn": "3 days", "percentageUsed": 20 + 0.5 * hours},
                "sonnetOnly": {"resetsIn": "3 days", "percentageUsed": 5},
            },
        }

    store(
        root,
        [(at, body(at, 10)) for at in times]
        + [(at, body(at, 80 + (at - recent[0]) / timedelta(hours=1) * 3)) for at in recent],
    )
    server = serve()
    watched = open_page(
        server.url + "/?refresh=1", width=width, locale=locale, init_script=RECORD_FRAME
    )
    page = watched.page
    for label, count in (("7 days", 48), ("24 hours", 24)):
        pick_range(page, label)
        wait_points(page, count)
        expect(page.locator("#chart")).to_have_attribute("data-resets", "2", timeout=10_000)
        box = plot_box(page)
        frame = wait_for(
            lambda: (
                (f := page.evaluate("window.__frame"))
                and any(t["text"] == "reset" for t in f["texts"])
                and f
            ),
            10,
            "a frame with the reset label",
        )
        assert isinstance(frame, dict)
        ticks = [t for t in frame["texts"] if t["t"] >= box["bottom"]]
        assert len(ticks) >= 3, (label, width, ticks)
        for i, a in enumerate(ticks):
            for b in ticks[i + 1 :]:
                assert not overlap(a, b), f"{label} at {width} px: {a} and {b} collide"
        # What the plot shows (a mark beyond the range is drawn, clipped away).
        seen = [
            item
            for item in [*frame["texts"], *frame["rings"]]
            if box["left"] <= item["l"] and item["r"] <= box["right"] + 6
        ]
        resets = [t for t in seen if t.get("text") == "reset"]
        rings = [r for r in seen if "text" not in r]
        assert resets and rings
        for text in resets:
            for ring in rings:
                assert not overlap(text, ring), f"{label} at {width} px: {text} under {ring}"
        page.screenshot(
            path=str(artefact_dir(tmp_path) / f"page-ticks-{width}-{count}.png"), full_page=True
        )
    assert watched.problems == []


# -- the time axis whatever the data in the range --------------------------------------------

RANGE_HOURS = {"24 hours": 24, "7 days": 24 * 7}
# Each snapshot's three resets, counted from its lastUpdated: the last two 48 minutes
# apart, close enough on either range for their labels to meet unless one moves down a
# row; the first with room for its label right of its mark.
RESET_WORDS = {"currentSession": "1 hr", "allModels": "4 hr 12 min", "sonnetOnly": "5 hr"}
RESETS_AFTER = [timedelta(hours=1), timedelta(hours=4, minutes=12), timedelta(hours=5)]


def snapshots_for(case: str, hours: int, now: datetime) -> list[datetime]:
    """When the snapshots of ``case`` were observed, for a range of ``hours``."""
    span = timedelta(hours=hours)
    return {
        # The README's quick start: one snapshot, just submitted.
        "one": [now - timedelta(minutes=1)],
        # Several observed at one instant (stored one after another).
        "one-instant": [now - timedelta(minutes=1)] * 3,
        # Near both ends of the range, nothing between (ten minutes in, so the older
        # one cannot slide out while the test runs).
        "edges": [now - span + timedelta(minutes=10), now - timedelta(minutes=1)],
        # Observed as the server starts, and 20 s ahead of its clock (a fast scraper).
        "now": [now],
        "ahead": [now + timedelta(seconds=20)],
        # None in the range: the only snapshot is a day older than its start.
        "none": [now - span - timedelta(days=1)],
    }[case]


def iso_instant(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@pytest.mark.parametrize("range_label", list(RANGE_HOURS))
@pytest.mark.parametrize("case", ["one", "one-instant", "edges", "now", "ahead", "none"])
def test_the_time_axis_spans_the_range_picked_whatever_the_data(
    root: Path, serve: Any, open_page: Any, tmp_path: Path, case: str, range_label: str
) -> None:
    # The axis covers the range picked, reaching past now by at most half of it to show
    # the resets; the reset labels never overprint, whether one snapshot lies in the
    # range (a new user's state after the quick start), several at one instant, or none.
    hours = RANGE_HOURS[range_label]
    span = timedelta(hours=hours)
    before = datetime.now(UTC)
    times = snapshots_for(case, hours, before.replace(microsecond=0))
    body = {
        "currentSession": {"resetsIn": RESET_WORDS["currentSession"], "percentageUsed": 23},
        "weeklyLimits": {
            "allModels": {"resetsIn": RESET_WORDS["allModels"], "percentageUsed": 41},
            "sonnetOnly": {"resetsIn": RESET_WORDS["sonnetOnly"], "percentageUsed": 7},
        },
    }
    store(root, [(at, body) for at in times])
    server = serve()
    watched = open_page(server.url + "/?refresh=1", init_script=RECORD_FRAME)
    page = watched.page
    pick_range(page, range_label)
    in_range = 0 if case == "none" else len(times)
    wait_points(page, in_range)
    chart = page.locator("#chart")
    expect(chart).to_have_attribute("data-resets", "3", timeout=10_000)
    expect(page.locator("#chart-summary")).to_contain_text(f"the last {range_label}")
    resets = [times[-1] + delay for delay in RESETS_AFTER]
    # The page redraws every second: a frame begun from here on is of this range.
    page.evaluate("window.__frame = { texts: [], rings: [], before: true }")

    # One frame drawn for this range, and the axis it was drawn with (set as it is drawn).
    def drawn() -> tuple[dict[str, Any], datetime, datetime] | None:
        frame = page.evaluate("window.__frame")
        ends = chart.get_attribute("data-x-from"), chart.get_attribute("data-x-to")
        if "before" in frame or not frame["texts"] or not all(ends):
            return None
        return frame, iso_instant(str(ends[0])), iso_instant(str(ends[1]))

    found = wait_for(drawn, 10, "a frame of the chart with its axis")
    assert isinstance(found, tuple)
    frame, start, end = found
    after = datetime.now(UTC)
    where = f"{case}, {range_label}: axis {start:%Y-%m-%d %H:%M:%S} to {end:%Y-%m-%d %H:%M:%S}"
    # From the range's start (the page's clock comes from the whole-second Date header)...
    slack = timedelta(seconds=2)
    assert before - span - slack <= start <= after - span + slack, where
    # ... to now or the newest snapshot, and past it by at most half the range: here to
    # the further reset, 5 hours on, within half of either range.
    reach = max([before - slack, *(t for t in times if t >= start)])
    assert reach <= end <= reach + span / 2 + slack, where
    if case != "none":
        assert end == max(resets), where

    box = plot_box(page)
    ticks = [t for t in frame["texts"] if t["t"] >= box["bottom"]]
    assert len(ticks) >= 3, (where, ticks)
    for i, a in enumerate(ticks):
        for b in ticks[i + 1 :]:
            assert not overlap(a, b), f"{where}: {a} and {b} collide"
    # One whole label per reset the axis shows, inside the plot, no two meeting (a label
    # wholly outside the plot is clipped away: not seen, so not counted); each right of
    # its mark, or left of it where the plot ends first.
    labels = [
        t
        for t in frame["texts"]
        if t["text"] == "reset" and t["r"] > box["left"] and t["l"] < box["right"]
    ]
    shown = [r for r in resets if start <= r <= end]
    assert len(labels) == len(shown), (where, labels)
    plot = box["right"] - box["left"]
    for i, (reset, a) in enumerate(zip(shown, labels, strict=True)):
        assert box["left"] <= a["l"] and a["r"] <= box["right"], (where, a, box)
        for b in labels[i + 1 :]:
            assert not overlap(a, b), f"{where}: {a} and {b} overprint"
        mark = box["left"] + (reset - start) / (end - start) * plot
        if mark + 3 + (a["r"] - a["l"]) + 2 < box["right"]:
            assert mark <= a["l"], f"{where}: {a} not right of its mark at {mark}"
        else:
            assert a["r"] <= mark or mark <= a["l"], f"{where}: {a} across its mark at {mark}"
    name = f"page-axis-{case}-{hours}h.png"
    page.screenshot(path=str(artefact_dir(tmp_path) / name), full_page=True)
    assert watched.problems == []


def test_all_the_history_at_one_instant_spans_the_hour_before_it(
    root: Path, serve: Any, open_page: Any
) -> None:
    # All the history, one snapshot: an hour before it to a minute after, widened toward
    # its resets by half that (not the thousand days uPlot gives one instant).
    at = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
    body = {"currentSession": {"resetsIn": "5 hr", "percentageUsed": 23}}
    store(root, [(at, body)])
    server = serve()
    watched = open_page(server.url + "/?refresh=1")
    page = watched.page
    pick_range(page, "All")
    wait_points(page, 1)
    chart = page.locator("#chart")
    expect(chart).to_have_attribute("data-resets", "1", timeout=10_000)
    expect(chart).to_have_attribute("data-x-from", iso_ms(at - timedelta(hours=1)))
    widened = timedelta(minutes=1) + timedelta(minutes=61) / 2
    expect(chart).to_have_attribute("data-x-to", iso_ms(at + widened))
    assert watched.problems == []
