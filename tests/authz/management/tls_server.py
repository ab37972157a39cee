"""Serve an ASGI app over HTTPS on a free port in a background thread, for clients that insist on https
(Okta's SDK refuses an http orgUrl). The certificate is self-signed for 127.0.0.1 and generated here."""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import uvicorn
from starlette.types import ASGIApp


@dataclass(frozen=True)
class TlsServer:
    url: str
    ssl_context: ssl.SSLContext
    """A client context that trusts exactly the server's certificate."""


@contextmanager
def serve_tls(app: ASGIApp, cert: Path, key: Path) -> Iterator[TlsServer]:
    config = uvicorn.Config(app, host="127.0.0.1", port=0, ssl_certfile=str(cert), ssl_keyfile=str(key),
                            log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the TLS test server did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    context = ssl.create_default_context(cafile=str(cert))
    try:
        yield TlsServer(f"https://127.0.0.1:{port}", context)
    finally:
        server.should_exit = True
        thread.join(10)
