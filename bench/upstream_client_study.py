"""The upstream hop alone: aiohttp (as ``proxy/forward.py`` configures it) against a purpose-built keep-alive HTTP/1.1
client on asyncio protocols with httptools' C parser (issue 11 item 4). Not part of the test suite.

Both clients send the same requests to the same upstream (nginx ``return 200`` with a 27-byte JSON body if nginx is
installed, else a small aiohttp server, in its own process) from ``--concurrency`` tasks on uvloop, as ``scopegate
run`` does, and stream each response body to a sink chunk by chunk, as the forwarder relays it. The figure is the
CPU time of this process per request (user + system, ``time.process_time``), in alternating rounds; the upstream's
CPU is not counted. Run from the repository root:

    python3 bench/upstream_client_study.py                      # 7 rounds x 20,000 requests per client
    python3 bench/upstream_client_study.py --rounds 3 --requests 5000 --concurrency 32

The purpose-built client is ``proxy/upstream.py``'s ``UpstreamClient`` itself, adopted into the forwarder after this
study measured it (its module docstring lists what it guarantees: framing, strict parsing, pool hygiene, deadlines,
the retry rule); the study used to carry a prototype copy of it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import uvloop

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from proxy.upstream import UpstreamClient  # noqa: E402 (after the path set-up, for a run from a checkout)

BODY = b'{"ok":true,"items":[1,2,3]}'
# ---------------------------------------------------------------------------------------------- aiohttp, as the forwarder


async def aiohttp_session(limit: int) -> aiohttp.ClientSession:
    """aiohttp as ``proxy/forward.py`` configured it for HTTP before adopting ``proxy/upstream.py`` (and still does
    for WebSocket upgrades)."""
    from proxy.forward import _UpstreamRequest

    connector = aiohttp.TCPConnector(limit=limit, keepalive_timeout=60, ttl_dns_cache=60)
    session = aiohttp.ClientSession(connector=connector, auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar(),
                                    request_class=_UpstreamRequest,
                                    timeout=aiohttp.ClientTimeout(total=None, sock_connect=2, sock_read=30))
    session._retry_connection = False
    return session


# ---------------------------------------------------------------------------------------------- the run


HEADERS = [("accept", "application/json"), ("authorization", "Bearer " + "x" * 600), ("X-Forwarded-For", "127.0.0.1"),
           ("X-Forwarded-Proto", "http"), ("X-Forwarded-Host", "api.example.com"), ("X-Scopegate-Subject", "alice"),
           ("X-Scopegate-Client-Id", "bench"), ("X-Scopegate-Scopes", "items:read"),
           ("X-Scopegate-Auth-Server", "bench")]


async def _sink(message: dict[str, Any]) -> None:
    return None


async def run_aiohttp(session: aiohttp.ClientSession, base: str, requests: int, concurrency: int) -> int:
    from yarl import URL

    async def worker(n: int) -> int:
        ok = 0
        for i in range(n):
            async with await session.request("GET", URL(f"{base}/items/{i}", encoded=True), headers=HEADERS,
                                             allow_redirects=False) as response:
                await _sink({"status": response.status, "headers": list(response.raw_headers)})
                content = response.content
                while True:
                    chunk = await content.readany()
                    if not chunk:
                        break
                    await _sink({"body": chunk, "more_body": not content.at_eof()})
                    if content.at_eof():
                        break
                ok += response.status == 200
        return ok

    return sum(await asyncio.gather(*(worker(requests // concurrency) for _ in range(concurrency))))


async def run_proto(client: UpstreamClient, requests: int, concurrency: int) -> int:
    loop = asyncio.get_running_loop()

    async def worker(n: int) -> int:
        ok = 0
        for i in range(n):
            response = await client.request("GET", f"/items/{i}", HEADERS, None, None, loop.time() + 30)
            try:
                await _sink({"status": response.status, "headers": response.headers})
                while chunk := await response.readany():
                    await _sink({"body": chunk, "more_body": True})
                ok += response.status == 200
            finally:
                response.release()
        return ok

    return sum(await asyncio.gather(*(worker(requests // concurrency) for _ in range(concurrency))))


async def measure(port: int, rounds: int, requests: int, concurrency: int) -> dict[str, list[float]]:
    base = f"http://127.0.0.1:{port}"
    session = await aiohttp_session(256)
    proto = UpstreamClient(base, max_connections=256, keepalive_timeout=30, connect_timeout=5, read_timeout=30)
    runners: dict[str, Callable[[], Awaitable[int]]] = {
        "aiohttp": lambda: run_aiohttp(session, base, requests, concurrency),
        "prototype": lambda: run_proto(proto, requests, concurrency),
    }
    for run in runners.values():  # warm: pools, caches
        await run()
    results: dict[str, list[float]] = {name: [] for name in runners}
    try:
        for r in range(rounds):
            for name in (list(runners) if r % 2 == 0 else list(runners)[::-1]):
                cpu = time.process_time()
                wall = time.perf_counter()
                ok = await runners[name]()
                cpu = time.process_time() - cpu
                wall = time.perf_counter() - wall
                total = requests // concurrency * concurrency
                assert ok == total, f"{name}: {ok} of {total} answered 200"
                results[name].append(cpu / total * 1e6)
                print(f"round {r + 1} {name:9s} {cpu / total * 1e6:7.1f} µs CPU/request  {total / wall:8.0f} req/s",
                      flush=True)
    finally:
        await session.close()
        await proto.close()
    return results


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def upstream(workdir: Path) -> Any:
    port = free_port()
    if shutil.which("nginx"):
        conf = workdir / "nginx.conf"
        conf.write_text(f"""worker_processes 1; daemon off; pid {workdir}/nginx.pid; error_log {workdir}/error.log warn;
events {{ worker_connections 4096; }}
http {{ access_log off; keepalive_requests 1000000;
  server {{ listen 127.0.0.1:{port}; location / {{ default_type application/json; return 200 '{BODY.decode()}'; }} }} }}
""")
        proc = subprocess.Popen(["nginx", "-c", str(conf), "-p", str(workdir)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        kind = "nginx, 1 worker"
    else:
        script = workdir / "upstream.py"
        script.write_text(f"""from aiohttp import web
async def ok(request): return web.Response(body={BODY!r}, content_type="application/json")
app = web.Application(); app.router.add_route("*", "/{{tail:.*}}", ok)
web.run_app(app, host="127.0.0.1", port={port}, print=None, access_log=None)
""")
        proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        kind = "aiohttp.web"
    try:
        for _ in range(200):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            time.sleep(0.05)
        yield port, kind
    finally:
        proc.send_signal(signal.SIGQUIT if kind.startswith("nginx") else signal.SIGTERM)
        proc.wait(10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, upstream(Path(tmp)) as (port, kind):
        print(f"upstream: {kind}; {args.rounds} rounds x {args.requests} requests per client, "
              f"{args.concurrency} concurrent, uvloop")
        results = uvloop.run(measure(port, args.rounds, args.requests, args.concurrency))
    a, p = statistics.median(results["aiohttp"]), statistics.median(results["prototype"])
    for name, values in results.items():
        print(f"{name:9s} median {statistics.median(values):6.1f} µs CPU/request (min {min(values):.1f}, "
              f"max {max(values):.1f})")
    print(f"aiohttp / prototype = {a / p:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
