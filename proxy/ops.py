"""The ops listener: liveness, readiness and Prometheus metrics (DESIGN §1, §7)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route


@dataclass(frozen=True)
class Check:
    """One readiness condition: ``probe()`` returns None when ready, else why not."""

    name: str
    probe: Callable[[], str | None]


def build_ops_app(registry: CollectorRegistry, checks: list[Check]) -> Starlette:
    def failing() -> dict[str, str]:
        failures: dict[str, str] = {}
        for check in checks:
            try:
                problem = check.probe()
            except Exception as exc:  # a probe that raises is a failed probe, not a crashed listener
                problem = f"{type(exc).__name__}: {exc}"
            if problem is not None:
                failures[check.name] = problem
        return failures

    # What /readyz answers, as a series: an alert can say "not ready" without scraping the probe.
    ready = Gauge("scopegate_ready", "1 when every readiness check passes (what /readyz answers), else 0.",
                  registry=registry)
    ready.set_function(lambda: 0.0 if failing() else 1.0)

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok\n")

    async def readyz(request: Request) -> Response:
        failures = failing()
        body = {"ready": not failures, "checks": {c.name: failures.get(c.name, "ok") for c in checks}}
        return JSONResponse(body, status_code=503 if failures else 200)

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return Starlette(routes=[
        Route("/healthz", healthz, methods=["GET", "HEAD"]),
        Route("/readyz", readyz, methods=["GET", "HEAD"]),
        Route("/metrics", metrics, methods=["GET"]),
    ])
