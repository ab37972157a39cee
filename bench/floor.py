"""The Python floor (issue 11, benchmark scenario 3): a bare uvicorn + aiohttp forwarder with no gate.

The same stack as ``scopegate run`` minus everything scopegate adds: uvicorn with uvloop and httptools, a raw
ASGI app, one pooled keep-alive ``aiohttp.ClientSession`` to the upstream, the response streamed back chunk by
chunk. No guard, no routing, no token, no metrics, no decision log. What scopegate's public route costs above
this is the price of the gate; what this costs above nginx ``proxy_pass`` is the price of Python.

    python3 bench/floor.py --listen 127.0.0.1:8000 --upstream http://127.0.0.1:8001
"""

from __future__ import annotations

import argparse
from typing import Any

import aiohttp
import uvicorn
from yarl import URL

# RFC 9110 §7.6.1: connection-specific fields are not forwarded (the minimum any forwarder must do).
_HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
                         b"transfer-encoding", b"upgrade", b"host", b"content-length"})
_HOP_BY_HOP_STR = frozenset(name.decode() for name in _HOP_BY_HOP)


class Forwarder:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.session: aiohttp.ClientSession | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256),
                                                         auto_decompress=False,
                                                         cookie_jar=aiohttp.DummyCookieJar())
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    if self.session is not None:
                        await self.session.close()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        assert scope["type"] == "http"
        assert self.session is not None
        target = scope["raw_path"].decode("latin-1")
        if scope["query_string"]:
            target += "?" + scope["query_string"].decode("latin-1")
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"] if k not in _HOP_BY_HOP]
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        async with self.session.request(scope["method"], URL(self.upstream + target, encoded=True), headers=headers,
                                        data=body or None, allow_redirects=False) as response:
            await send({"type": "http.response.start", "status": response.status,
                        "headers": [(k, v) for k, v in response.raw_headers
                                    if k.decode("latin-1").lower() not in _HOP_BY_HOP_STR]})
            content = response.content
            while True:
                chunk = await content.readany()
                if not chunk or content.at_eof():
                    await send({"type": "http.response.body", "body": chunk, "more_body": False})
                    return
                await send({"type": "http.response.body", "body": chunk, "more_body": True})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--listen", required=True, help="host:port")
    parser.add_argument("--upstream", required=True, help="http://host:port")
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")
    config = uvicorn.Config(Forwarder(args.upstream), host=host, port=int(port), loop="uvloop", http="httptools",
                            lifespan="on", log_level="warning", access_log=False, server_header=False,
                            proxy_headers=False)
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
