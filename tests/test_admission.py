"""The connection limits and the refusal summaries, as pure bookkeeping (no sockets)."""

from __future__ import annotations

from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from ingester.runtime.admission import ConnectionLimits, EventTally, client_key, format_peer


def test_client_keys() -> None:
    assert client_key(("192.0.2.7", 5000)) == "192.0.2.7"
    # An IPv6 host is routinely given a whole /64: it counts as one client.
    assert client_key(("2001:db8:1:2::7", 5000, 0, 0)) == "2001:db8:1:2::/64"
    assert client_key(("2001:db8:1:2:ffff::1", 1, 0, 0)) == "2001:db8:1:2::/64"
    assert client_key(("2001:db8:1:3::7", 1, 0, 0)) != "2001:db8:1:2::/64"
    assert client_key(("::ffff:192.0.2.7", 5000, 0, 0)) == "192.0.2.7"
    assert client_key(("fe80::1%lo", 1, 0, 1)) == "fe80::/64"
    # A Unix socket peer has no address: only the limit in all applies.
    for peer in ("", None, b"", ("not an address", 1)):
        assert client_key(peer) is None


def test_peers_in_words() -> None:
    assert format_peer(("192.0.2.7", 5000)) == "192.0.2.7:5000"
    assert format_peer(("::1", 5000, 0, 0)) == "[::1]:5000"
    assert format_peer("") == "local"
    assert format_peer(None) == "local"


def test_one_address_gets_its_share_and_no_more() -> None:
    limits = ConnectionLimits(max_total=10, per_client=3)
    assert [limits.admit("a") for _ in range(5)] == [None, None, None, "per_client", "per_client"]
    assert limits.admit("b") is None
    limits.release("a")
    assert limits.admit("a") is None
    assert limits.refused == Counter(per_client=2)


def test_every_slot_taken_refuses_everyone() -> None:
    limits = ConnectionLimits(max_total=4, per_client=3)
    assert [limits.admit(k) for k in ("a", "a", "b", "c", "d", None)] == [
        None,
        None,
        None,
        None,
        "total",
        "total",
    ]
    limits.release(None)  # a Unix-socket peer was never counted per client
    assert limits.admit("d") is None


@given(st.lists(st.tuples(st.booleans(), st.sampled_from(["a", "b", "c", None]))))
def test_counts_never_exceed_the_limits_and_return_to_zero(ops: list) -> None:
    limits = ConnectionLimits(max_total=5, per_client=2)
    held: list[str | None] = []
    for opening, key in ops:
        if opening:
            if limits.admit(key) is None:
                held.append(key)
        elif key in held:
            held.remove(key)
            limits.release(key)
        assert limits.total == len(held) <= 5
        for k, n in limits.by_client.items():
            assert n == held.count(k) <= 2
    for key in held:
        limits.release(key)
    assert limits.total == 0
    assert limits.by_client == {}


def test_a_flood_is_reported_once_per_interval() -> None:
    now = [100.0]
    lines: list[str] = []
    tally = EventTally(
        lambda n, span, reasons, clients: f"{n} in {span:g} s {dict(reasons)} {dict(clients)}",
        lines.append,
        lambda: now[0],
        interval=10,
    )
    tally.note("per_client", "a")  # the first is reported at once
    assert lines == ["1 in 0 s {'per_client': 1} {'a': 1}"]
    for i in range(300):
        now[0] += 0.01
        tally.note("per_client" if i % 3 else "total", "a" if i % 2 else None)
    assert len(lines) == 1  # the rest wait for the interval
    assert tally.due() is not None and 6 < tally.due() < 7
    now[0] += 10
    tally.flush()
    assert lines[1] == "300 in 12.99 s {'total': 100, 'per_client': 200} {'local': 150, 'a': 150}"
    tally.flush()
    assert len(lines) == 2 and tally.due() is None  # nothing more to say
    now[0] += 20
    tally.note("total", "b")  # quiet for an interval: reported at once again
    assert len(lines) == 3
