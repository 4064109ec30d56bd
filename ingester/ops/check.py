"""Monitoring: ``ingester check``, one line and an exit code in the Nagios-plugin convention.

Three things are judged, five with a mirror, each with a WARNING threshold and CRITICAL at
twice it (the mirror's hold: at all of it):

========================  ==========================  =====================================
what                      WARNING                     CRITICAL
========================  ==========================  =====================================
age of the newest data    ``lastUpdated`` older than  older than 2 x ``--max-age``; also:
(the scraper stopped?)    ``--max-age`` (15 min), or  no history, no version, the newest
                          dated more than 1 h ahead   version damaged or unreadable
                          of this clock
spool backlog             more than ``--max-backlog`` more than 2 x N, or a waiting drop
(the watcher stopped?)    drops waiting (50); any     older than ``--max-age`` (by its
                          drop while no watcher of    mtime, or with a watcher running by
                          this spool runs; one a      the later of its mtime and the
                          running watcher has left    watcher's start)
                          unstored for 183 s
rejections                more than                   more than 2 x N
(the scraper is broken?)  ``--max-rejected-per-hour``
                          in the last hour (10)
mirror lag (only with a   the oldest version not yet  older than 2 x ``--max-mirror-lag``;
mirror: the object store  uploaded is older than      also: the object store refused the
or the mirror is down?)   ``--max-mirror-lag`` (15m)  credentials, an action by its access
                                                      rules, the account, or the request
                                                      time (this machine's clock is off)
mirror hold (only with a  expired versions kept for   the hold is full: from now on each
mirror's state file:      the mirror fill             version that expires is deleted
will retention soon       ``--mirror-hold-warning``   without ever being uploaded
delete what was never     percent (80) of its
mirrored?)                ``--mirror-hold``
========================  ==========================  =====================================

Three more items appear only when there is something to say (the line is unchanged
otherwise): a latest link that does not name the newest version though no update can be
in flight (WARNING, by :func:`~ingester.ops.verify.link_in_flight`, verify's rule); the
room left on the spool's and the history's filesystems (WARNING with
room for fewer than :data:`ROOM_WARNING_DROPS` drops of the largest size,
``--max-bytes``; CRITICAL below one, with no inode left, or read-only: every POST and
``submit`` fails there now, long before the data is old enough for the age item), and
files in ``.claimed/`` the watcher will not take (WARNING, naming them; not backlog).

Usage limits are judged only when asked, one item per limit of the forecast:
``--usage-warning``/``--usage-critical`` (the percentage used, at or above; CRITICAL is
not twice WARNING here) and ``--forecast`` (WARNING when the limit is projected to reach
100 % before it resets, or within the span the reset's words leave open, where it may
come first; CRITICAL when that is within ``--forecast-critical``; see
:mod:`ingester.usage.forecast`). A limit the newest snapshot lacks (a partial scrape) is judged
on its last reading, which the forecast holds while its window lasts, however old that
reading is, and said so; once it has been missing for longer than ``--max-age`` its first
item is at least WARNING (the scraper runs but no longer reads it). A missing limit whose
window has reset since its last reading keeps one item, without a value, WARNING on the
same rule.

A mirror counts as configured when the settings name one (``mirror``) or when its state
file ``<history>/_mirror.json`` exists, the same rule as ``status`` and retention use. The
exit code is the worst item's: 0 OK, 1 WARNING, 2 CRITICAL. Everything here reads;
nothing takes the history lock or the mirror's lock.

The items and their plugin format are :mod:`.check_items`'; the usage limits' items,
:mod:`.check_usage`'s. The versions are read through a
:class:`~ingester.history.base.HistoryReader`. Given
another history than the local one (``check --from s3://BUCKET/PREFIX``: the mirror),
only what its versions tell is judged (the age, and the usage items when asked): the
spool, the rejections and the mirror's progress belong to the machine that ingests.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ..clock import iso_utc
from ..errors import is_permission_problem
from ..intake.set_aside import size_words
from ..intake.unstored import UNSTORED_AFTER_S, unstored_words
from ..mirror.objectstore import ACCESS_RULE, ACCOUNT, CLOCK, CREDENTIALS, refusal
from ..mirror.state import STUCK
from ..runtime.logs import one_line
from ..usage.words import dated_ahead, seconds_words
from .check_facts import Facts, MirrorFacts
from .check_items import (
    CRITICAL,
    OK,
    STATUS_NAMES,
    WARNING,
    CheckLimits,
    Judgement,
    format_perfdata,
    parse_duration,
    plain_number,
)
from .check_usage import judge_usage
from .queries import GONE_UNDER_READS, strays_words
from .verify import LINK_IN_FLIGHT_S

__all__ = [
    "CRITICAL",
    "OK",
    "STATUS_NAMES",
    "WARNING",
    "CheckLimits",
    "CheckResult",
    "Judgement",
    "format_perfdata",
    "judge",
    "parse_duration",
]


@dataclass(frozen=True)
class CheckResult:
    """The verdict: ``code`` (the worst item's), the items, and the facts they came from."""

    code: int
    items: list[Judgement]
    facts: Facts

    @property
    def status(self) -> str:
        """``OK``, ``WARNING`` or ``CRITICAL``."""
        return STATUS_NAMES[self.code]

    def summary(self) -> str:
        """The items' words, the worst first."""
        ordered = sorted(self.items, key=lambda i: -i.code)
        return "; ".join(i.message for i in ordered)

    def line(self) -> str:
        """The plugin's one line: ``INGESTER STATUS - summary | perfdata``.

        ``|`` starts the performance data and a line break ends the first line, so
        neither may appear in the words (a path or a reason can hold them): they become
        ``/`` and a space, as a tab does; any other control character (an escape that
        would reach a terminal or a mail raw) is written as the log writes it
        (``\x1b``). Without any performance data the line ends after the words.
        """
        spaced = re.sub(r"[\r\n\t]+", " ", self.summary()).replace("|", "/")
        words = one_line(spaced)
        perf = " ".join(p for p in (i.perfdata() for i in self.items) if p)
        return f"INGESTER {self.status} - {words}" + (f" | {perf}" if perf else "")

    def to_json(self) -> dict[str, Any]:
        """The ``check --json`` object."""
        f = self.facts
        return {
            "status": self.status,
            "code": self.code,
            "summary": self.summary(),
            "checks": [
                {
                    "name": i.name,
                    "status": STATUS_NAMES[i.code],
                    "value": i.value,
                    "warning": i.warning,
                    "critical": i.critical,
                    "message": i.message,
                }
                for i in self.items
            ],
            "now": iso_utc(f.now),
            "from": f.source,
            "latest": f.latest,
            "lastUpdated": f.last_updated.isoformat().replace("+00:00", "Z")
            if f.last_updated
            else None,
            "backlog": f.backlog,
            "strays": list(f.strays),
            "freeSpace": [
                {
                    "holds": list(r.holds),
                    "path": str(r.path),
                    "freeBytes": r.free,
                    "freeInodes": r.files,
                    "readOnly": r.read_only,
                }
                for r in f.rooms
            ],
            "oldestDropAgeSeconds": f.oldest_drop_age,
            "rejectedLastHour": f.rejected_last_hour,
            "watcherPid": f.watcher_pid,
            "mirror": None
            if f.mirror is None
            else {
                "target": f.mirror.target,
                "state": f.mirror.state,
                "detail": f.mirror.detail,
                "running": f.mirror.pid is not None,
                "pid": f.mirror.pid,
                "backlog": f.mirror.backlog,
                "oldestWaiting": f.mirror.oldest,
                "lagSeconds": f.mirror.lag,
                "held": f.mirror.held,
                "holdMax": f.mirror.hold_max,
            },
            "usage": f.usage_json,
        }


def _over(value: float, warning: float) -> int:
    if value > 2 * warning:
        return CRITICAL
    return WARNING if value > warning else OK


def _latest_problem(name: str | None, error: str | None) -> str:
    """Why the newest version gives no age: this user may not read it, it was deleted
    under every read, or it is damaged."""
    if is_permission_problem(error):
        return f"newest version {name} is {error}"
    if error == GONE_UNDER_READS:
        return f"newest version {name} is gone: {error}"
    return f"newest version {name} is damaged: {error}"


def judge(facts: Facts, limits: CheckLimits) -> CheckResult:
    """Judge ``facts`` against ``limits`` (pure: no I/O)."""
    items: list[Judgement] = []
    warn_age, crit_age = limits.max_age, 2 * limits.max_age
    if facts.history_problem is not None:
        items.append(Judgement("age", CRITICAL, None, warn_age, crit_age, facts.history_problem))
    elif facts.latest is None:
        # Versions held but all dated ahead are no latest, yet "no version" would
        # contradict status and verify, which list them.
        none = (
            f"no version to judge: the {facts.held} held are dated more than a day ahead of "
            "this clock"
            if facts.held
            else "no version yet"
        )
        items.append(Judgement("age", CRITICAL, None, warn_age, crit_age, none))
    elif facts.latest_error is not None or facts.last_updated is None:
        items.append(
            Judgement(
                "age",
                CRITICAL,
                None,
                warn_age,
                crit_age,
                _latest_problem(facts.latest, facts.latest_error),
            )
        )
    elif (ahead := dated_ahead(facts.last_updated, facts.now)) is not None:
        items.append(Judgement("age", WARNING, None, warn_age, crit_age, ahead))
    else:
        age = max(0.0, (facts.now - facts.last_updated).total_seconds())
        code = _over(age, warn_age)
        words = f"newest data {seconds_words(age)} old"
        if code:
            limit = crit_age if code == CRITICAL else warn_age
            words += f" (more than {seconds_words(limit)})"
        items.append(Judgement("age", code, round(age, 1), warn_age, crit_age, words, "s"))

    if facts.source is None:
        items += _judge_intake(facts, limits)
    if facts.mirror is not None:
        items.append(_judge_mirror(facts.mirror, limits.max_mirror_lag))
        if facts.mirror.hold_max is not None:
            items.append(_judge_hold(facts.mirror, facts.mirror.hold_max, limits))
    if limits.judges_usage:
        items += judge_usage(facts, limits)
    return CheckResult(max(i.code for i in items), items, facts)


def _judge_intake(facts: Facts, limits: CheckLimits) -> list[Judgement]:
    """The spool's backlog and the rejections of the last hour; and, when there are any,
    the files in ``.claimed/`` that no watcher takes."""
    items = [_judge_backlog(facts, limits), _judge_rejected(facts, limits)]
    room = _judge_room(facts)
    if room is not None:
        items.append(room)
    if facts.latest_link_problem is not None:
        # Every reader of the link (the page's server, a backup, a copy to the mirror)
        # serves an old version meanwhile, though the data looks fresh to the age item.
        words = (
            f"the latest link {facts.latest_link_problem} (the newest was stored more than "
            f"{LINK_IN_FLIGHT_S:.0f} s ago, so this is no update in flight: the watcher's "
            "log says why; 'ingester verify' tells more)"
        )
        items.append(Judgement("latest_link", WARNING, None, 0, 0, words))
    if facts.strays and facts.claimed_dir is not None:
        # No drop the watcher will store (it leaves them, with a warning, for good), so
        # no backlog; but nothing ever clears them either: an operator must look.
        # The count goes without thresholds: a grapher judging it by a bound would call
        # one file CRITICAL or nothing at all, where the plugin says WARNING.
        words = strays_words(facts.claimed_dir, facts.strays)
        count = (("claimed_strays", len(facts.strays)),)
        items.append(Judgement("claimed_strays", WARNING, None, 0, 0, words, counters=count))
    return items


def _judge_backlog(facts: Facts, limits: CheckLimits) -> Judgement:
    """The spool backlog; unknown (no value, OK, said so) when the spool cannot be listed.

    Not judged then: a member of the read-only group may not list the spool by design,
    and the age item alerts when the scraper's data stops arriving.
    """
    warn, crit = limits.max_backlog, 2 * limits.max_backlog
    backlog = facts.backlog
    if backlog is None:
        return Judgement(
            "backlog", OK, None, warn, crit, f"backlog unknown ({facts.backlog_problem})"
        )
    code = _over(backlog, warn)
    words = f"backlog {backlog}"
    if code:
        words += f" (more than {crit if code == CRITICAL else warn})"
    oldest = facts.oldest_drop_age
    if backlog and oldest is not None:
        wait_code, wait_words = _judge_wait(facts, backlog, oldest, limits.max_age)
        code = max(code, wait_code)
        words += wait_words
    if facts.backlog_problem is not None:
        words += f" ({facts.backlog_problem})"
    return Judgement("backlog", code, backlog, warn, crit, words)


def _judge_wait(facts: Facts, backlog: int, oldest: float, max_age: float) -> tuple[int, str]:
    """How long the oldest of ``backlog`` waiting drops (``oldest`` seconds by its mtime)
    has waited, judged by who should take it; ``(code, words to add)``.

    No watcher of this spool runs: WARNING at once (nothing will store them), CRITICAL
    once the oldest is older than ``max_age``. One runs: WARNING once it has left the
    oldest unstored for :data:`~ingester.intake.unstored.UNSTORED_AFTER_S` (a store that
    keeps failing: a full disk, an immutable history), CRITICAL past ``max_age``, both
    counted from the later of the drop's mtime and the watcher's start, so a watcher
    that starts on an old backlog is given its time. Whether one runs cannot be told:
    CRITICAL past ``max_age`` only.
    """
    age = seconds_words(oldest)
    if facts.watcher_absent is not None:
        code = CRITICAL if oldest > max_age else WARNING
        return code, (
            f", oldest waiting {age}: {backlog} drop(s) waiting and {facts.watcher_absent}"
        )
    if facts.unstored_s is not None:
        unstored = facts.unstored_s
        if unstored <= UNSTORED_AFTER_S:
            return OK, ""
        who = (
            "the watcher" if facts.watcher_pid is None else f"the watcher (pid {facts.watcher_pid})"
        )
        code = CRITICAL if unstored > max_age else WARNING
        return code, f", oldest waiting {age}: {who} runs but {unstored_words(unstored)}"
    if oldest > max_age:
        why = f"; {facts.watcher_unknown}" if facts.watcher_unknown else ""
        return CRITICAL, f", oldest waiting {age} (nothing takes the drops?{why})"
    return OK, ""


ROOM_WARNING_DROPS = 10
"""WARNING when the spool's or the history's filesystem has room for fewer than this many
drops of the largest size (``--max-bytes``); CRITICAL below one."""

_ROOM_NEEDED_BY = {
    "spool": "POSTs are refused (503) and submit fails",
    "history": "the watcher cannot store drops",
}


def _judge_room(facts: Facts) -> Judgement | None:
    """The room left where drops are written (the spool) and stored (the history), on
    the filesystem with the least; ``None`` (no item) while every one has room for
    :data:`ROOM_WARNING_DROPS` drops of the largest size.

    CRITICAL where one drop of that size may no longer fit, no file can be made (no
    inode left), or the filesystem is mounted read-only: every write there fails, which
    the age item would only see once ``--max-age`` has passed. The value is the least
    free space in bytes, its thresholds lower bounds.
    """
    if not facts.rooms or facts.max_bytes <= 0:
        return None
    warn, crit = ROOM_WARNING_DROPS * facts.max_bytes, facts.max_bytes
    worst: tuple[int, str] | None = None
    for room in facts.rooms:
        where = " and ".join(room.holds)
        needed_by = ", and ".join(_ROOM_NEEDED_BY[h] for h in room.holds)
        on = f"the filesystem of the {where} ({room.path})"
        if room.read_only:
            found = (CRITICAL, f"{on} is mounted read-only: {needed_by}")
        elif room.files == 0:
            found = (CRITICAL, f"no free inode on {on}: {needed_by}")
        elif room.free < crit:
            found = (
                CRITICAL,
                f"{size_words(room.free)} free on {on}, less than one drop of the largest "
                f"size (--max-bytes {facts.max_bytes}): {needed_by}",
            )
        elif room.free < warn:
            found = (
                WARNING,
                f"{size_words(room.free)} free on {on}, room for fewer than "
                f"{ROOM_WARNING_DROPS} drops of the largest size (--max-bytes {facts.max_bytes})",
            )
        else:
            continue
        if worst is None or found[0] > worst[0]:
            worst = found
    if worst is None:
        return None
    least = min(room.free for room in facts.rooms)
    code, words = worst
    return Judgement("free_space", code, least, warn, crit, words, "B", alert_below=True)


def _judge_rejected(facts: Facts, limits: CheckLimits) -> Judgement:
    """Rejections in the last hour; unknown (no value, OK, said so) when the quarantine
    cannot be listed, for the reason the backlog is."""
    warn, crit = limits.max_rejected_per_hour, 2 * limits.max_rejected_per_hour
    rate = facts.rejected_last_hour
    if rate is None:
        words = f"rejections in the last hour unknown ({facts.rejected_problem})"
        return Judgement("rejected", OK, None, warn, crit, words)
    code = _over(rate, warn)
    words = f"{rate} rejected in the last hour"
    if code:
        words += f" (more than {crit if code == CRITICAL else warn})"
    return Judgement("rejected", code, rate, warn, crit, words)


def _judge_hold(mirror: MirrorFacts, hold_max: int, limits: CheckLimits) -> Judgement:
    """WARNING once the held versions fill the given share of the hold, CRITICAL when full.

    Full (held = ``hold_max``) is where retention starts deleting versions that were
    never uploaded, so it is judged at ">=", where the other items judge at ">".
    """
    warning = hold_max * limits.mirror_hold_warning / 100
    held = mirror.held
    if hold_max == 0:
        code, words = OK, "no mirror hold (--mirror-hold 0): retention does not wait"
    elif held >= hold_max:
        code = CRITICAL
        words = (
            f"mirror hold full ({held} of {hold_max} expired versions kept for the mirror): "
            "retention deletes versions that were never uploaded"
        )
    else:
        code = WARNING if held >= warning and held > 0 else OK
        words = f"{held} of {hold_max} expired versions kept for the mirror"
        if code:
            words += f" ({plain_number(limits.mirror_hold_warning)}% of the hold or more)"
    return Judgement("mirror_held", code, held, warning, hold_max, words)


_REFUSES = {
    CLOCK: "refuses the request time: this machine's clock is off from the store's",
    ACCESS_RULE: "refuses the action by its access rules (a bucket or IAM policy without it)",
    ACCOUNT: "refuses the account (all access disabled, or an account problem)",
    CREDENTIALS: "refuses the credentials",
}
"""What the object store refuses, by :func:`~ingester.mirror.objectstore.refusal`'s kind."""


def _refusal_words(detail: str | None) -> str:
    """A ``denied`` the mirror recorded, said as what refused it, its detail after."""
    words = f", but the object store {_REFUSES[refusal(detail)]}"
    return f"{words} ({detail})" if detail else words


def _judge_mirror(mirror: MirrorFacts, max_lag: float) -> Judgement:
    lag = mirror.lag or 0.0
    code = _over(lag, max_lag)
    if mirror.backlog:
        words = f"mirror {mirror.backlog} behind, oldest {seconds_words(lag)} old"
    else:
        words = "mirror up to date"
    if code:
        words += f" (more than {seconds_words(max_lag * (2 if code == CRITICAL else 1))})"
    if mirror.state == "denied":
        # Retrying fixes neither credentials, nor an access rule, nor a clock: someone
        # has to, so say so now, lag or not, and which it is.
        code = CRITICAL
        words += _refusal_words(mirror.detail)
    elif mirror.state == STUCK:
        # Retrying does not move the watermark past it either: someone has to look.
        code = max(code, WARNING)
        words += f", but a version cannot be mirrored ({mirror.detail})"
    elif mirror.state not in ("ok", "starting"):
        words += f" ({mirror.state})"
    if mirror.pid is None and mirror.backlog:
        words += ", mirror not running"
    return Judgement(
        "mirror_lag",
        code,
        lag,
        max_lag,
        2 * max_lag,
        words,
        "s",
        (("mirror_backlog", mirror.backlog),),
    )
