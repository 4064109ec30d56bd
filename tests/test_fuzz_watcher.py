"""Hostile input against the real ``ingester watch`` (a subprocess), with hypothesis.

One watcher runs for the whole module; every example drops a few files with fresh names
(random bytes, random JSON, random valid payloads built from the model's rules, random
names with spaces, unicode and newlines, some renamed in and some written in place,
interleaved). After each example, all of them must have been taken, and:

* the watcher is alive;
* every stored version passes ``judge_payload`` (nothing invalid is ever stored);
* the stored payloads are exactly the valid drops so far, each once (none lost);
* the quarantined files are exactly the invalid drops so far, each once, with reasons.

``INGESTER_LONG_TESTS=1`` runs many more examples (marked ``slow``).
"""

from __future__ import annotations

import itertools
import json
import os
import string
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import wait_for
from support.watchproc import WatchProcess
from test_crashpoints import LONG, metadata_problems, rejected_entries, settings_for, version_files

from ingester.payload.model import PayloadRejected, judge_payload

EXAMPLES = 25
LONG_EXAMPLES = 400

# -- strategies ---------------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=20,
)

percentages = st.integers(0, 100) | st.floats(0, 100, allow_nan=False)
windows = st.fixed_dictionaries(
    {"resetsIn": st.text(min_size=1, max_size=20), "percentageUsed": percentages},
    optional={"extra": json_values},
)
# A day inside the gate's window at each end, so that no offset carries a time out of it.
timestamps = st.datetimes(
    min_value=datetime(2000, 1, 2),
    max_value=datetime(2100, 1, 1),
    timezones=st.sampled_from([timezone(timedelta(minutes=m)) for m in (0, 60, -300, 330)]),
)
KNOWN = {"currentSession", "weeklyLimits", "lastUpdated", "isPartial", "extractionErrors"}


@st.composite
def valid_payloads(draw: st.DrawFn) -> bytes:
    """A payload that ``judge_payload``'s rules accept, serialised in a random style."""
    body: dict[str, Any] = {}
    sections = draw(st.sampled_from(["current", "weekly", "both"]))
    if sections in ("current", "both"):
        body["currentSession"] = draw(windows)
    if sections in ("weekly", "both"):
        body["weeklyLimits"] = {"allModels": draw(windows), "sonnetOnly": draw(windows)}
    stamp = draw(timestamps).isoformat()
    body["lastUpdated"] = stamp.replace("+00:00", "Z") if draw(st.booleans()) else stamp
    if draw(st.booleans()):
        body["isPartial"] = draw(st.booleans())
    if draw(st.booleans()):
        body["extractionErrors"] = draw(
            st.dictionaries(st.text(max_size=10), st.text(max_size=20), max_size=3)
        )
    extra = draw(
        st.dictionaries(
            st.text(max_size=10).filter(lambda k: k not in KNOWN), json_values, max_size=3
        )
    )
    body.update(extra)
    items = list(body.items())
    order = draw(st.permutations(items))
    text = json.dumps(
        dict(order), ensure_ascii=draw(st.booleans()), indent=draw(st.sampled_from([None, 0, 2]))
    )
    return text.encode()


random_json = json_values.map(lambda v: json.dumps(v).encode())
payloads = st.one_of(
    st.binary(max_size=300),
    random_json,
    valid_payloads(),
    valid_payloads().map(lambda b: b[: len(b) // 2]),  # a truncated valid one
)

_NAME_CHARS = st.characters(
    blacklist_categories=("Cs",),  # lone surrogates cannot be file names
    blacklist_characters="/\0",
)


def _name_ok(text: str) -> bool:
    # 200 characters at most, and room in 255 bytes for "-N.reason.json" in rejected/
    return not text.startswith(".") and len((text + ".json").encode()) <= 230


names = st.one_of(
    st.text(_NAME_CHARS, min_size=1, max_size=195),
    st.text(string.ascii_letters + " \n\t-_", min_size=1, max_size=40),
).filter(_name_ok)

drops = st.lists(
    st.tuples(names, payloads, st.sampled_from(["rename", "inplace"])), min_size=1, max_size=5
)


# -- the shared watcher -------------------------------------------------------------------


class Ledger:
    """The one watcher and what it has been given so far."""

    def __init__(self, root: Path, watcher: WatchProcess) -> None:
        self.root = root
        self.watcher = watcher
        self.settings = settings_for(root)
        self.valid: Counter[bytes] = Counter()
        self.invalid: Counter[bytes] = Counter()
        self.serial = itertools.count()

    @property
    def spool(self) -> Path:
        return self.settings.spool_dir

    def unique(self, name: str) -> str:
        """A name never used before in this module: a serial prefix keeps it unique."""
        return f"{next(self.serial):04d} {name}.json"

    def give(self, batch: list[tuple[str, bytes, str]]) -> list[str]:
        """Drop the batch, interleaving in-place writes with renames; returns the names."""
        named = [(self.unique(n), data, how) for n, data, how in batch]
        tmp = self.spool / "tmp"
        handles = []
        for name, data, how in named:
            if how == "inplace":
                handle = open(self.spool / name, "wb")  # noqa: SIM115 - closed below
                handle.write(data[: len(data) // 2])
                handle.flush()
                handles.append((handle, data[len(data) // 2 :]))
        for name, data, how in named:
            if how == "rename":
                staged = tmp / f".{next(self.serial)}.part"
                staged.write_bytes(data)
                os.rename(staged, self.spool / name)
        for handle, rest in handles:
            handle.write(rest)
            handle.close()
        for _name, data, _how in named:
            try:
                judge_payload(data)
            except PayloadRejected:
                self.invalid[data] += 1
            else:
                self.valid[data] += 1
        return [name for name, _, _ in named]

    def check(self, given_names: list[str], timeout: float = 20) -> None:
        def all_taken() -> bool:
            if self.watcher.proc.poll() is not None:
                raise AssertionError(f"the watcher died:\n{self.watcher.log[-3000:]}")
            return not any(os.path.lexists(self.spool / n) for n in given_names)

        wait_for(all_taken, timeout, "every drop taken")
        history = self.settings.history_dir

        def settled() -> list[str]:
            problems = []
            stored = Counter()
            for path in version_files(history):
                data = path.read_bytes()
                stored[data] += 1
                try:
                    judge_payload(data)
                except PayloadRejected as exc:
                    problems.append(f"stored an invalid payload {path.name}: {exc.reason}")
            if stored != self.valid:
                problems.append(
                    f"stored != valid drops: lost {sum((self.valid - stored).values())}, "
                    f"extra {sum((stored - self.valid).values())}"
                )
            rejected = self.settings.rejected_dir
            quarantined, reasons, _dots = rejected_entries(rejected)
            got = Counter((rejected / n).read_bytes() for n in quarantined)
            if got != self.invalid:
                problems.append(f"rejected/ != invalid drops: {len(got)} vs {len(self.invalid)}")
            missing = [n for n in quarantined if f"{n}.reason.json" not in reasons]
            if missing:
                problems.append(f"no reason file for {missing}")
            problems += metadata_problems(self.settings)
            return problems

        try:
            wait_for(lambda: not settled(), 10, "the history to settle")
        except AssertionError:
            raise AssertionError("\n".join(settled()) + "\n" + self.watcher.log[-3000:]) from None
        assert self.watcher.proc.poll() is None


@pytest.fixture(scope="module")
def ledger(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ledger]:
    root = tmp_path_factory.mktemp("fuzz") / "root"
    root.mkdir()
    # A 1 s rescan is the backstop; retention is set wide so that nothing is deleted.
    with WatchProcess(
        root,
        "--rescan-interval",
        "1",
        "--retry-max",
        "0.5",
        global_args=("--max-versions", "100000"),
    ) as watcher:
        (root / "spool" / "tmp").mkdir(parents=True, exist_ok=True)
        yield Ledger(root, watcher)
        assert watcher.stop() == 0, watcher.log[-3000:]


FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)
FUZZ_LONG = settings(FUZZ, max_examples=LONG_EXAMPLES)


@FUZZ
@given(batch=drops)
def test_hostile_drops_never_kill_lose_or_store_invalid(ledger: Ledger, batch: list[Any]) -> None:
    ledger.check(ledger.give(batch))


@FUZZ
@given(
    batch=st.lists(
        st.tuples(names, valid_payloads(), st.sampled_from(["rename", "inplace"])),
        min_size=1,
        max_size=4,
    )
)
def test_valid_drops_with_odd_names_are_all_stored_once(ledger: Ledger, batch: list[Any]) -> None:
    for _name, data, _how in batch:
        judge_payload(data)  # the strategy follows the model's rules
    ledger.check(ledger.give(batch))


@FUZZ
@given(data=st.binary(max_size=2000) | random_json)
def test_random_bytes_and_json_are_rejected_or_stored(ledger: Ledger, data: bytes) -> None:
    ledger.check(ledger.give([("bytes", data, "rename")]))


@pytest.mark.slow
@pytest.mark.skipif(not LONG, reason="long mode: set INGESTER_LONG_TESTS=1")
@FUZZ_LONG
@given(batch=drops)
def test_hostile_drops_long(ledger: Ledger, batch: list[Any]) -> None:
    ledger.check(ledger.give(batch))


def test_invalid_drop_with_a_long_name_does_not_block_the_spool(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    with WatchProcess(root, "--rescan-interval", "1", "--retry-max", "0.5") as watcher:
        (root / "spool" / "tmp").mkdir(parents=True, exist_ok=True)
        own = Ledger(root, watcher)
        long_name = "x" * 240  # 250 bytes with the serial prefix and .json: a legal file name
        given_names = own.give([(long_name, b"not json", "rename")])
        given_names += own.give([("after the long one", payload_for_test(), "rename")])
        own.check(given_names, timeout=5)


def payload_for_test() -> bytes:
    return json.dumps(
        {
            "currentSession": {"resetsIn": "1 hr", "percentageUsed": 3},
            "lastUpdated": "2026-11-27T14:05:00Z",
        }
    ).encode()
