"""Reading a POST body within its limits: the content type, the size, the time."""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import Response

from .answers import JSON, post_answer

__all__ = ["is_json_type", "read_body"]


def is_json_type(content_type: str | None) -> bool:
    """Whether ``content_type`` is JSON (``application/json`` or ``application/*+json``)."""
    if not content_type:
        return False
    media = content_type.split(";", 1)[0].strip().lower()
    return media == JSON or (media.startswith("application/") and media.endswith("+json"))


async def read_body(request: Request, max_bytes: int, timeout: float) -> bytes | Response:
    """The whole body, or the answer refusing it (400, 408, 413).

    Refused before reading when ``Content-Length`` says it is too large, and while
    reading when a chunked body grows past ``max_bytes`` or takes longer than
    ``timeout`` seconds. Raises Starlette's ``ClientDisconnect`` when the client leaves.
    """
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            return post_answer(400, False, "Content-Length is not a number")
        if int(declared) > max_bytes:
            return post_answer(413, False, f"body over the limit of {max_bytes} bytes")
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                size += len(chunk)
                if size > max_bytes:
                    return post_answer(413, False, f"body over the limit of {max_bytes} bytes")
                chunks.append(chunk)
    except TimeoutError:
        return post_answer(408, False, f"body not received within {timeout:g} s")
    return b"".join(chunks)
