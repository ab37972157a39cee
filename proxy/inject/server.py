"""``scopegate inject``: the webhook over HTTPS and the ops listener (health, readiness, metrics)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import ssl
import sys
import time
import traceback
from dataclasses import dataclass
from typing import Any

import uvicorn
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from proxy.inject.patch import InjectorSettings
from proxy.inject.review import MALFORMED, OUTCOMES, review
from proxy.inject.review import response as review_response
from proxy.inject.tls import ReloadingCertificate
from proxy.ops import Check, build_ops_app

EXIT_STARTUP = 2
MAX_BODY = 4 * 1024 * 1024
"""The API server's own request limit is 3 MiB; a review can only be a little larger than its pod."""
BODY_TIMEOUT = 10.0
"""The API server gives up after the webhook's timeoutSeconds (at most 30 s); a slower sender is not it."""
ERROR = "error"
_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class InjectorMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.admissions = Counter("scopegate_injector_admissions", "Admission reviews answered, by outcome.",
                                  ["outcome"], registry=registry)
        for outcome in (*OUTCOMES, ERROR):
            self.admissions.labels(outcome)
        self.duration = Histogram("scopegate_injector_admission_duration_seconds",
                                  "Time from the review's first byte to the answer.", buckets=_BUCKETS,
                                  registry=registry)
        self.reloads = Counter("scopegate_injector_certificate_reloads", "Certificate reloads, by result.",
                               ["result"], registry=registry)
        for result in ("ok", "error"):
            self.reloads.labels(result)
        self.expiry = Gauge("scopegate_injector_certificate_expiry_timestamp_seconds",
                            "When the served certificate expires (Unix time).", registry=registry)

    def record_reload(self, ok: bool) -> None:
        self.reloads.labels("ok" if ok else "error").inc()


def build_webhook_app(settings: InjectorSettings, metrics: InjectorMetrics) -> Starlette:
    async def mutate(request: Request) -> Response:
        started = time.perf_counter()
        try:
            status, body, outcome = await _answer(request, settings)
        finally:
            metrics.duration.observe(time.perf_counter() - started)
        metrics.admissions.labels(outcome).inc()
        return JSONResponse(body, status_code=status)

    return Starlette(routes=[Route("/mutate", mutate, methods=["POST"])])


async def _answer(request: Request, settings: InjectorSettings) -> tuple[int, dict[str, Any], str]:
    try:
        async with asyncio.timeout(BODY_TIMEOUT):
            raw = await _read_body(request)
    except TimeoutError:
        return 408, review_response("", allowed=False, code=408, message="the review's body did not arrive in "
                                    f"{BODY_TIMEOUT:g} s"), MALFORMED
    except (_TooLarge, ClientDisconnect) as exc:
        return 413, review_response("", allowed=False, code=413, message=str(exc) or "disconnected"), MALFORMED
    try:
        answer = review(raw, settings)
    except Exception as exc:  # a bug must not take the webhook down; the API server applies failurePolicy
        traceback.print_exception(exc)
        return 500, review_response("", allowed=False, code=500, message="internal error"), ERROR
    return answer.status_code, answer.body, answer.outcome


class _TooLarge(Exception):
    pass


async def _read_body(request: Request) -> bytes:
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > MAX_BODY:
        raise _TooLarge(f"the review is larger than {MAX_BODY} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise _TooLarge(f"the review is larger than {MAX_BODY} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


@dataclass
class _Listener:
    name: str
    server: uvicorn.Server
    task: asyncio.Task[None]


def bind(name: str, address: str) -> socket.socket:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"{address!r} must be host:port, such as 0.0.0.0:8443")
    host = host.strip("[]")
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, int(port)))
    except OSError as exc:
        sock.close()
        raise ValueError(f"cannot listen on {address} for the {name} listener: {exc.strerror or exc}") from None
    sock.listen(512)
    sock.setblocking(False)
    return sock


async def _serve(name: str, app: Any, sock: socket.socket, tls: ssl.SSLContext | None) -> _Listener:
    config = uvicorn.Config(app, lifespan="off", loop="none", log_level="warning", access_log=False,
                            server_header=False, proxy_headers=False, timeout_graceful_shutdown=10,
                            limit_concurrency=256, timeout_keep_alive=30)
    config.load()
    # The context whose SNI callback serves the newest certificate; uvicorn would build a fixed one.
    config.ssl = tls
    server = uvicorn.Server(config)
    server.lifespan = config.lifespan_class(config)
    await server.startup(sockets=[sock])
    return _Listener(name, server, asyncio.create_task(server.main_loop()))


async def serve(settings: InjectorSettings, certificate: ReloadingCertificate, metrics: InjectorMetrics,
                registry: CollectorRegistry, webhook_sock: socket.socket, ops_sock: socket.socket,
                stop: asyncio.Event, check_interval: float = 10.0) -> None:
    """Serve until ``stop`` is set, then drain both listeners."""
    checks = [Check("certificate", lambda: None if certificate.not_after > time.time() else "expired")]
    listeners = [
        await _serve("webhook", build_webhook_app(settings, metrics), webhook_sock, certificate.listening),
        await _serve("ops", build_ops_app(registry, checks), ops_sock, None),
    ]

    async def watch_files() -> None:
        # Handshakes check the files too; this keeps the expiry gauge true on an idle webhook.
        while True:
            await asyncio.sleep(check_interval)
            certificate.check()

    watcher = asyncio.create_task(watch_files())
    await stop.wait()
    watcher.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await watcher
    await asyncio.gather(*(lst.server.shutdown() for lst in listeners))
    for lst in listeners:
        lst.server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await lst.task


def run(settings: InjectorSettings, *, cert_file: str, key_file: str, listen: str, ops: str) -> int:
    """``scopegate inject``: returns the exit status."""
    registry = CollectorRegistry()
    metrics = InjectorMetrics(registry)
    try:
        certificate = ReloadingCertificate(cert_file, key_file, on_reload=metrics.record_reload)
    except (OSError, ssl.SSLError) as exc:
        print(f"scopegate inject: cannot load the certificate {cert_file} and key {key_file}: {exc}", file=sys.stderr)
        return EXIT_STARTUP
    metrics.expiry.set_function(lambda: certificate.not_after)
    try:
        webhook_sock = bind("webhook", listen)
    except ValueError as exc:
        print(f"scopegate inject: {exc}", file=sys.stderr)
        return EXIT_STARTUP
    try:
        ops_sock = bind("ops", ops)
    except ValueError as exc:
        webhook_sock.close()
        print(f"scopegate inject: {exc}", file=sys.stderr)
        return EXIT_STARTUP

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        print(f"scopegate inject: serving webhook https://{listen}/mutate, ops http://{ops}", file=sys.stderr,
              flush=True)
        await serve(settings, certificate, metrics, registry, webhook_sock, ops_sock, stop)

    asyncio.run(main())
    return 0


__all__ = ["InjectorMetrics", "build_webhook_app", "run", "serve"]
