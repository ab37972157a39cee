"""The ops listener: liveness, readiness and Prometheus metrics (DESIGN §1, §7)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TextIO

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


class BackgroundCheck:
    """A readiness condition whose probe blocks (the store's ping): it runs on a thread of its own every
    ``interval``, given ``deadline`` seconds to answer, and ``/readyz`` reads the last result, never waiting
    on the probe (issue 12: a ping on the event loop froze every listener while the network to PostgreSQL
    black-holed). What ``/readyz`` says is generic ("unavailable"); the detail goes to ``log`` once per
    change of state."""

    def __init__(self, name: str, probe: Callable[[], Any], interval: float, deadline: float,
                 log: TextIO | None = sys.stderr) -> None:
        self.name = name
        self._probe = probe
        self.interval = interval
        self.deadline = deadline
        self._log = log
        self.problem: str | None = "not checked yet"
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"scopegate-{name}-check")
        self._pending: asyncio.Future[Any] | None = None

    def check(self) -> Check:
        return Check(self.name, lambda: self.problem)

    async def run_once(self) -> None:
        # A probe still blocked from the last round is waited on again, never doubled up.
        if self._pending is None or self._pending.done():
            self._pending = asyncio.get_running_loop().run_in_executor(self._executor, self._probe)
        try:
            await asyncio.wait_for(asyncio.shield(self._pending), self.deadline)
        except TimeoutError:
            self._set(f"no answer within {self.deadline:g}s", "the check is still waiting")
        except Exception as exc:
            self._set("unavailable", str(exc) or type(exc).__name__)
        else:
            self._set(None, None)

    def _set(self, problem: str | None, detail: str | None) -> None:
        before, self.problem = self.problem, problem
        if self._log is None or (before is None) == (problem is None):
            return
        if problem is None:
            print(f"scopegate: readiness: {self.name} ok again", file=self._log, flush=True)
        else:
            print(f"scopegate: readiness: {self.name} {problem}: {detail}", file=self._log, flush=True)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.run_once()

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def _passing(check: Check) -> Callable[[], float]:
    def value() -> float:
        try:
            return 1.0 if check.probe() is None else 0.0
        except Exception:  # a probe that raises is a failed probe, not a failed scrape
            return 0.0

    return value


def build_ops_app(registry: CollectorRegistry, checks: list[Check],
                  exposition: Callable[[], bytes] | None = None) -> Starlette:
    """``exposition`` replaces the registry's own text on /metrics (``WorkerMetrics.render``: every worker's)."""
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
    # Which check fails (issue 12: an alert can say "the store" rather than only "not ready").
    per_check = Gauge("scopegate_readiness_check", "1 while this readiness check passes, else 0.", ["check"],
                      registry=registry)
    for check in checks:
        per_check.labels(check=check.name).set_function(_passing(check))

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok\n")

    async def readyz(request: Request) -> Response:
        failures = failing()
        body = {"ready": not failures, "checks": {c.name: failures.get(c.name, "ok") for c in checks}}
        return JSONResponse(body, status_code=503 if failures else 200)

    async def metrics(request: Request) -> Response:
        body = generate_latest(registry) if exposition is None else exposition()
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    return Starlette(routes=[
        Route("/healthz", healthz, methods=["GET", "HEAD"]),
        Route("/readyz", readyz, methods=["GET", "HEAD"]),
        Route("/metrics", metrics, methods=["GET"]),
    ])
