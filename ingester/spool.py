"""The spool folder: what counts as a drop (SPEC section 3)."""

from __future__ import annotations

__all__ = ["is_drop_name"]

IGNORED_SUFFIXES = (".tmp", ".part")


def is_drop_name(name: str) -> bool:
    """True for a name a drop may have: ``*.json`` and not a dot-file."""
    return name.endswith(".json") and not name.startswith(".")
