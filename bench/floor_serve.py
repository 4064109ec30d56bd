"""The floor for ``bench_serve.py``: a bare ASGI app on the same server stack as ``serve``.

Run as ``python bench/floor_serve.py BODY_FILE ETAG``. It listens on 127.0.0.1 (a free
port, printed as ``listening on http://127.0.0.1:PORT`` on stderr), on the same socket
setup and uvicorn settings as ``ingester serve`` (h11, asyncio, TCP_NODELAY), and answers
every request with the bytes of BODY_FILE, or 304 when ``If-None-Match`` is sent: no
routing, no history, no JSON, no metrics. Whatever ``serve`` costs above this is ours.
"""

from __future__ import annotations

import signal
import socket
import sys
from pathlib import Path
from typing import Any


def main() -> None:
    import uvicorn

    body = Path(sys.argv[1]).read_bytes()
    etag = sys.argv[2].encode()
    ok = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"etag", etag),
        (b"cache-control", b"max-age=60"),
    ]
    not_modified = [(b"etag", etag), (b"cache-control", b"max-age=60")]

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        conditional = any(k == b"if-none-match" for k, _ in scope["headers"])
        if conditional:
            await send({"type": "http.response.start", "status": 304, "headers": not_modified})
            await send({"type": "http.response.body", "body": b""})
            return
        await send({"type": "http.response.start", "status": 200, "headers": ok})
        await send({"type": "http.response.body", "body": body})

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    sock.setblocking(False)
    config = uvicorn.Config(
        app,
        http="h11",
        loop="asyncio",
        lifespan="off",
        log_config=None,
        access_log=False,
        server_header=False,
        h11_max_incomplete_event_size=16 * 1024,
        limit_concurrency=256,
        timeout_keep_alive=5,
    )
    print(f"listening on http://127.0.0.1:{sock.getsockname()[1]}", file=sys.stderr, flush=True)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda _s, _f: None)
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()
