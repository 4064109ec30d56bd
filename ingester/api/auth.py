"""The POST key: where it comes from, and the constant-time check of ``X-API-Key``."""

from __future__ import annotations

import hmac
from pathlib import Path

__all__ = ["key_matches", "load_api_key"]


def load_api_key(environ: dict[str, str], key_file: Path | None) -> bytes | None:
    """The POST key from ``--api-key-file`` (wins) or ``INGESTER_API_KEY``; ``None`` if neither.

    Surrounding whitespace (a trailing newline) is not part of the key. Raises ``OSError``
    when the file cannot be read and ``ValueError`` when it holds no key.
    """
    if key_file is not None:
        key = key_file.read_bytes().strip()
        if not key:
            raise ValueError(f"{key_file} is empty")
        return key
    value = environ.get("INGESTER_API_KEY", "").strip()
    return value.encode() if value else None


def key_matches(given: str | None, expected: bytes | None) -> bool:
    """Constant-time comparison of the ``X-API-Key`` header with the configured key."""
    if expected is None or given is None:
        return False
    # Starlette decodes header bytes as latin-1: encoding back gives the bytes sent.
    return hmac.compare_digest(given.encode("latin-1"), expected)
