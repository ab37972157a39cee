"""``upstream.url: builtin:echo``: an in-process upstream for the demo and the newcomer.

It answers with JSON describing what a real upstream would have received: the method, the path exactly
as forwarded, the query, the headers (identity headers included) and the body size, so the effect of the
gate is visible with nothing else running.
"""

from __future__ import annotations

import json

from proxy.forward import RequestBody, Send


async def echo(method: str, path: str, query: str, headers: list[tuple[str, str]], body: RequestBody | None,
               send: Send) -> int:
    size = 0
    if body is not None:
        async for chunk in body:
            size += len(chunk)
    payload = {"method": method, "path": path, "query": query, "headers": [[k, v] for k, v in headers],
               "bodyBytes": size}
    data = json.dumps(payload, indent=2).encode() + b"\n"
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data if method != "HEAD" else b""})
    return 200
