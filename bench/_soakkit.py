"""Support for ``bench/soak.py`` and ``bench/propagation.py`` (issue 12, "Load and soak"): real ``scopegate run``
processes on free loopback ports, a fresh PostgreSQL schema per run, an echo upstream (HTTP and WebSocket) in a
process of its own, a static remote issuer whose tokens the bench signs (expired ones included), process-tree
sampling (RSS, open file descriptors) from ``/proc``, and percentiles.

Run as a script it is one of the helper processes: ``python3 bench/_soakkit.py upstream`` (prints its port) or
``python3 bench/_soakkit.py load URL,URL TOKEN --concurrency N`` (a closed-loop load generator that runs until
SIGTERM and prints its counts as JSON).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]
POSTGRES = os.environ.get("SCOPEGATE_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
ADMIN_TOKEN = "bench-admin-token-0123456789abcdef"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100), nearest rank; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def machine() -> dict[str, Any]:
    """CPU model, cores, load average and Python: what a figure needs beside it to be read."""
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"cpu": model, "cores": os.cpu_count(), "loadavg": [round(x, 2) for x in os.getloadavg()],
            "python": platform.python_version(), "kernel": platform.release()}


# ---------------------------------------------------------------------------------------------- processes


def scopegate_command() -> list[str]:
    script = Path(sys.executable).parent / "scopegate"
    return [str(script)] if script.exists() else [sys.executable, "-m", "proxy.cli"]


@dataclass
class Gate:
    """One running ``scopegate run``."""

    name: str
    process: subprocess.Popen[bytes]
    proxy: str
    core: str
    ops: str
    log_path: Path
    log_file: IO[bytes] | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def output_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def stop(self, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.log_file is not None:
            self.log_file.close()
            self.log_file = None
        return int(self.process.returncode)


def launch(workdir: Path, doc: dict[str, Any], name: str, wait: float | None = 60.0) -> Gate:
    """Start ``scopegate run`` on ``doc`` with free loopback ports (the caller's listen/issuer/store stay); wait
    until ``/readyz`` answers 200 unless ``wait`` is None (then call ``wait_ready``)."""
    doc = dict(doc)
    listen = dict(doc.get("listen") or {})
    for key in ("proxy", "core", "ops"):
        listen.setdefault(key, f"127.0.0.1:{free_port()}")
    doc["listen"] = listen
    doc.setdefault("issuer", f"http://{listen['core']}")
    doc.setdefault("adminTokens", [ADMIN_TOKEN])
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    log_path = workdir / f"{name}.log"
    log = log_path.open("wb")
    proc = subprocess.Popen([*scopegate_command(), "run", "--config", str(path)], cwd=workdir, stdout=log,
                            stderr=subprocess.STDOUT)
    gate = Gate(name, proc, f"http://{listen['proxy']}", f"http://{listen['core']}", f"http://{listen['ops']}",
                log_path, log)
    if wait is not None:
        wait_ready(gate, wait)
    return gate


def wait_ready(gate: Gate, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    last = ""
    while time.monotonic() < deadline:
        if gate.process.poll() is not None:
            gate.stop()
            raise RuntimeError(f"scopegate {gate.name} exited with {gate.process.returncode}:\n{gate.output_tail()}")
        try:
            r = httpx.get(f"{gate.ops}/readyz", timeout=2)
            if r.status_code == 200:
                return
            last = r.text
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(0.05)
    gate.stop()
    raise RuntimeError(f"scopegate {gate.name} not ready: {last}\n{gate.output_tail()}")


@contextlib.contextmanager
def postgres_store(prefix: str) -> Iterator[str]:
    """A store URL on a schema of its own on the shared server, dropped afterwards."""
    import psycopg

    schema = f"{prefix}_{secrets.token_hex(6)}"
    try:
        yield f"{POSTGRES}?schema={schema}"
    finally:
        with psycopg.connect(POSTGRES, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (``scopegate run --workers N`` forks)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def tree_usage(pid: int) -> tuple[int, int, int]:
    """(RSS bytes, open file descriptors, of which sockets) summed over the process tree of ``pid``."""
    rss = fds = sockets = 0
    page = os.sysconf("SC_PAGE_SIZE")
    for p in process_tree(pid):
        with contextlib.suppress(OSError):
            rss += int(Path(f"/proc/{p}/statm").read_text().split()[1]) * page
            for fd in os.listdir(f"/proc/{p}/fd"):
                fds += 1
                with contextlib.suppress(OSError):
                    sockets += os.readlink(f"/proc/{p}/fd/{fd}").startswith("socket:")
    return rss, fds, sockets


def tcp_connections(listen_ports: set[int], upstream_port: int) -> tuple[int, int]:
    """(connections into the listeners on ``listen_ports``, connections to the upstream), counted on the
    scopegate side from ``/proc/net/tcp{,6}``: every TCP socket that holds a descriptor (not LISTEN, not
    TIME_WAIT), so that the process's socket descriptors can be told apart from the connections that explain them."""
    inbound = outbound = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            next(f)
            for line in f:
                fields = line.split()
                state = fields[3]
                if state in ("0A", "06"):  # LISTEN, TIME_WAIT
                    continue
                local = int(fields[1].rsplit(":", 1)[1], 16)
                remote = int(fields[2].rsplit(":", 1)[1], 16)
                if local in listen_ports:
                    inbound += 1
                elif remote == upstream_port:
                    outbound += 1
    return inbound, outbound


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of the process tree of ``pid`` so far."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for p in process_tree(pid):
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


# ---------------------------------------------------------------------------------------------- upstream


@dataclass
class Upstream:
    """The echo upstream (``python3 bench/_soakkit.py upstream``) in its own process, so that it takes no
    time from the load generator's event loop."""

    process: subprocess.Popen[str]
    url: str

    @classmethod
    def start(cls) -> Upstream:
        proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "upstream"], stdout=subprocess.PIPE,
                                text=True)
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        if not line.isdigit():
            proc.kill()
            raise RuntimeError(f"upstream did not start: {line!r}")
        return cls(proc, f"http://127.0.0.1:{line}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def serve_upstream() -> int:
    """Answer every request with a small JSON body; ``/ws`` WebSocket echo."""
    from aiohttp import WSMsgType, web

    body = b'{"ok":true,"items":[1,2,3]}'

    async def handle(request: web.Request) -> web.StreamResponse:
        if request.headers.get("upgrade", "").lower() == "websocket":
            ws = web.WebSocketResponse()
            await ws.prepare(request)
            async for message in ws:
                if message.type == WSMsgType.TEXT:
                    await ws.send_str("echo:" + message.data)
            return ws
        await request.read()
        return web.Response(body=body, content_type="application/json")

    async def main() -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        print(port, flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await runner.cleanup()

    asyncio.run(main())
    return 0


# ---------------------------------------------------------------------------------------------- remote issuer


class StaticIssuer:
    """A remote issuer that serves only its metadata and key set; the bench signs its tokens, so it can make
    expired ones (the core's own tokens live at least five minutes, as Okta's)."""

    def __init__(self, path: str = "/oauth2/legacy") -> None:
        from cryptography.hazmat.primitives.asymmetric import rsa
        from jwt.algorithms import RSAAlgorithm

        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwk = json.loads(RSAAlgorithm.to_jwk(self.key.public_key()))
        jwk.update({"kid": "legacy-1", "use": "sig", "alg": "RS256"})
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                documents = {f"{path}/.well-known/oauth-authorization-server":
                             {"issuer": outer.issuer, "jwks_uri": f"{outer.issuer}/v1/keys"},
                             f"{path}/v1/keys": {"keys": [jwk]}}
                document = documents.get(self.path)
                data = json.dumps(document).encode()
                self.send_response(200 if document is not None else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.issuer = f"http://127.0.0.1:{self.server.server_address[1]}{path}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def token(self, audience: str, scopes: list[str], exp: float) -> str:
        import jwt

        now = int(time.time())
        claims = {"ver": 1, "jti": f"AT.legacy.{secrets.token_hex(8)}", "iss": self.issuer, "aud": audience,
                  "iat": min(now, int(exp) - 60), "exp": int(exp), "cid": "legacy", "client_id": "legacy",
                  "sub": "legacy", "scp": scopes}
        return jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": "legacy-1", "typ": "at+jwt"})

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# ---------------------------------------------------------------------------------------------- load


@dataclass
class LoadCounts:
    requests: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    errors: int = 0
    seconds: float = 0.0


async def closed_loop(urls: list[str], token: str, concurrency: int, stop: asyncio.Event) -> LoadCounts:
    """``concurrency`` workers, each sending GETs with ``token`` round-robin over ``urls`` until ``stop``."""
    import aiohttp

    counts = LoadCounts()
    headers = {"Authorization": f"Bearer {token}"}
    started = time.monotonic()
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=10)) as session:

        async def worker(offset: int) -> None:
            i = offset
            while not stop.is_set():
                url = urls[i % len(urls)]
                i += 1
                try:
                    async with session.get(url, headers=headers) as response:
                        await response.read()
                        key = str(response.status)
                except (aiohttp.ClientError, TimeoutError):
                    counts.errors += 1
                    key = "error"
                counts.requests += 1
                counts.statuses[key] = counts.statuses.get(key, 0) + 1

        await asyncio.gather(*(worker(k) for k in range(concurrency)))
    counts.seconds = time.monotonic() - started
    return counts


@dataclass
class LoadProcess:
    """``closed_loop`` in a process of its own (``python3 bench/_soakkit.py load``)."""

    process: subprocess.Popen[str]

    @classmethod
    def start(cls, urls: list[str], token: str, concurrency: int) -> LoadProcess:
        proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "load", ",".join(urls), token,
                                 "--concurrency", str(concurrency)], stdout=subprocess.PIPE, text=True)
        return cls(proc)

    def stop(self) -> dict[str, Any]:
        self.process.send_signal(signal.SIGTERM)
        out, _ = self.process.communicate(timeout=30)
        return dict(json.loads(out.strip().splitlines()[-1]))


def run_load(urls: str, token: str, concurrency: int) -> int:
    async def main() -> LoadCounts:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        return await closed_loop(urls.split(","), token, concurrency, stop)

    counts = asyncio.run(main())
    print(json.dumps({"requests": counts.requests, "statuses": counts.statuses, "errors": counts.errors,
                      "seconds": round(counts.seconds, 3),
                      "rps": round(counts.requests / counts.seconds, 1) if counts.seconds else 0.0}), flush=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("upstream")
    load = sub.add_parser("load")
    load.add_argument("urls")
    load.add_argument("token")
    load.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    if args.command == "upstream":
        return serve_upstream()
    return run_load(args.urls, args.token, args.concurrency)


if __name__ == "__main__":
    sys.exit(main())
