"""``ingester serve``'s query parameters as a hostile or careless client sends them.

A real server over a real history: every parameter ``serve`` reads is taken once. One
given twice with different values (``?version=1&version=2``, which Express hands its
handler as an array) is a 400 naming it, in the shape of that parameter's other 400s;
given twice with the same value it means what it means once. A number too long for
Python's integer parsing is a 400, never an internal error.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from support.serveproc import ServeProcess, fresh_payload, put_version, version_name

API = "/api/claude/console-usage"
VERSIONS = f"{API}/versions"
SERIES = f"{API}/series"
T0 = datetime(2026, 11, 1, 12, 0, 0, tzinfo=UTC)


@pytest.fixture
def names(root: Path) -> list[str]:
    """Three versions ingested a minute apart, oldest first."""
    out = []
    for i in range(3):
        name = version_name(T0 + timedelta(minutes=i), i)
        put_version(root, name, fresh_payload(timedelta(minutes=1), seq=i))
        out.append(name)
    return out


@pytest.fixture
def server(root: Path, names: list[str]) -> Iterator[ServeProcess]:
    with ServeProcess(root) as proc:
        yield proc


def test_a_parameter_given_twice_with_different_values_is_a_400_naming_it(
    server: ServeProcess, names: list[str]
) -> None:
    first, second = "2026-11-01T12:00:00Z", "2026-11-01T12:02:00Z"
    cases = [
        (API, "version", ["1", "2"], "InvalidVersion"),
        (API, "version", ["", "2"], "InvalidVersion"),
        (API, "timestamp", [first, second], "InvalidTimestamp"),
        (VERSIONS, "limit", ["1", "2"], "InvalidLimit"),
        (VERSIONS, "before", [names[2], names[1]], "InvalidCursor"),
        (VERSIONS, "after", [names[0], names[1]], "InvalidCursor"),
        (SERIES, "since", [first, second], "InvalidTime"),
        (SERIES, "until", [first, second], "InvalidTime"),
        (SERIES, "by", ["ingestedAt", "lastUpdated"], "InvalidBy"),
    ]
    for path, name, values, error in cases:
        r = server.get(path, params=[(name, value) for value in values])
        assert r.status_code == 400, (path, name, values, r.text)
        body = r.json()
        assert body["error"] == error, (name, body)
        message = body["message"]
        assert message.startswith(f"{name} is given 2 times with different values"), message
        assert "give it once" in message, message
        # The rest of the shape that parameter's other 400s have.
        if error == "InvalidVersion":
            assert body["validRange"] == "1 to 3 (from the oldest) or -1 to -3 (from the newest)"
        if error in ("InvalidTimestamp", "InvalidTime", "InvalidBy"):
            assert body["example"]
    assert "internal error" not in server.log


def test_a_parameter_given_twice_with_the_same_value_means_what_it_means_once(
    server: ServeProcess, names: list[str]
) -> None:
    twice = server.get(API, params=[("version", "2"), ("version", "2")])
    assert twice.status_code == 200, twice.text
    assert twice.json()["versionInfo"]["filename"] == names[1]
    page = server.get(VERSIONS, params=[("limit", "1"), ("limit", "1")])
    assert page.status_code == 200, page.text
    assert [v["name"] for v in page.json()["versions"]] == [names[2]]


def test_a_timestamp_still_wins_over_a_version_given_twice(
    server: ServeProcess, names: list[str]
) -> None:
    # As over a malformed version: the timestamp decides, the version is not read.
    r = server.get(
        API,
        params=[("timestamp", "2026-11-01T12:00:00Z"), ("version", "2"), ("version", "3")],
    )
    assert r.status_code == 200, r.text
    assert r.json()["versionInfo"]["filename"] == names[0]


def test_a_number_longer_than_python_parses_is_a_400_not_an_internal_error(
    server: ServeProcess,
) -> None:
    long_one = "0" * 5000 + "1"
    page = server.get(VERSIONS, params={"limit": long_one})
    assert page.status_code == 400, page.text
    assert page.json()["error"] == "InvalidLimit"
    chosen = server.get(API, params={"version": long_one})
    assert chosen.status_code == 400, chosen.text
    assert chosen.json()["error"] == "InvalidVersion"
    assert "internal error" not in server.log
