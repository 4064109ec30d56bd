"""The OpenAPI 3.1 description of ``ingester serve`` (served at ``/openapi.json``).

The same document is committed as ``docs/openapi.json``; regenerate it with
``python -m ingester.openapi > docs/openapi.json`` (a test checks they match).
"""

from __future__ import annotations

import functools
import json
from typing import Any

__all__ = ["openapi_bytes", "openapi_document"]


def openapi_document() -> dict[str, Any]:
    """The description as a dict."""
    return {"openapi": "3.1.0", "info": {"title": "console-usage-ingester", "version": "1"}}


@functools.cache
def openapi_bytes() -> bytes:
    """The description as the bytes served (indented JSON, a final newline)."""
    return (json.dumps(openapi_document(), indent=2) + "\n").encode()


if __name__ == "__main__":  # pragma: no cover
    import sys

    sys.stdout.write(openapi_bytes().decode())
