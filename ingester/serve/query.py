"""A request's query parameters, each read once, and whole numbers read from text.

A parameter given more than once (``?version=1&version=2``) has no one meaning: Express,
which the original server ran on, hands its handler an array, and a plain dictionary
would keep whichever came last. So every parameter ``serve`` reads is taken through
:func:`query_value`: given several times with the same value it is that value; with
different values it is :class:`RepeatedParameter`, which each route answers as a 400 in
the shape of that parameter's other refusals.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # only its methods are used: the module stays light for the socket code
    from starlette.requests import Request

__all__ = ["RepeatedParameter", "query_value", "whole_number"]

_SHOWN_VALUES = 3
_SHOWN_CHARS = 40


class RepeatedParameter(ValueError):
    """Query parameter ``name`` was given with different ``values`` (in request order).

    ``message`` says so in one line, naming the parameter and (cut short) its values.
    """

    def __init__(self, name: str, values: list[str]) -> None:
        self.name = name
        self.values = values
        distinct = list(dict.fromkeys(values))
        shown = ", ".join(repr(_cut(v)) for v in distinct[:_SHOWN_VALUES])
        if len(distinct) > _SHOWN_VALUES:
            shown += ", …"
        self.message = (
            f"{name} is given {len(values)} times with different values ({shown}); give it once"
        )
        super().__init__(self.message)


def _cut(value: str) -> str:
    return value if len(value) <= _SHOWN_CHARS else value[:_SHOWN_CHARS] + "…"


def query_value(request: Request, name: str) -> str | None:
    """The value of query parameter ``name`` (``""`` when given empty), ``None`` when it
    is not given. Raises :class:`RepeatedParameter` when it is given more than once with
    different values."""
    if not request.scope.get("query_string"):
        return None
    values = request.query_params.getlist(name)
    if not values:
        return None
    first = values[0]
    if any(value != first for value in values[1:]):
        raise RepeatedParameter(name, values)
    return first


_DIGITS = 12
_WHOLE = re.compile(rf"-?[0-9]{{1,{_DIGITS}}}", re.ASCII)


def whole_number(text: str, *, signed: bool = False) -> int | None:
    """``text`` as an integer of at most 12 ASCII digits (a leading ``-`` when
    ``signed``), else ``None``: for a query's numbers, and a port or a count of passed
    sockets (:mod:`.sockets`). Longer numbers are refused before parsing: no value read
    so is that large, and Python refuses to parse one of over 4,300 digits."""
    if not _WHOLE.fullmatch(text) or (text.startswith("-") and not signed):
        return None
    return int(text)
