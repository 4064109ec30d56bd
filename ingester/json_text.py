"""JSON as every reader takes it: what this program writes for others to parse.

Python's ``json.dumps`` writes ``Infinity`` and ``NaN``, which no JSON parser takes
(a browser's ``JSON.parse`` throws), and with ``ensure_ascii=False`` it writes a lone
surrogate (half of a UTF-16 pair: what ``JSON.stringify`` makes of a string cut in the
middle of an emoji, escaped as ``"\\ud83d"``) as a character that has no UTF-8 form at
all. Here the first is refused and the second is written as the escape it came as.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["json_bytes", "json_text"]

_COMPACT = (",", ":")


def json_bytes(
    value: Any, *, indent: int | None = None, separators: tuple[str, str] | None = _COMPACT
) -> bytes:
    """``value`` as JSON in UTF-8 bytes: compact by default, else with ``separators`` as
    :func:`json.dumps` takes them (``None``: its own) and ``indent``. Non-ASCII
    characters are written as themselves, unless ``value`` holds a lone surrogate: then
    the whole text is written with ``\\u`` escapes, which say the same. Raises
    ``ValueError`` for a NaN or an infinite float (never valid JSON: a bug of the
    caller, as the gate admits neither)."""
    text = json.dumps(
        value, separators=separators, indent=indent, ensure_ascii=False, allow_nan=False
    )
    try:
        return text.encode()
    except UnicodeEncodeError:
        return json.dumps(value, separators=separators, indent=indent, allow_nan=False).encode()


def json_text(
    value: Any, *, indent: int | None = None, separators: tuple[str, str] | None = _COMPACT
) -> str:
    """:func:`json_bytes` as text (for a text stream): every character of it has a UTF-8
    form."""
    return json_bytes(value, indent=indent, separators=separators).decode()
