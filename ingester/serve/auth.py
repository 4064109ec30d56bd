"""The POST key: where it comes from, and the constant-time check of ``X-API-Key``.

The key is never a command-line value (a command line is visible to every user of the
machine). In order: ``--api-key-file FILE``, then ``INGESTER_API_KEY``, then the
original server's ``CLAUDE_SYNC_API_KEY`` (so the original's ``.env`` works as it is).
An empty value counts as not given, and a key file holding a variable's assignment
(``CLAUDE_SYNC_API_KEY=…``, the original's ``.env`` line) is refused. The key is bytes,
from the file or the variable alike: a value that is not UTF-8 (a ``.env`` saved in
Latin-1) is its bytes as they are.

``X-API-Key`` matches when it carries the key's bytes, or, for a key whose every
character fits in Latin-1, those characters one byte each: what Node.js clients send
for a header (the original server read headers back as Latin-1 and compared the text).
"""

from __future__ import annotations

import functools
import hmac
import re
from collections.abc import Mapping
from pathlib import Path

from ..settings.sources import read_setting_file

__all__ = ["KEY_VARIABLES", "key_matches", "load_api_key"]

KEY_VARIABLES = ("INGESTER_API_KEY", "CLAUDE_SYNC_API_KEY")
"""The environment variables that may hold the key, first found wins."""


KEY_FILE_MAX_BYTES = 64 << 10
"""The most of ``--api-key-file`` that is read: a key is a few dozen bytes."""

_ASSIGNMENT = re.compile(rb"(?:export\s+)?(%s)\s*=" % "|".join(KEY_VARIABLES).encode())
"""A key file that holds ``NAME=value`` (a ``.env`` line) for one of the key's variables."""


def load_api_key(
    environ: Mapping[str, str], key_file: Path | None
) -> tuple[bytes | None, str | None]:
    """The POST key and where it came from (``"--api-key-file PATH"`` or a variable name).

    ``(None, None)`` when no source holds one. Surrounding whitespace (a trailing
    newline), and a file's leading UTF-8 byte order mark, are not part of the key. Raises
    ``OSError`` when the file cannot be read and ``ValueError`` when it holds no key, a
    variable's assignment (``NAME=value``) in place of one, or one no header can carry
    (a control character: a line break, a NUL).
    """
    if key_file is not None:
        try:
            data = read_setting_file(key_file, KEY_FILE_MAX_BYTES)
            # A UTF-8 byte order mark (what some Windows editors put first) marks the
            # encoding and is no part of the text: kept, it would be a key no client sends.
            key = data.removeprefix(b"\xef\xbb\xbf").strip()
        except ValueError as exc:  # a pipe, a device, a file far too large for a key
            raise ValueError(f"--api-key-file: {key_file}: {exc}") from None
        if not key:
            raise ValueError(f"--api-key-file: {key_file} is empty")
        assigned = _ASSIGNMENT.match(key)
        if assigned is not None:
            # The original's .env line: taken whole, it would be a key no client sends,
            # and every POST a 401, which the scraper does not retry. The value is not
            # shown: it is the secret.
            raise ValueError(
                f"--api-key-file: {key_file} holds the assignment {assigned[1].decode()}=…, "
                "not a key: put the key alone in it (the value, without quotes)"
            )
        return _sendable(key, f"--api-key-file: {key_file}"), f"--api-key-file {key_file}"
    for name in KEY_VARIABLES:
        value = environ.get(name, "").strip()
        if value:
            # The environment's bytes, as the file's are taken: Python hands a byte that
            # is not UTF-8 over as a surrogate, which surrogateescape gives back.
            return _sendable(value.encode("utf-8", "surrogateescape"), name), name
    return None, None


def _sendable(key: bytes, source: str) -> bytes:
    """``key``, when an ``X-API-Key`` header can carry it (RFC 9110 5.5: no control
    character but the tab); else ``ValueError``, since every POST would then be 401."""
    for i, byte in enumerate(key):
        if (byte < 0x20 and byte != 0x09) or byte == 0x7F:
            raise ValueError(
                f"{source} holds a control character (byte {byte:#04x} at offset {i}), which "
                "no X-API-Key header can carry; put the key alone on one line"
            )
    return key


@functools.lru_cache(maxsize=4)
def _forms(key: bytes) -> tuple[bytes, bytes]:
    """The header values that carry ``key``: its bytes, and its text one byte a character
    (Latin-1) when it is UTF-8 text that fits; the bytes twice when there is no such
    second form, so that every check makes the same two comparisons."""
    try:
        latin1 = key.decode("utf-8").encode("latin-1")
    except (UnicodeDecodeError, UnicodeEncodeError):
        latin1 = key
    return key, latin1


def key_matches(given: str | None, expected: bytes | None) -> bool:
    """Whether the ``X-API-Key`` header ``given`` (as Starlette decodes it, Latin-1)
    carries the configured key ``expected``: its bytes, or its text in Latin-1 (see
    the module's docstring). Both forms are compared in constant time, every time."""
    if expected is None or given is None:
        return False
    # Starlette decodes header bytes as latin-1: encoding back gives the bytes sent.
    sent = given.encode("latin-1")
    as_bytes, as_latin1 = _forms(expected)
    # Both comparisons made whatever the first says: "|" does not short-circuit.
    return hmac.compare_digest(sent, as_bytes) | hmac.compare_digest(sent, as_latin1)
