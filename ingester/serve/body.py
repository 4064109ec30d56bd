"""Reading a POST body within its limits: the content type, the size, the time."""

from __future__ import annotations

import asyncio

from starlette.requests import Request

from .answers import JSON

__all__ = ["Refused", "is_json_type", "read_body"]


class Refused(Exception):
    """A request refused for a reason the client caused: ``status`` and ``message``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def is_json_type(content_type: str | None) -> bool:
    """Whether ``content_type`` is JSON (``application/json`` or ``application/*+json``)."""
    if not content_type:
        return False
    media = content_type.split(";", 1)[0].strip().lower()
    return media == JSON or (media.startswith("application/") and media.endswith("+json"))


async def read_body(request: Request, max_bytes: int, timeout: float) -> bytes:
    """The whole body; :class:`Refused` (400, 408, 413) when it cannot be taken.

    Refused before reading when ``Content-Length`` says it is too large, and while
    reading when a chunked body grows past ``max_bytes`` or takes longer than
    ``timeout`` seconds. Raises Starlette's ``ClientDisconnect`` when the client leaves.
    """
    declared = request.headers.get("content-length")
    if declared is not None:
        if not (declared.isascii() and declared.isdigit()):
            raise Refused(400, "Content-Length is not a number")
        if int(declared) > max_bytes:
            raise Refused(413, f"body over the limit of {max_bytes} bytes")
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                size += len(chunk)
                if size > max_bytes:
                    raise Refused(413, f"body over the limit of {max_bytes} bytes")
                chunks.append(chunk)
    except TimeoutError:
        raise Refused(408, f"body not received within {timeout:g} s ({size} bytes came)") from None
    return b"".join(chunks)
