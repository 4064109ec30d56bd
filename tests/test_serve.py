"""``ingester serve`` over real HTTP: every row of the read and write contract.

Each test starts a real server process on 127.0.0.1 (a free port) over a real history
folder whose versions are written straight to disk, as the watcher leaves them.
"""

from __future__ import annotations

import email.utils
import importlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from support import IS_ROOT, run_cli, wait_for
from support.hostile import HOSTILE, assert_our_words, many_problems
from support.serveproc import KEY, ServeProcess, fresh_payload, put_version, version_name

API = "/api/claude/console-usage"
T0 = datetime(2026, 11, 1, 12, 0, 0, tzinfo=UTC)


@pytest.fixture
def three(root: Path) -> list[tuple[str, bytes]]:
    """Three fresh versions ingested a minute apart (T0, T0+60 s, T0+120 s)."""
    out = []
    for i in range(3):
        data = fresh_payload(timedelta(minutes=1), seq=i)
        name = version_name(T0 + timedelta(seconds=60 * i), i)
        put_version(root, name, data)
        out.append((name, data))
    return out


@pytest.fixture
def server(root: Path) -> Iterator[ServeProcess]:
    """A running server on ``root`` with the test key."""
    with ServeProcess(root) as proc:
        yield proc


def spool_drops(root: Path) -> list[Path]:
    """Drops waiting in the spool."""
    spool = root / "spool"
    if not spool.is_dir():
        return []
    return sorted(p for p in spool.iterdir() if p.suffix == ".json" and p.is_file())


# -- GET: the latest and its fields --------------------------------------------------------


def test_latest_has_payload_fields_and_version_info(three: list[tuple[str, bytes]], server):
    r = server.get(API)
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    stored = json.loads(three[-1][1])
    for key, value in stored.items():
        assert body[key] == value
    assert body["source"] == "ec2-sync"
    assert body["isStale"] is False
    assert body["ageMinutes"] == 1
    assert body["versionInfo"] == {
        "current": 3,
        "total": 3,
        "timestamp": "2026-11-01T12:02:00.000Z",
        "filename": three[-1][0],
    }


def test_version_counts_from_oldest_and_newest(three: list[tuple[str, bytes]], server):
    for query, index in (("1", 0), ("2", 1), ("3", 2), ("-1", 2), ("-2", 1), ("-3", 0)):
        body = server.get(API, params={"version": query}).json()
        assert body["versionInfo"]["filename"] == three[index][0], query
        assert body["versionInfo"]["current"] == index + 1
        assert body["seq"] == index


@pytest.mark.parametrize("bad", ["0", "4", "-4", "abc", "1.5", " ", "1e3", "0x1", "99999999999999"])
def test_bad_version_is_400_with_valid_range(three: list[tuple[str, bytes]], server, bad: str):
    r = server.get(API, params={"version": bad})
    assert r.status_code == 400
    body = r.json()
    assert body["error"] == "InvalidVersion"
    assert body["message"]
    assert "1 to 3" in body["validRange"] and "-3" in body["validRange"]


def test_timestamp_picks_the_nearest_ingest_time(three: list[tuple[str, bytes]], server):
    def pick(when: str) -> int:
        r = server.get(API, params={"timestamp": when})
        assert r.status_code == 200, r.text
        return int(r.json()["seq"])

    assert pick("2026-11-01T12:00:20Z") == 0
    assert pick("2026-11-01T12:00:40Z") == 1
    assert pick("2026-11-01T12:01:30Z") == 2  # a tie: the newer one
    assert pick("2020-01-01T00:00:00Z") == 0
    assert pick("2030-01-01T00:00:00Z") == 2
    assert pick("2026-11-01T13:01:05+01:00") == 1  # offsets are honoured
    assert pick("2026-11-01T12:01:05") == 1  # no offset: UTC
    assert pick("2026-11-01T12:01:05.250Z") == 1


@pytest.mark.parametrize(
    "bad",
    [
        "yesterday",
        "2026-13-01T00:00:00Z",
        " ",
        "0001-01-01T00:00+01:00",
        "2026-11-01T12:00:00+05:99",  # datetime would read 5 h 99 min
        "2026-11-01T12:00:00Z\x00junk",  # datetime would read up to the NUL
        "2026-11-01T12:00:00+01:00\x00",
    ],
)
def test_bad_timestamp_is_400_with_an_example(three: list[tuple[str, bytes]], server, bad: str):
    r = server.get(API, params={"timestamp": bad})
    assert r.status_code == 400
    body = r.json()
    assert body["error"] == "InvalidTimestamp"
    parsed = datetime.fromisoformat(body["example"].replace("Z", "+00:00"))
    assert parsed.tzinfo is not None
    assert body["example"] in body["message"]


def test_no_versions_is_404(root: Path, server):
    for params in ({}, {"version": "1"}, {"timestamp": "2026-11-01T00:00:00Z"}):
        r = server.get(API, params=params)
        assert r.status_code == 404
        assert r.json()["versionsAvailable"] == 0
    (root / "console-usage-history").mkdir()
    assert server.get(API).json()["versionsAvailable"] == 0


# -- headers and conditional requests ------------------------------------------------------


@pytest.mark.parametrize(
    ("age_min", "cache", "stale"),
    [(1, "max-age=60", False), (7, "max-age=30", False), (12, "no-cache", True)],
)
def test_cache_control_follows_freshness(root: Path, age_min: int, cache: str, stale: bool):
    data = fresh_payload(timedelta(minutes=age_min, seconds=5))
    put_version(root, version_name(T0), data)
    with ServeProcess(root) as server:
        r = server.get(API)
    assert r.headers["cache-control"] == cache
    assert r.json()["isStale"] is stale
    assert r.json()["ageMinutes"] == age_min
    updated = datetime.fromisoformat(json.loads(data)["lastUpdated"].replace("Z", "+00:00"))
    assert email.utils.parsedate_to_datetime(r.headers["last-modified"]) == updated.replace(
        microsecond=0
    )


def test_the_latests_tag_is_the_same_for_the_same_answer_and_new_for_another_version(
    root: Path, three, server
):
    first = server.get(API).headers["etag"]
    assert server.get(API).headers["etag"] == first
    assert server.get(API, params={"version": "-1"}).headers["etag"] == first
    assert server.get(API, params={"version": "1"}).headers["etag"] != first
    put_version(root, version_name(T0 + timedelta(minutes=5), 9), fresh_payload(seq=9))
    second = wait_for(lambda: (e := server.get(API).headers["etag"]) != first and e, 5)
    assert server.get(API).json()["seq"] == 9
    assert second != first


def test_conditional_requests_answer_304(three, server):
    r = server.get(API)
    etag, modified = r.headers["etag"], r.headers["last-modified"]

    hit = server.get(API, headers={"If-None-Match": etag})
    assert hit.status_code == 304
    assert hit.content == b""
    assert hit.headers["etag"] == etag
    assert server.get(API, headers={"If-None-Match": f'"other", {etag}'}).status_code == 304
    assert server.get(API, headers={"If-None-Match": etag.removeprefix("W/")}).status_code == 304
    assert server.get(API, headers={"If-None-Match": "*"}).status_code == 304
    assert server.get(API, headers={"If-None-Match": '"other"'}).status_code == 200

    # A date alone never confirms the latest: its body moves on after lastUpdated.
    later = email.utils.format_datetime(datetime.now(UTC), usegmt=True)
    for since in (modified, later, "garbage"):
        assert server.get(API, headers={"If-Modified-Since": since}).status_code == 200
    # The tag decides when both are given.
    other = {"If-None-Match": '"other"', "If-Modified-Since": modified}
    assert server.get(API, headers=other).status_code == 200
    mine = {"If-None-Match": etag, "If-Modified-Since": "garbage"}
    assert server.get(API, headers=mine).status_code == 304
    # Another version has another tag.
    old = server.get(API, params={"version": "1"}, headers={"If-None-Match": etag})
    assert old.status_code == 200


def test_a_latest_observed_ahead_of_the_servers_clock_is_never_last_modified_after_the_date(
    root: Path, server: ServeProcess
) -> None:
    """A scraper whose clock runs ahead writes a ``lastUpdated`` in the server's future.
    RFC 9110 (8.8.2.1): a server with a clock never sends a ``Last-Modified`` later than
    its ``Date``; a cache would otherwise take the answer as modified in the future."""
    put_version(root, version_name(T0), fresh_payload(timedelta(hours=-6)))
    answer = server.get(API)
    assert answer.status_code == 200, answer.text
    modified = email.utils.parsedate_to_datetime(answer.headers["last-modified"])
    assert modified <= email.utils.parsedate_to_datetime(answer.headers["date"])


def test_conditional_headers_on_several_lines_are_read_as_one_field(three, server):
    """A cache or proxy may send a list field on several lines: RFC 9110 (5.3) makes them
    one field, ``"a", "b"``, so a tag on the second line is as current as on the first."""
    r = server.get(API)
    etag = r.headers["etag"]
    lines = [("If-None-Match", '"other"'), ("If-None-Match", etag)]
    hit = server.get(API, headers=lines)
    assert hit.status_code == 304, hit.text
    assert hit.headers["etag"] == etag
    name = r.json()["versionInfo"]["filename"]
    strong = server.get(f"{API}/versions/{name}").headers["etag"]
    bytes_hit = server.get(f"{API}/versions/{name}", headers=[lines[0], ("If-None-Match", strong)])
    assert bytes_hit.status_code == 304, bytes_hit.text


def test_the_latest_gets_a_new_etag_when_retention_changes_its_version_info(
    root: Path, three, server
):
    """The same newest version, but retention deleted the oldest: ``versionInfo`` counts
    one fewer, so a client revalidating its copy gets the new body, not a 304."""
    first = server.get(API)
    etag = first.headers["etag"]
    assert first.json()["versionInfo"]["total"] == 3
    assert server.get(API, headers={"If-None-Match": etag}).status_code == 304
    done = run_cli(root, "--max-versions", "2", "--retention-days", "0.0001", "cleanup")
    assert done.returncode == 0, done.stderr
    after = server.get(API, headers={"If-None-Match": etag})
    assert after.status_code == 200, after.headers
    assert after.json()["versionInfo"] == {**first.json()["versionInfo"], "current": 2, "total": 2}
    assert after.headers["etag"] != etag
    # Unchanged since: the new tag is stable and answers 304.
    again = server.get(API, headers={"If-None-Match": after.headers["etag"]})
    assert again.status_code == 304 and again.headers["etag"] == after.headers["etag"]


def test_a_client_revalidating_by_date_alone_gets_the_body_that_changed_since(
    root: Path, three, server
):
    """``If-Modified-Since`` alone cannot tell whether the answer changed: ``lastUpdated``
    stays while retention changes ``versionInfo`` (and the clock ``ageMinutes``). A
    client revalidating by the ``Last-Modified`` it was given (here as Node's fetch
    sends it, the dashboard card's runtime) gets the new body, never a 304 for an old
    count."""
    first = server.get(API)
    assert first.json()["versionInfo"]["total"] == 3
    card = {
        "accept": "*/*",
        "accept-language": "*",
        "sec-fetch-mode": "cors",
        "user-agent": "node",
        "If-Modified-Since": first.headers["last-modified"],
    }
    done = run_cli(root, "--max-versions", "2", "--retention-days", "0.0001", "cleanup")
    assert done.returncode == 0, done.stderr
    after = server.get(API, headers=card)
    assert after.status_code == 200, after.headers
    assert after.json()["versionInfo"]["total"] == 2
    assert after.headers["last-modified"] == first.headers["last-modified"]
    # A tag decides as before: it names the body it was given.
    again = server.get(API, headers={"If-None-Match": after.headers["etag"]})
    assert again.status_code == 304


def test_the_latest_gets_a_new_etag_when_its_age_moves_on(root: Path, server):
    """``ageMinutes`` (and in time ``isStale``) is part of the body: a client that sends
    its tag back must see the age move on, not keep a copy that says the data is fresh."""
    put_version(root, version_name(T0), fresh_payload(timedelta(seconds=80)))
    first = wait_for(lambda: (r := server.get(API)).status_code == 200 and r, 10)
    assert first.json()["ageMinutes"] == 1
    later = wait_for(lambda: (r := server.get(API)).json()["ageMinutes"] == 2 and r, 30)
    assert later.headers["etag"] != first.headers["etag"]
    answer = server.get(API, headers={"If-None-Match": first.headers["etag"]})
    assert answer.status_code == 200 and answer.json()["ageMinutes"] == 2


def test_the_serve_bench_revalidates_with_the_tag_it_was_last_given(
    root: Path, server, monkeypatch: pytest.MonkeyPatch
):
    """bench/bench_serve.py times the latest's 304s. The tag changes as the age moves on
    (here within the run: 88 s old, ``ageMinutes`` 2 from 90 s on), so a bench that sent
    the tag it read at the start would time 200s as 304s. Its load sends back the last
    tag it was given, as a client does, and counts the 304s it got."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent / "bench"))
    bench = importlib.import_module("bench_serve")
    put_version(root, version_name(T0), fresh_payload(timedelta(seconds=88)))
    first = wait_for(lambda: (r := server.get(API)).status_code == 200 and r, 10)
    request = bench.get(API, f"If-None-Match: {first.headers['etag']}\r\n")
    load = bench._client(server.port, [request], 4.0, 2, True)
    assert server.get(API).json()["ageMinutes"] == 2  # the age moved on: a new tag
    # One 200 per connection for each new tag (the one at the start may be stale too).
    assert len(load.latencies) - load.not_modified <= 4, (len(load.latencies), load)
    assert load.not_modified > 0


def test_the_openapi_description_says_of_each_tag_whether_it_is_weak_as_served(three, server):
    """A client generated from /openapi.json compares tags as it says: the latest's is the
    body's digest (strong) now, the bytes' too, the series' and the forecast's weak."""
    doc = server.get("/openapi.json").json()
    name = three[-1][0]
    for path, route in (
        (API, API),
        (f"{API}/versions/{name}", f"{API}/versions/{{name}}"),
        (f"{API}/series", f"{API}/series"),
        (f"{API}/forecast", f"{API}/forecast"),
    ):
        served = server.get(path)
        assert served.status_code == 200, (path, served.text)
        for status in ("200", "304"):
            said = doc["paths"][route]["get"]["responses"][status]["headers"]["ETag"]
            weak = said["description"].lower().startswith("weak")
            assert weak == served.headers["etag"].startswith("W/"), (path, said)


# -- versions listing and bytes ------------------------------------------------------------


def test_versions_listing_pages_newest_first(root: Path, server):
    names = []
    for i in range(7):
        name = version_name(T0 + timedelta(seconds=i), i)
        put_version(root, name, fresh_payload(seq=i) + b" " * i)
        names.append(name)
    page = server.get(f"{API}/versions", params={"limit": "3"}).json()
    assert page["total"] == 7
    assert [v["name"] for v in page["versions"]] == names[::-1][:3]
    assert page["versions"][0]["size"] == (root / "console-usage-history" / names[6]).stat().st_size
    assert page["versions"][0]["timestamp"] == "2026-11-01T12:00:06.000Z"
    seen = [v["name"] for v in page["versions"]]
    while page["next"]:
        page = server.get(f"{API}/versions", params={"limit": "3", "before": page["next"]}).json()
        seen += [v["name"] for v in page["versions"]]
    assert seen == names[::-1]
    after = server.get(f"{API}/versions", params={"after": names[4]}).json()
    assert [v["name"] for v in after["versions"]] == [names[6], names[5]]
    # Digits of other scripts (superscript two, fullwidth five) are no number here either.
    odd = (
        {"limit": "0"},
        {"limit": "1001"},
        {"limit": "x"},
        {"limit": "\u00b2"},
        {"limit": "\uff15"},
    )
    for bad in (*odd, {"before": "nope.json"}):
        r = server.get(f"{API}/versions", params=bad)
        assert r.status_code == 400, (bad, r.status_code, r.text)


def test_version_bytes_are_exact_and_immutable(three, server):
    name, data = three[1]
    r = server.get(f"{API}/versions/{name}")
    assert r.status_code == 200
    assert r.content == data
    assert "immutable" in r.headers["cache-control"]
    etag = r.headers["etag"]
    assert not etag.startswith("W/")
    assert server.get(f"{API}/versions/{name}", headers={"If-None-Match": etag}).status_code == 304
    assert server.get(f"{API}/versions/2026-01-01T00-00-00-nothere.json").status_code == 404
    assert server.get(f"{API}/versions/_metadata.json").status_code == 404
    assert server.get(f"{API}/versions/..%2F..%2Fetc%2Fpasswd").status_code == 404


def test_a_damaged_version_restored_in_place_is_served_without_a_restart(root: Path, server):
    """The repair troubleshooting.md gives for a damaged version: put the good file back
    under its name. The next request serves it, and the bytes route's tag follows the
    bytes, so a client holding the damaged copy gets the good one, not a 304."""
    name = version_name(T0, 1)
    good = fresh_payload(seq=1)
    path = put_version(root, name, b"{damaged")
    r = wait_for(lambda: (r := server.get(API)).status_code == 502 and r, 10)
    assert r.json()["error"] == "CorruptVersion"
    damaged = server.get(f"{API}/versions/{name}")
    assert damaged.content == b"{damaged"
    backup = root / "backup.json"
    backup.write_bytes(good)
    os.replace(backup, path)
    restored = server.get(API)
    assert restored.status_code == 200, restored.text
    assert restored.json()["seq"] == 1
    again = server.get(f"{API}/versions/{name}", headers={"If-None-Match": damaged.headers["etag"]})
    assert again.status_code == 200 and again.content == good
    assert again.headers["etag"] != damaged.headers["etag"]
    # Rewritten in place (the same inode, the same size) is no other case.
    os.chmod(path, 0o644)
    same_size = good.replace(b'"seq": 1', b'"seq": 7')
    assert len(same_size) == len(good) and same_size != good
    path.write_bytes(same_size)
    assert server.get(API).json()["seq"] == 7
    assert server.get(f"{API}/versions/{name}").content == same_size


def test_a_damaged_versions_bytes_are_revalidated_not_kept_as_immutable(root: Path, server):
    """Bytes under a version's name that are no snapshot will be put right from a backup
    (troubleshooting.md): a client told they are immutable for a year would never ask
    again. A good version's bytes stay immutable."""
    good, damaged = version_name(T0, 1), version_name(T0 + timedelta(seconds=1), 2)
    put_version(root, good, fresh_payload(seq=1))
    put_version(root, damaged, b"[1, 2]")
    kept = server.get(f"{API}/versions/{good}")
    assert "immutable" in kept.headers["cache-control"]
    answer = server.get(f"{API}/versions/{damaged}")
    assert answer.status_code == 200 and answer.content == b"[1, 2]"
    assert answer.headers["cache-control"] == "no-cache"
    revalidated = server.get(
        f"{API}/versions/{damaged}", headers={"If-None-Match": answer.headers["etag"]}
    )
    assert revalidated.status_code == 304
    assert revalidated.headers["cache-control"] == "no-cache"


def test_legacy_version_names_count(root: Path, server):
    put_version(root, "2026-01-05T00-00-00-test5.json", fresh_payload(seq=5))
    put_version(root, "notes.json", b"{}")
    body = server.get(API).json()
    assert body["versionInfo"]["filename"] == "2026-01-05T00-00-00-test5.json"
    assert body["versionInfo"]["total"] == 1
    # A file someone else put there that is not a JSON object: a clear error, no crash.
    put_version(root, "2026-01-06T00-00-00-broken.json", b"[" * 100_000)
    r = wait_for(lambda: (r := server.get(API)).status_code == 502 and r, 5)
    assert r.json()["error"] == "CorruptVersion"
    assert server.get(API, params={"version": "1"}).status_code == 200
    assert server.get("/api/health").json()["status"] == "unhealthy"
    # Its words are the CLI's: what `show` says of the same file.
    broken = "2026-01-07T00-00-00-garbage.json"
    put_version(root, broken, b"garbage\xff")
    r = wait_for(lambda: (r := server.get(API)).status_code == 502 and broken in r.text and r, 5)
    shown = run_cli(root, "show", broken)
    assert shown.returncode == 1
    said = shown.stderr.strip().removeprefix("error: ").removesuffix("; run 'ingester verify'")
    assert r.json()["message"] == said == f"version {broken} is damaged: not valid UTF-8 (byte 7)"
    assert "Traceback" not in server.log


def strict_json(text: str) -> object:
    """``text`` parsed as a browser's ``JSON.parse`` parses it: ``NaN`` and ``Infinity``
    are no JSON there."""

    def refuse(word: str) -> object:
        raise ValueError(f"not JSON: {word}")

    return json.loads(text, parse_constant=refuse)


def test_a_number_beyond_a_double_is_refused_by_post_and_never_served_as_infinity(
    root: Path, server
):
    """``1e400`` is JSON text no double holds: read, it is infinite, and written back it
    is ``Infinity``, which the card's ``response.json()`` throws on. A POST holding it
    is refused as the literal would be; a version holding it (placed by hand, or stored
    by an older gate) is damaged, answered 502 in valid JSON, as ``show`` words it."""
    body = fresh_payload()[:-1] + b', "extra": 1e400}'
    r = server.post(
        API, content=body, headers={"X-API-Key": KEY, "Content-Type": "application/json"}
    )
    assert r.status_code == 400, r.text
    assert "1e400" in r.json()["message"] and "infinite" in r.json()["message"]
    assert spool_drops(root) == []
    for i, value in enumerate((b"1e400", b"-1e999", b"NaN")):
        name = version_name(T0 + timedelta(minutes=i), i)
        put_version(root, name, fresh_payload()[:-1] + b', "extra": ' + value + b"}")
        r = wait_for(
            lambda name=name: (r := server.get(API)).status_code == 502 and name in r.text and r,
            5,
        )
        answer = strict_json(r.text)
        assert isinstance(answer, dict) and answer["error"] == "CorruptVersion", r.text
        shown = run_cli(root, "show", name)
        said = shown.stderr.strip().removeprefix("error: ").removesuffix("; run 'ingester verify'")
        assert answer["message"] == said, (answer, shown.stderr)
        health = server.get("/api/health")
        strict_json(health.text)
    assert "ERROR" not in server.log, server.log


def test_a_version_holding_a_lone_surrogate_escape_is_served_as_valid_json(root: Path, server):
    """The original server's ``JSON.stringify`` writes a string cut in the middle of an
    emoji as ``"cut \\ud83d"``: valid JSON text, so an adopted history may hold it. It
    is no character, so the answer holds U+FFFD in its place (as a browser's decoder
    shows it), in valid UTF-8 JSON, never a 500."""
    name = version_name(T0)
    put_version(
        root,
        name,
        b'{"currentSession":{"resetsIn":"4 hr","percentageUsed":12},'
        b'"lastUpdated":"2026-11-01T12:00:00Z","note":"cut \\ud83d","city":"Z\xc3\xbcrich"}',
    )
    r = server.get(API)
    assert r.status_code == 200, (r.text, server.log)
    answer = strict_json(r.text)
    assert isinstance(answer, dict)
    assert answer["note"] == "cut \ufffd" and answer["city"] == "Z\u00fcrich"
    assert answer["versionInfo"]["filename"] == name
    # The version's own bytes are served as they are; the health and the page's series
    # answer in valid JSON beside it.
    assert (
        server.get(f"{API}/versions/{name}").content
        == (root / "console-usage-history" / name).read_bytes()
    )
    for path in ("/api/health", f"{API}/series", f"{API}/forecast"):
        got = server.get(path)
        assert got.status_code in (200, 404, 503), (path, got.status_code, got.text)
        strict_json(got.text)
    assert "ERROR" not in server.log and "please report" not in server.log, server.log


# -- health ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("age_min", "status", "code"),
    [(2, "healthy", 200), (15, "degraded", 200), (45, "unhealthy", 503)],
)
def test_health_by_age(root: Path, age_min: int, status: str, code: int):
    put_version(root, version_name(T0), fresh_payload(timedelta(minutes=age_min)))
    with ServeProcess(root) as server:
        r = server.get("/api/health")
    assert r.status_code == code
    body = r.json()
    assert body["status"] == status
    assert body["ageMinutes"] == age_min
    assert body["versionCount"] == 1
    assert body["latestVersion"] == version_name(T0)


def test_health_over_only_future_dated_versions_judges_what_get_serves(root: Path):
    """Every version named more than a day ahead of the clock (stored before it was set
    back): none is the latest, and GET serves the oldest of them. The health judges that
    one too, degraded, with a reason naming the versions ahead, never "no data"."""
    name = version_name(datetime.now(UTC) + timedelta(days=3))
    put_version(root, name, fresh_payload())
    with ServeProcess(root) as server:
        latest = server.get(API)
        assert latest.status_code == 200 and latest.json()["versionInfo"]["filename"] == name
        r = server.get("/api/health")
    health = r.json()
    assert r.status_code == 200 and health["status"] == "degraded", health
    assert health["versionCount"] == 1 and health["latestVersion"] == name
    assert health["reason"] == (
        "the one version held is dated more than a day ahead of this clock (set back "
        f"since?), so none is the latest; the oldest, {name}, is served in its place"
    )
    assert health["latestData"]["status"] == "degraded"
    assert health["ageMinutes"] == 0


@pytest.mark.parametrize(("ahead_min", "status"), [(50, "healthy"), (120, "degraded")])
def test_health_of_data_dated_ahead_of_the_clock(root: Path, ahead_min: int, status: str):
    # Within the hour a clock may drift, fresh; beyond it the age cannot be told, as
    # check says: called fresh, it would stay healthy however long the scraper stopped.
    put_version(root, version_name(T0), fresh_payload(timedelta(minutes=-ahead_min)))
    with ServeProcess(root) as server:
        body = server.get("/api/health").json()
    assert body["status"] == status, body
    if status == "degraded":
        assert " ahead of this clock: its age cannot be told" in body["reason"], body


def test_health_unhealthy_without_data_or_history(root: Path, server):
    r = server.get("/api/health")
    assert (r.status_code, r.json()["status"]) == (503, "unhealthy")
    assert r.json()["reason"] == "no data stored yet"
    # The history path is not a folder: unreadable.
    (root / "console-usage-history").write_text("not a folder")
    r = server.get("/api/health")
    assert (r.status_code, r.json()["status"]) == (503, "unhealthy")
    assert "unreadable" in r.json()["reason"]
    assert server.get(API).status_code == 503


# -- metrics ---------------------------------------------------------------------------------


def metrics(server: ServeProcess) -> dict[str, float]:
    """Every sample as ``name{labels}`` -> value (labels sorted)."""
    r = server.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


def test_metrics_describe_history_spool_and_requests(root: Path, three, server):
    spool = root / "spool"
    (spool / "rejected").mkdir(parents=True)
    (spool / "waiting.json").write_bytes(b"{}")
    (spool / "rejected" / "bad.json").write_bytes(b"x")
    server.get(API)
    m = metrics(server)
    assert m["ingester_versions"] == 3
    assert m["ingester_newest_version_timestamp_seconds"] == (T0 + timedelta(minutes=2)).timestamp()
    assert 60 <= m["ingester_payload_age_seconds"] < 600
    assert m["ingester_payload_stale"] == 0
    assert m["ingester_spool_backlog"] == 1
    assert m["ingester_spool_oldest_drop_age_seconds"] >= 0
    assert m["ingester_rejected_drops"] == 1
    assert m["ingester_history_readable"] == 1
    assert (
        m["ingester_http_requests_total{method=GET,route=/api/claude/console-usage,status=200}"]
        == 1
    )
    assert m["ingester_http_request_duration_seconds_count{route=/api/claude/console-usage}"] == 1


@pytest.mark.parametrize(
    "newest",
    [
        json.dumps({"currentSession": {"percentageUsed": 5, "resetsIn": "2 hr"}, "lastUpdated": 5}),
        "{not json",
    ],
    ids=["no time in lastUpdated", "not JSON"],
)
def test_a_newest_version_without_a_readable_last_updated_is_stale_in_metrics_as_in_the_api(
    root: Path, three, server, newest: str
):
    """The API calls data whose age cannot be told stale (``isStale: true``) and health
    unhealthy; ``ingester_payload_stale`` says 1 with them, so the documented
    ConsoleUsageStaleData rule fires, rather than leaving the series out, which no rule
    on ``== 1`` ever sees."""
    name = version_name(T0 + timedelta(minutes=3), 9)
    put_version(root, name, newest.encode())
    latest = server.get(API)
    if latest.status_code == 200:
        assert latest.json()["versionInfo"]["filename"] == name
        assert latest.json()["isStale"] is True and latest.json()["ageMinutes"] is None
    else:
        assert latest.json()["error"] == "CorruptVersion"
    assert server.get("/api/health").json()["status"] == "unhealthy"
    m = metrics(server)
    assert m["ingester_newest_version_timestamp_seconds"] == (T0 + timedelta(minutes=3)).timestamp()
    assert m["ingester_payload_stale"] == 1
    assert "ingester_payload_age_seconds" not in m


def test_metrics_count_what_the_watcher_takes_and_leave_out_unknown_totals(
    root: Path, three, server
):
    # A folder named like a drop is never taken: counted, it would age for ever and an
    # alert on the oldest drop's age would never resolve.
    spool = root / "spool"
    spool.mkdir(exist_ok=True)
    (spool / "folder.json").mkdir()
    meta = root / "console-usage-history" / "_metadata.json"
    meta.write_text(json.dumps({"totalVersionsCreated": 3, "totalVersionsDeleted": 0}))
    m = metrics(server)
    assert m["ingester_spool_backlog"] == 0
    assert m["ingester_spool_oldest_drop_age_seconds"] == 0
    assert m["ingester_versions_stored_total"] == 3
    # Totals that cannot be read are unknown, not 0: Prometheus reads a drop to 0 as a
    # counter reset, and rate() then as every version stored again.
    meta.write_bytes(b"garbage")
    m = metrics(server)
    assert "ingester_versions_stored_total" not in m and "ingester_versions_deleted_total" not in m
    assert m["ingester_versions"] == 3


def test_lookups_do_not_list_the_history_per_request(root: Path, three, server):
    """The index is revalidated by a stat: many lookups, one listing per change."""
    server.get(API)
    before = metrics(server)["ingester_history_listings_total"]
    for i in range(30):
        server.get(API, params={"timestamp": f"2026-11-01T12:00:{i:02d}Z"})
        server.get(API, params={"version": str(1 + i % 3)})
    after = metrics(server)["ingester_history_listings_total"]
    assert after - before <= 1
    put_version(root, version_name(T0 + timedelta(minutes=9), 7), fresh_payload(seq=7))
    wait_for(lambda: server.get(API).json()["versionInfo"]["total"] == 4, 5)
    assert metrics(server)["ingester_history_listings_total"] > after


# -- POST: key, types, limits -------------------------------------------------------------


def post(server: ServeProcess, data: bytes, key: str | bytes | None = KEY, **headers: str):
    """POST ``data`` as JSON with ``key`` (bytes: sent as they are)."""
    h: dict[str, str | bytes] = {"Content-Type": "application/json", **headers}
    if key is not None:
        h["X-API-Key"] = key
    return server.post(API, content=data, headers=h)


def test_post_with_the_key_drops_durably(root: Path, server):
    data = fresh_payload(seq=1)
    r = post(server, data)
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["success"] is True
    assert body["message"]
    assert datetime.fromisoformat(body["timestamp"].replace("Z", "+00:00"))
    drops = spool_drops(root)
    assert [p.name for p in drops] == [body["drop"]]
    assert drops[0].read_bytes() == data
    assert not any(p.name.startswith(".") for p in (root / "spool" / "tmp").iterdir())


@pytest.mark.parametrize("key", [None, "", "wrong", KEY + "x", KEY[:-1], "ключ".encode()])
def test_post_with_a_missing_or_wrong_key_is_401(root: Path, server, key: str | bytes | None):
    headers: dict[str, str | bytes] = {"Content-Type": "application/json"}
    if key is not None:
        headers["X-API-Key"] = key
    r = server.post(API, content=fresh_payload(), headers=headers)
    assert r.status_code == 401
    assert r.json()["success"] is False
    assert spool_drops(root) == []


@pytest.mark.parametrize("keys", [(KEY, "wrong"), ("wrong", KEY), (KEY, KEY)])
def test_a_post_with_x_api_key_twice_is_401_whichever_comes_first(
    root: Path, server, keys: tuple[str, str]
):
    """Two ``X-API-Key`` lines are one list-valued field (RFC 9110 5.3), as the original
    server read them (``"k1, k2"``, never the key): refused, however they are ordered,
    and for the refresh button as for the upload."""
    headers = [("Content-Type", "application/json"), *(("X-API-Key", k) for k in keys)]
    r = server.post(API, content=fresh_payload(), headers=headers)
    assert r.status_code == 401, r.text
    assert r.json()["success"] is False
    assert r.json()["message"] == "X-API-Key sent 2 times: send it once"
    assert spool_drops(root) == []
    refused = [x for x in server.log.splitlines() if "X-API-Key sent 2 times" in x]
    assert len(refused) == 1 and refused[0].endswith("answered 401"), server.log
    assert KEY not in server.log
    trigger = server.post(f"{API}/trigger", headers=headers)
    assert trigger.status_code == 401, trigger.text


def test_without_a_configured_key_every_post_is_401(root: Path, three):
    with ServeProcess(root, key=None) as server:
        assert post(server, fresh_payload(), key="").status_code == 401
        assert post(server, fresh_payload(), key="anything").status_code == 401
        assert server.get(API).status_code == 200
        assert "every POST answers 401" in server.log
    assert spool_drops(root) == []


def test_api_key_file_is_read_and_wins(root: Path, tmp_path: Path):
    key_file = tmp_path / "key"
    key_file.write_text("from-the-file\n")
    with ServeProcess(root, "--api-key-file", str(key_file)) as server:
        assert post(server, fresh_payload(), key="from-the-file").status_code == 202
        assert post(server, fresh_payload(), key=KEY).status_code == 401


def test_a_key_variable_that_is_not_utf8_is_taken_as_its_bytes(root: Path, tmp_path: Path):
    """A ``.env`` saved in Latin-1 puts a byte that is not UTF-8 in the variable (``clé``
    as ``cl\\xe9``): the key is those bytes, as ``--api-key-file`` takes a file's."""
    key = b"cl\xe9-key"
    env = {"CLAUDE_SYNC_API_KEY": os.fsdecode(key)}
    with ServeProcess(root, key=None, env=env) as server:
        assert post(server, fresh_payload(), key=key).status_code == 202, server.log
        assert post(server, fresh_payload(), key=b"cl-key").status_code == 401
        assert "POST key from CLAUDE_SYNC_API_KEY" in server.log
    key_file = tmp_path / "key"
    key_file.write_bytes(key + b"\n")
    with ServeProcess(root, "--api-key-file", str(key_file), key=None) as server:
        assert post(server, fresh_payload(), key=key).status_code == 202


@pytest.mark.parametrize(
    ("content", "source"),
    [(b"abc\ndef\n", "file"), (b"ab\x00c", "file"), (b"ab\x1bc", "env")],
)
def test_a_key_no_header_can_carry_is_refused_at_start(
    root: Path, tmp_path: Path, content: bytes, source: str
) -> None:
    # Every POST would be 401 (or 400) with it, whatever a client sends: said at start.
    if source == "file":
        key_file = tmp_path / "key"
        key_file.write_bytes(content)
        done = run_cli(root, "serve", "--listen", "127.0.0.1:0", "--api-key-file", str(key_file))
        where = f"--api-key-file: {key_file}"
    else:
        done = run_cli(root, "serve", "--listen", "127.0.0.1:0", INGESTER_API_KEY=content.decode())
        where = "INGESTER_API_KEY"
    assert done.returncode == 1, done.stdout + done.stderr
    [line] = done.stderr.splitlines()
    assert line.startswith(f"error: {where} holds a control character (byte 0x"), line
    assert "which no X-API-Key header can carry" in line


@pytest.mark.parametrize(
    "content", [b"CLAUDE_SYNC_API_KEY=abc\n", b"export INGESTER_API_KEY='abc'\n"]
)
def test_a_key_file_holding_the_variable_s_assignment_is_refused_at_start(
    root: Path, tmp_path: Path, content: bytes
) -> None:
    """The original's ``.env`` line given as ``--api-key-file`` would make the whole line
    the key, and every POST a 401 that the scraper does not retry: said at start."""
    key_file = tmp_path / "key"
    key_file.write_bytes(content)
    done = run_cli(root, "serve", "--listen", "127.0.0.1:0", "--api-key-file", str(key_file))
    assert done.returncode == 1, done.stdout + done.stderr
    [line] = done.stderr.splitlines()
    name = content.split(b"=")[0].split()[-1].decode()
    assert line == (
        f"error: --api-key-file: {key_file} holds the assignment {name}=…, not a key: "
        "put the key alone in it (the value, without quotes)"
    ), line
    assert "abc" not in line


def test_a_key_file_saved_with_a_byte_order_mark_holds_the_key_alone(
    root: Path, tmp_path: Path
) -> None:
    """A key file some Windows editors save begins with a UTF-8 byte order mark: it marks
    the encoding and is no part of the key, so a client sending the key is let in (and
    the original's ``.env`` line saved so is still refused)."""
    key_file = tmp_path / "key"
    key_file.write_bytes(b"\xef\xbb\xbf" + KEY.encode() + b"\r\n")
    with ServeProcess(root, "--api-key-file", str(key_file), key=None) as server:
        r = post(server, fresh_payload())
        assert r.status_code == 202, r.text
    key_file.write_bytes(b"\xef\xbb\xbfCLAUDE_SYNC_API_KEY=abc\n")
    done = run_cli(root, "serve", "--listen", "127.0.0.1:0", "--api-key-file", str(key_file))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "holds the assignment CLAUDE_SYNC_API_KEY=…" in done.stderr


def test_post_invalid_payload_is_400_with_errors(root: Path, server):
    bad = json.dumps({"currentSession": {"resetsIn": "", "percentageUsed": "40"}}).encode()
    r = post(server, bad)
    assert r.status_code == 400
    body = r.json()
    assert body["success"] is False
    fields = {e["field"] for e in body["errors"]}
    assert {"lastUpdated", "currentSession.resetsIn", "currentSession.percentageUsed"} <= fields
    for junk in (b"{not json", b"[]", b"\xff\xfe", b"", b"[" * 100_000):
        r = post(server, junk)
        assert r.status_code == 400, junk[:10]
        assert r.json()["success"] is False
    assert spool_drops(root) == []


def test_a_hostile_body_is_400_in_our_words(root: Path, server):
    for name, data in HOSTILE.items():
        r = post(server, data)
        assert r.status_code == 400, name
        body = r.json()
        assert_our_words(body["message"])
        for problem in body.get("errors", []):
            assert_our_words(problem["msg"])
    assert_our_words(server.log)
    assert spool_drops(root) == []


@pytest.mark.parametrize("encoding", ["gzip", "br", "deflate, gzip"])
def test_a_compressed_post_is_415_naming_its_encoding(root: Path, server, encoding: str):
    import gzip

    r = post(server, gzip.compress(fresh_payload()), **{"Content-Encoding": encoding})
    assert r.status_code == 415
    assert r.json()["message"] == (
        f"Content-Encoding {encoding!r} is not supported: send the JSON uncompressed"
    )
    assert post(server, fresh_payload(), **{"Content-Encoding": "identity"}).status_code == 202
    assert len(spool_drops(root)) == 1


def test_a_content_encoding_on_a_second_line_is_415_too(root: Path, server):
    """The lines of a list field are one field (RFC 9110 5.3): ``identity`` then ``gzip``
    says the body is gzip, and it is refused as such, not judged as JSON."""
    import gzip

    headers = [
        ("Content-Type", "application/json"),
        ("X-API-Key", KEY),
        ("Content-Encoding", "identity"),
        ("Content-Encoding", "gzip"),
    ]
    r = server.post(API, content=gzip.compress(fresh_payload()), headers=headers)
    assert r.status_code == 415, r.text
    assert r.json()["message"] == (
        "Content-Encoding 'identity, gzip' is not supported: send the JSON uncompressed"
    )
    assert spool_drops(root) == []


@pytest.mark.parametrize("ctype", [None, "text/plain", "application/x-www-form-urlencoded"])
def test_post_not_json_is_415(root: Path, server, ctype: str | None):
    headers = {"X-API-Key": KEY}
    if ctype:
        headers["Content-Type"] = ctype
    r = server.post(API, content=fresh_payload(), headers=headers)
    assert r.status_code == 415
    assert r.json()["success"] is False
    assert spool_drops(root) == []


def test_post_json_with_charset_is_accepted(server):
    r = post(server, fresh_payload(), **{"Content-Type": "application/json; charset=utf-8"})
    assert r.status_code == 202


def test_post_over_max_bytes_is_413(root: Path):
    with ServeProcess(root, global_args=("--max-bytes", "2000")) as server:
        big = fresh_payload(pad="x" * 3000)
        refused = post(server, big)
        assert refused.status_code == 413
        assert refused.headers["connection"] == "close"  # the rest is never drained
        # Without a Content-Length (chunked), the cap holds while reading.
        r = server.post(
            API,
            content=iter([big[:1000], big[1000:]]),
            headers={"Content-Type": "application/json", "X-API-Key": KEY},
        )
        assert r.status_code == 413
        assert post(server, fresh_payload()).status_code == 202
    assert len(spool_drops(root)) == 1


def raw_request(port: int, data: bytes, read_timeout: float = 10) -> bytes:
    """Send raw bytes; return the answer's head (or all until the server closes)."""
    with socket.create_connection(("127.0.0.1", port), timeout=read_timeout) as sock:
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before it read everything: what it answered is still readable
        got = b""
        try:
            while b"\r\n\r\n" not in got and (chunk := sock.recv(65536)):
                got += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    return got


def test_slow_body_is_408_and_others_are_served(root: Path, three):
    with ServeProcess(root, "--body-timeout", "0.5") as server:
        head = (
            f"POST {API} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"X-API-Key: {KEY}\r\nContent-Length: 400\r\n\r\n"
        ).encode()
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(head + b'{"lastUpdated":')
            assert server.get(API).status_code == 200  # not blocked meanwhile
            answer = sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 408")
        assert spool_drops(root) == []


def test_slow_or_silent_request_heads_are_cut_off(root: Path, three):
    with ServeProcess(root, "--head-timeout", "0.5") as server:
        silent = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        trickle = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        try:
            head = f"GET {API} HTTP/1.1\r\nHost: x\r\nX-Slow: ".encode()
            trickle.sendall(head)
            got = b""
            # One byte at a time, each well within the timeout: the head still never ends.
            trickle.settimeout(0.1)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    trickle.sendall(b"a")
                except (BrokenPipeError, ConnectionResetError):
                    break
                try:
                    chunk = trickle.recv(4096)
                except TimeoutError:
                    continue
                except ConnectionResetError:
                    break
                if not chunk:
                    break
                got += chunk
            assert got.startswith(b"HTTP/1.1 408"), got
            silent.settimeout(10)
            assert silent.recv(4096).startswith(b"HTTP/1.1 408")
            assert silent.recv(4096) == b""  # and closed
            # A keep-alive client that sends its requests promptly is not affected.
            for _ in range(3):
                assert server.get(API).status_code == 200
        finally:
            silent.close()
            trickle.close()


def test_a_connection_flood_is_refused_then_cleared(root: Path, three):
    with ServeProcess(root, "--max-connections", "4", "--head-timeout", "0.5") as server:
        idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(6)]
        try:
            with httpx.Client(base_url=server.base, timeout=10) as fresh:
                assert fresh.get(API).status_code == 503  # over the limit: refused, not queued
            # The idle ones are cut off at the head deadline; then there is room again.
            with httpx.Client(base_url=server.base, timeout=10) as fresh:
                wait_for(lambda: fresh.get(API).status_code == 200, 10, "room again")
        finally:
            for sock in idle:
                sock.close()


def test_a_client_that_reads_none_of_its_answers_is_cut_off(root: Path) -> None:
    # Each asks for a large version five times over and reads nothing: once its socket's
    # buffer and the server's are full, the answer waits on it. Two such clients held
    # both slots for ever; at the send deadline their connections end and room returns.
    name = version_name(datetime.now(UTC))
    put_version(root, name, fresh_payload() + b" " * 900_000)
    ask = f"GET {API}/versions/{name} HTTP/1.1\r\nHost: x\r\n\r\n".encode() * 5
    args = ("--send-timeout", "1", "--max-connections", "2", "--head-timeout", "60")
    with ServeProcess(root, *args) as server:
        stuck = []
        try:
            for _ in range(2):
                sock = socket.socket()
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                sock.connect(("127.0.0.1", server.port))
                sock.sendall(ask)
                stuck.append(sock)
            with httpx.Client(base_url=server.base, timeout=10) as fresh:
                wait_for(lambda: fresh.get(API).status_code == 200, 20, "room again")
            line = wait_for(
                lambda: [x for x in server.log.splitlines() if "read nothing of its answer" in x],
                15,
                "the line",
            )
            assert " WARNING closed " in line[0], line
            assert line[0].split(" WARNING ", 1)[1].startswith("closed ")
            assert (
                "whose client read nothing of its answer for 1 s; most from 127.0.0.1" in (line[0])
            )
        finally:
            for sock in stuck:
                sock.close()
        assert server.stop() == 0
    assert "Traceback" not in server.log


def test_header_floods_are_refused_and_the_server_lives(three, server):
    huge = (
        b"GET " + API.encode() + b" HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n"
    )
    answer = raw_request(server.port, huge)
    assert answer == b"" or answer.split(b" ", 2)[1] in (b"400", b"431")
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(5000))
    answer = raw_request(
        server.port, b"GET " + API.encode() + b" HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n"
    )
    assert answer == b"" or answer.split(b" ", 2)[1] in (b"400", b"431")
    assert server.get(API).status_code == 200
    assert server.proc.poll() is None


def test_malformed_requests_get_a_clear_answer(three, server):
    answer = raw_request(server.port, b"NONSENSE\r\n\r\n")
    assert answer == b"" or answer.startswith(b"HTTP/1.1 400")
    # One line in our log format, naming the client and the fault.
    line = wait_for(
        lambda: next((x for x in server.log.splitlines() if "sent a malformed request" in x), None),
        5,
    )
    assert " WARNING client 127.0.0.1:" in str(line)
    r = server.client.request("DELETE", API)
    assert r.status_code == 405
    assert set(r.headers["allow"].replace(" ", "").split(",")) == {"GET", "HEAD", "POST"}
    assert r.json()["error"]
    assert server.get("/no/such/path").status_code == 404
    assert server.get("/no/such/path").json()["error"]
    for path in ("/api/health/", f"{API}/"):
        slashed = server.get(path, headers={"Host": "usage.example.com"})
        assert slashed.status_code == 404, (path, slashed.headers)
        assert "location" not in slashed.headers
        assert slashed.json()["error"]
    posted = server.post(f"{API}/", content=b"{}", headers={"Content-Type": "application/json"})
    assert posted.status_code == 404 and "location" not in posted.headers
    assert server.get(API).status_code == 200


needs_chattr = pytest.mark.skipif(
    not IS_ROOT or shutil.which("chattr") is None, reason="chattr +i needs root and e2fsprogs"
)


@needs_chattr
def test_post_when_the_spool_cannot_be_written_is_503(root: Path, server):
    tmp = root / "spool" / "tmp"
    tmp.mkdir(parents=True)
    done = subprocess.run(["chattr", "+i", str(tmp)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"chattr +i does not work here: {done.stderr.strip()}")
    try:
        r = post(server, fresh_payload())
        assert r.status_code == 503
        assert r.json()["success"] is False
        assert "spool" in r.json()["message"]
        # One line, naming the client, the path and the cause, as an ERROR: the fault is
        # this server's, not the client's.
        lines = [line for line in server.log.splitlines() if "cannot be written" in line]
        assert len(lines) == 1, server.log
        assert " ERROR client 127.0.0.1:" in lines[0]
        assert f"POST {API}: the spool cannot be written: cannot stage " in lines[0]
        assert f" in {tmp}: " in lines[0]
        assert lines[0].endswith(
            f"Operation not permitted: its folder {tmp} is immutable (chattr -i {tmp} clears "
            "that) [EPERM]; answered 503"
        )
        assert "Traceback" not in server.log
        # Health says so at once: the data's age alone would stay healthy for minutes
        # while every snapshot is refused.
        health = server.get("/api/health").json()
        assert health["status"] != "healthy", health  # unhealthy here: no data yet
        assert "POSTed snapshots cannot be written to the spool since " in health["reason"]
        assert health["spool"]["writeFault"]["cause"].endswith("[EPERM]"), health
    finally:
        subprocess.run(["chattr", "-i", str(tmp)], check=True)
    assert spool_drops(root) == []
    assert post(server, fresh_payload()).status_code == 202
    assert "writeFault" not in server.get("/api/health").json()["spool"]
    # The end of the fault is said too: the refusals stopping says nothing by itself.
    wait_for(lambda: "the spool is written again: POSTs are accepted" in server.log, 5)
    again = [line for line in server.log.splitlines() if "written again" in line]
    assert len(again) == 1 and f"(chattr -i {tmp} clears that) [EPERM])" in again[0], again


# -- the command line ----------------------------------------------------------------------


def test_serve_usage_errors_are_one_line(root: Path, tmp_path: Path):
    bad = run_cli(root, "serve", "--listen", "nowhere")
    assert bad.returncode == 2
    assert "--listen" in bad.stderr
    missing = run_cli(root, "serve", "--api-key-file", str(tmp_path / "absent"))
    assert missing.returncode == 1
    assert missing.stderr.startswith("error: cannot read --api-key-file")
    assert len(missing.stderr.strip().splitlines()) == 1
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = run_cli(root, "serve", "--listen", f"127.0.0.1:{port}")
    assert busy.returncode == 1
    assert busy.stderr.strip().splitlines()[-1].startswith("error: cannot listen on")
    assert "Traceback" not in busy.stderr


def test_sigterm_stops_it_with_0_and_a_stop_line(root: Path):
    server = ServeProcess(root).start()
    assert server.get("/openapi.json").status_code == 200
    assert server.stop() == 0
    last = server.log.strip().splitlines()[-1]
    assert " INFO serve: stopped: 1 requests answered, 0 POSTs accepted, " in last


@pytest.mark.skipif(shutil.which("prlimit") is None, reason="prlimit (util-linux) is not installed")
def test_a_server_out_of_descriptors_says_so_once_in_a_while_and_goes_on(tmp_path: Path) -> None:
    """Connections held open past the limit on open files: asyncio reports every accept
    that fails (here 200,000 in 10 s: each failure schedules another try). The log says
    it in one line per 10 s, with how many more there were, never "please report"; the
    server answers again once the connections are closed."""
    root = tmp_path / "root"
    root.mkdir()
    with ServeProcess(root, wrapper=_FEW_FILES) as server:  # stopped however the test ends
        began = time.monotonic()
        held: list[socket.socket] = []
        try:
            _hold_until_out_of_descriptors(server, held)
        finally:
            for sock in held:
                sock.close()
        wait_for(lambda: _answers(server), 30, "an answer once the connections are closed")
        lasted = time.monotonic() - began
        assert server.stop() == 0
        log = server.log
    said = [line for line in log.splitlines() if "out of system resource" in line]
    assert 1 <= len(said) <= 1 + lasted // 10, said
    assert said[0].endswith(
        "socket.accept() out of system resource: Too many open files [EMFILE]; the "
        "server goes on, and accepts again once some are free (the limit on open "
        "files: ulimit -n, the unit's LimitNOFILE=)"
    ), said
    assert "please report" not in log


_FEW_FILES = (shutil.which("prlimit") or "prlimit", "--nofile=30:30", "--")


def _hold_until_out_of_descriptors(server: ServeProcess, held: list[socket.socket]) -> None:
    """Open connections to ``server`` (kept in ``held``) until it says it cannot accept."""
    wait_for(
        lambda: (
            held.append(socket.create_connection(("127.0.0.1", server.port)))
            or "out of system resource" in server.log
        ),
        30,
        "the listener out of descriptors",
    )


@pytest.mark.skipif(shutil.which("prlimit") is None, reason="prlimit (util-linux) is not installed")
def test_a_stop_while_out_of_descriptors_says_nothing_of_the_accepts_it_no_longer_needs(
    tmp_path: Path,
) -> None:
    """A stop while the listener is out of descriptors, with a request still in flight:
    the accepts asyncio scheduled again for a second later fail on the closed listener
    while the stop waits for that request. They are no fault of anyone's (there is
    nothing left to accept), so no line says "please report"."""
    root = tmp_path / "root"
    root.mkdir()
    with ServeProcess(root, wrapper=_FEW_FILES) as server:  # stopped however the test ends
        in_flight = socket.create_connection(("127.0.0.1", server.port))
        held = [in_flight]
        try:
            # A body still to come keeps the stop waiting for its grace period.
            in_flight.sendall(
                b"POST /api/claude/console-usage HTTP/1.1\r\nHost: test\r\n"
                b"Content-Type: application/json\r\nX-API-Key: "
                + KEY.encode()
                + b"\r\nContent-Length: 100\r\n\r\n{"
            )
            _hold_until_out_of_descriptors(server, held)
            server.proc.send_signal(signal.SIGTERM)
            assert server.proc.wait(60) == 0
        finally:
            for sock in held:
                sock.close()
        log = server.log
    assert "was still sending its request body when the server stopped" in log
    assert "please report" not in log, log[-2000:]


def _answers(server: ServeProcess) -> bool:
    try:
        return server.get("/api/health").status_code in (200, 503)
    except httpx.HTTPError:
        return False


def test_a_post_with_very_many_problems_is_a_short_400(root: Path, server):
    """A body of 1 MiB with some 130,000 problems: the answer lists the first ones and
    counts the rest, in a body and a log line a few KiB long."""
    r = post(server, many_problems())
    assert r.status_code == 400
    assert len(r.content) < 16 * 1024
    body = r.json()
    assert body["errors"][-1]["type"] == "more_problems"
    assert body["errors"][-1]["count"] > 100_000
    wait_for(lambda: "answered 400" in server.log, what="the refusal's line")
    assert max(len(line) for line in server.log.splitlines()) < 16 * 1024
    assert spool_drops(root) == []
