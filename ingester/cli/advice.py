"""Advice that more than one line of the command line gives in the same words."""

from __future__ import annotations

__all__ = ["before_the_command"]


def before_the_command(option: str, command: str) -> str:
    """Where ``option``, one of ``ingester``'s own given after ``command``, belongs: the
    words every line that refuses it uses (the ``Error:`` line, ``check``'s plugin line)."""
    return (
        f"it is an option of 'ingester' itself; give it before the command, "
        f"as in 'ingester {option} ... {command}'"
    )
