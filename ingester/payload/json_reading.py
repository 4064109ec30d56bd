"""Reading a drop's bytes as JSON, before anything is judged: the byte rules.

:func:`read_object` is the first step of the gate (:func:`ingester.payload.gate.judge`):
a size limit, UTF-8 without a BOM (UTF-16 and UTF-32 text, gzip and an empty drop named
as such), JSON without ``NaN`` or a number beyond a double's range, a lone half of a
surrogate pair read as U+FFFD, one object at the top, nesting at most
:data:`MAX_NESTING`. Each refusal is a :class:`~ingester.errors.PayloadRejected` in a
scraper author's words, never a parser's.

:func:`load_json` is the same reading for a text already known to be a payload (a
stored version), and :func:`parser_problem` says a JSON error from pydantic's parser in
the same words.
"""

from __future__ import annotations

import json
import math
import re
import sys
from typing import Any

from ..errors import IngesterError, PayloadRejected

__all__ = [
    "MAX_NESTING",
    "TOO_DEEP",
    "json_problem",
    "load_json",
    "parser_problem",
    "read_object",
    "whole_characters",
]

MAX_NESTING = 128
"""Deepest nesting of objects and arrays a drop may have (the payload itself needs 3)."""


TOO_DEEP = f"JSON nested deeper than {MAX_NESTING} levels"
"""The one wording of a drop nested deeper than :data:`MAX_NESTING`, whichever parser finds it."""


class _OurWords(IngesterError, ValueError):
    """A JSON problem already said in our words."""


def _refuse_constant(name: str) -> Any:
    raise _OurWords(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    """``text``, a JSON number with a fraction or an exponent, as a float; ``_OurWords``
    when it is beyond the largest double (``1e400``): it would read as infinite, and be
    served back as ``Infinity``, which no JSON reader takes."""
    value = float(text)
    if math.isinf(value):
        shown = text if len(text) <= 24 else f"{text[:20]}..."
        raise _OurWords(
            f"the number {shown} is beyond a double's range (about ±1.8e308): it reads as infinite"
        )
    return value


# Every escape in a JSON text, from its backslash (so an escaped backslash is taken whole
# and never starts another): a surrogate pair, a lone half of one (group 1), or any other.
_ESCAPE = re.compile(
    r"\\(?:u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}"
    r"|(u[dD][89a-fA-F][0-9a-fA-F]{2})|.)",
    re.DOTALL,
)


def _lone_half(match: re.Match[str]) -> str:
    return "\\ufffd" if match[1] else match[0]


def whole_characters(text: str) -> str:
    """``text``, a JSON text, with each escape of a lone half of a surrogate pair
    (``"\\ud83d"``) replaced by U+FFFD's, every other escape as it was.

    JSON's grammar admits such an escape, and JavaScript's ``JSON.stringify`` writes one
    for a string cut in the middle of an emoji (the original server took them), but it
    is no character: pydantic's parser refuses it, and Python's makes a string that no
    UTF-8 output can hold. Read this way, a payload's strings are whole characters
    everywhere, and the replacement character is what a browser's decoder shows for it.
    The drop's bytes are stored as they came all the same.
    """
    if "\\ud" not in text and "\\uD" not in text:
        return text  # no surrogate escape at all: the usual case, in one scan
    return _ESCAPE.sub(_lone_half, text)


def load_json(text: str | bytes) -> Any:
    """``text`` parsed as the gate parses it: the literals ``NaN`` and ``Infinity``, and
    numbers beyond the largest double, refused with a ``ValueError`` whose words
    :func:`json_problem` gives (bytes that are not UTF-8 too); ``RecursionError`` for
    nesting deeper than Python can parse; a lone half of a surrogate pair read as
    U+FFFD (:func:`whole_characters`). What it returns can be written back as JSON with
    ``allow_nan=False``, and every string in it encoded as UTF-8."""
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    return _loads(whole_characters(text))


def _loads(text: str) -> Any:
    """:func:`load_json` of a text :func:`whole_characters` has been applied to."""
    # Python's json takes NaN and Infinity by default, and reads 1e400 as infinite.
    return json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)


# Python's json messages (the part before the position), in a scraper author's words.
_JSON_WORDS: tuple[tuple[str, str], ...] = (
    ("Expecting value", "a value was expected"),
    ("Expecting ',' delimiter", "a comma or the end of the object or array was expected"),
    ("Expecting ':' delimiter", "a colon was expected after the property name"),
    ("Expecting property name", "a property name in double quotes was expected"),
    ("Extra data", "more follows the JSON object (a payload is one object)"),
    ("Invalid \\uXXXX escape", "a string holds an invalid \\u escape"),
    ("Invalid \\escape", "a string holds an invalid escape"),
    ("Invalid control character", "a string holds a control character (escape it)"),
    ("Unterminated string", "a string is not closed"),
)

# serde_json's messages (pydantic's JSON parser), for what Python's parser let through.
_PARSER_WORDS: tuple[tuple[str, str], ...] = (
    ("surrogate", "a string holds half of a \\u surrogate pair"),
    ("hex escape", "a string holds half of a \\u surrogate pair"),
    ("number out of range", "a number is out of range"),
    ("recursion limit", TOO_DEEP),
)
_POSITION = re.compile(r"line (\d+) column (\d+)")
_GZIP_MAGIC = b"\x1f\x8b"


def _words_for(message: str, table: tuple[tuple[str, str], ...]) -> str:
    for start, words in table:
        if start in message:
            return words
    return "not valid JSON"


def json_problem(exc: ValueError) -> str:
    """``"not JSON: <what> at line L column C"``: a JSON parse error in our words.

    ``exc`` is what :func:`json.loads` raised; Python's own words (``Expecting value:
    line 1 column 1 (char 0)``) name its parser's states, not the author's mistake.
    """
    if isinstance(exc, _OurWords):
        return f"not JSON: {exc}"
    if isinstance(exc, json.JSONDecodeError):
        return (
            f"not JSON: {_words_for(exc.msg, _JSON_WORDS)} at line {exc.lineno} column {exc.colno}"
        )
    if "digits" in str(exc):  # int("9" * 5000): Python's guard against slow conversions
        return f"not JSON: a number has more than {sys.get_int_max_str_digits()} digits"
    return "not JSON: a value that cannot be read"


def parser_problem(message: str) -> str:
    """A JSON error from pydantic's parser in the words of :func:`json_problem`."""
    words = _words_for(message, _PARSER_WORDS)
    if words == TOO_DEEP:
        return words
    at = _POSITION.search(message)
    where = f" at line {at[1]} column {at[2]}" if at else ""
    return f"not JSON: {words}{where}"


def _depth_over(obj: Any, limit: int) -> bool:
    """Whether ``obj`` nests objects and arrays more than ``limit`` levels deep."""
    level: list[Any] = [obj]
    depth = 0
    while level:
        depth += 1
        if depth > limit:
            return True
        nxt: list[Any] = []
        for item in level:
            if isinstance(item, dict):
                nxt.extend(v for v in item.values() if isinstance(v, dict | list))
            elif isinstance(item, list):
                nxt.extend(v for v in item if isinstance(v, dict | list))
        level = nxt
    return False


def _wide_encoding(data: bytes) -> str | None:
    """What ``data`` is when it is UTF-16 or UTF-32 text (``"UTF-16LE text, with a byte
    order mark"``), else ``None``.

    JSON text never holds a NUL byte, and its first character is ASCII: the NULs among
    the first four bytes tell the encoding (RFC 4627, section 3), with or without a
    byte order mark. Windows PowerShell 5.1 writes UTF-16LE with a mark by default (its
    ``>`` and ``Out-File``), and that text is mostly valid UTF-8 too, so without these
    words its author reads about a property name at column 2, or about byte 0.
    """
    for mark, name in _WIDE_MARKS:
        if data.startswith(mark):
            return f"{name} text, with a byte order mark"
    head = data[:4]
    if len(head) < 4 or b"\x00" not in head:
        return None
    found = _WIDE_PATTERNS.get(tuple(byte == 0 for byte in head))
    return None if found is None else f"{found} text"


# Longest first: the UTF-32LE mark begins with the UTF-16LE one.
_WIDE_MARKS = (
    (b"\xff\xfe\x00\x00", "UTF-32LE"),
    (b"\x00\x00\xfe\xff", "UTF-32BE"),
    (b"\xff\xfe", "UTF-16LE"),
    (b"\xfe\xff", "UTF-16BE"),
)
_WIDE_PATTERNS: dict[tuple[bool, ...], str] = {
    (True, True, True, False): "UTF-32BE",
    (False, True, True, True): "UTF-32LE",
    (True, False, True, False): "UTF-16BE",
    (False, True, False, True): "UTF-16LE",
}


def read_object(data: bytes, max_bytes: int | None) -> tuple[dict[str, Any], str]:
    """The byte rules: ``data`` as text holding one JSON object, not too deep.

    ``max_bytes``: the most bytes ``data`` may have (``None``: no limit). Returns the
    object and its text, the one the schema's validator is then given (each lone half
    of a surrogate pair read as U+FFFD, :func:`whole_characters`). Raises
    :class:`PayloadRejected` naming the rule.
    """
    if max_bytes is not None and len(data) > max_bytes:
        raise PayloadRejected(f"drop is over the limit of {max_bytes} bytes")
    if data.startswith(_GZIP_MAGIC):
        raise PayloadRejected("not JSON: gzip-compressed bytes; send the JSON uncompressed")
    wide = _wide_encoding(data)
    if wide is not None:
        raise PayloadRejected(f"not valid UTF-8: it is {wide}; a payload is UTF-8 without a BOM")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PayloadRejected(f"not valid UTF-8 (byte {exc.start})") from None
    if text.startswith("\ufeff"):
        raise PayloadRejected("starts with a byte order mark; UTF-8 without BOM is required")
    if not text.strip():
        what = "no bytes" if not data else "only whitespace"
        raise PayloadRejected(f"not JSON: empty ({what}); a payload is one JSON object")
    text = whole_characters(text)  # also the text the schema's validator is given
    try:
        obj = _loads(text)
    except RecursionError:
        raise PayloadRejected(TOO_DEEP) from None
    except ValueError as exc:
        raise PayloadRejected(json_problem(exc)) from None
    if not isinstance(obj, dict):
        raise PayloadRejected(f"top level is a JSON {_json_kind(obj)}, not an object")
    # One limit, checked here, so the schema's parser (with a recursion limit of its own)
    # never sees a payload deep enough to give a second wording for the same fault.
    # Nesting needs an opening bracket per level: a text with few of them (as every
    # real payload has) cannot be too deep, and the walk is skipped.
    if text.count("{") + text.count("[") > MAX_NESTING and _depth_over(obj, MAX_NESTING):
        raise PayloadRejected(TOO_DEEP)
    return obj, text


def _json_kind(value: Any) -> str:
    """JSON's own name for the kind of a parsed value (``null``, never ``NoneType``)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    return "string" if isinstance(value, str) else "array"
