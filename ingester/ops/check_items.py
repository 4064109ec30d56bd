"""The items of ``ingester check``, in the Nagios-plugin convention: the status levels
(0 OK, 1 WARNING, 2 CRITICAL, which are the exit codes), the thresholds a run is given
(:class:`CheckLimits`), one judged item (:class:`Judgement`) and its performance data
(:func:`format_perfdata`, the plugin guidelines' format), and the durations the options
take (:func:`parse_duration`). What is judged, and how, is :mod:`.check`'s.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from decimal import Decimal

__all__ = [
    "CRITICAL",
    "OK",
    "PERFDATA_UNITS",
    "STATUS_NAMES",
    "WARNING",
    "CheckLimits",
    "Judgement",
    "format_perfdata",
    "parse_duration",
    "plain_number",
]

OK, WARNING, CRITICAL = 0, 1, 2
STATUS_NAMES = ("OK", "WARNING", "CRITICAL")
"""The exit codes' names, by code."""

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|d)?\s*$", re.ASCII)
_UNIT_SECONDS = {None: 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """Seconds in ``900``, ``90s``, ``15m``, ``2h`` or ``1d``; ``ValueError`` otherwise."""
    match = _DURATION_RE.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a duration (e.g. 900, 90s, 15m, 2h, 1d)")
    seconds = float(match[1]) * _UNIT_SECONDS[match[2]]
    if seconds <= 0:
        raise ValueError(f"{text!r}: must be longer than 0")
    if not math.isfinite(seconds):
        raise ValueError(f"{text!r}: too long to be a duration")
    return seconds


# The units the plugin guidelines define for performance data ("" is a plain number).
PERFDATA_UNITS = frozenset({"", "s", "ms", "us", "%", "B", "KB", "MB", "GB", "TB", "c"})
# A label may hold anything but "=" and "'"; "|" would end the data for a parser that
# splits the line there, and a control character would break the one line. Each is
# written %XX, and "%" itself too, so two limits never share a label.
_LABEL_UNSAFE = re.compile(r"[%='|\x00-\x1f\x7f]")


def plain_number(value: float | None) -> str:
    """``value`` as a plain decimal (never ``1e+06``); "" when absent or not finite."""
    if value is None or not math.isfinite(value):
        return ""
    if isinstance(value, int):
        return str(value)
    text = format(Decimal(repr(float(value))).normalize(), "f")
    return "0" if text == "-0" else text


def format_perfdata(
    label: str,
    value: float | None,
    unit: str = "",
    warning: float | None = None,
    critical: float | None = None,
    minimum: float | None = None,
    maximum: float | None = None,
    *,
    alert_below: bool = False,
) -> str:
    """One performance-data token: ``label=value[unit];[warn];[crit];[min];[max]``.

    The format is the Nagios plugin guidelines' (also read by Icinga, Naemon and most
    agents): every number a plain decimal, never exponent notation; trailing empty
    fields left out; the label quoted (``'a b'=1``) when it holds a space, with ``=``,
    ``'``, ``|``, control characters and ``%`` written ``%XX`` (``q=x`` is ``q%3Dx``),
    so distinct labels stay distinct. A value that is unknown
    (``None``) or not finite gives ``""``: leave the token out, since an empty value
    (``age=;900``) is refused by parsers such as Icinga 2's. A threshold that is not
    finite is left empty. ``unit`` must be one the guidelines define (``ValueError``).
    ``alert_below``: the thresholds are lower bounds, ``N:`` in the guidelines' range
    syntax (alert when the value falls below N: time left, say).
    """
    if unit not in PERFDATA_UNITS:
        raise ValueError(f"{unit!r} is not a performance-data unit")
    number = plain_number(value)
    if not number:
        return ""
    name = _LABEL_UNSAFE.sub(lambda m: f"%{ord(m.group()):02X}", label)
    if " " in name:
        name = f"'{name}'"
    limits = [plain_number(t) for t in (warning, critical)]
    if alert_below:
        limits = [t + ":" if t else t for t in limits]
    extremes = map(plain_number, (minimum, maximum))
    fields = [f"{name}={number}{unit}", *limits, *extremes]
    while fields[-1] == "":
        fields.pop()
    return ";".join(fields)


@dataclass(frozen=True)
class CheckLimits:
    """The WARNING thresholds (CRITICAL is twice each): seconds, drops, drops per hour, seconds.

    ``mirror_hold_warning`` is a percentage of the mirror's ``--mirror-hold`` (its
    CRITICAL is the whole hold).
    """

    max_age: float = 900.0
    max_backlog: int = 50
    max_rejected_per_hour: int = 10
    max_mirror_lag: float = 900.0
    mirror_hold_warning: float = 80.0
    usage_warning: float | None = None
    """Percent used (at or above) that makes a limit WARNING; ``None``: not judged."""
    usage_critical: float | None = None
    """Percent used (at or above) that makes a limit CRITICAL; ``None``: not judged."""
    forecast: bool = False
    """Judge each limit's projection against its reset."""
    forecast_critical: float = 3600.0
    """Seconds: a projected run-out before the reset this close is CRITICAL."""

    @property
    def judges_usage(self) -> bool:
        """Whether any usage item is asked for (so the forecast must be read)."""
        return self.forecast or self.usage_warning is not None or self.usage_critical is not None


@dataclass(frozen=True)
class Judgement:
    """One judged item: its status code, value, thresholds and the words for it."""

    name: str
    code: int
    value: float | None
    warning: float
    critical: float
    message: str
    unit: str = ""
    counters: tuple[tuple[str, float], ...] = ()
    """More numbers for the performance data, without thresholds: (label, value)."""
    alert_below: bool = False
    """The thresholds are lower bounds (``N:`` in the plugin range syntax): time left."""

    def perfdata(self) -> str:
        """``name=value[unit];warn;crit``, then the counters (:func:`format_perfdata`).

        An unknown value leaves its token out ("" when nothing is known at all).
        """
        tokens = [
            format_perfdata(
                self.name,
                self.value,
                self.unit,
                self.warning,
                self.critical,
                alert_below=self.alert_below,
            ),
            *(format_perfdata(label, count) for label, count in self.counters),
        ]
        return " ".join(t for t in tokens if t)
