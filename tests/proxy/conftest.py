"""Fixtures for the proxy tests: a recording upstream on a free port and a ProxyApp wired to it."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from config.schema import ScopegateConfig
from proxy.app import ProxyApp
from proxy.metrics import ProxyMetrics
from tests.clock import Clock
from tests.proxy.gatekit import NOW, FakeRevocation, InMemoryKeys, RecordingUpstream, default_keys, gate_config


@dataclass
class Gate:
    app: ProxyApp
    client: httpx.AsyncClient
    upstream: RecordingUpstream
    keys: InMemoryKeys
    revocation: FakeRevocation
    clock: Clock
    registry: CollectorRegistry
    log: io.StringIO

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        value = self.registry.get_sample_value(name, labels or {})
        return 0.0 if value is None else value

    def log_lines(self) -> list[dict[str, Any]]:
        import json

        return [json.loads(line) for line in self.log.getvalue().splitlines()]


async def make_gate(upstream: RecordingUpstream, cfg: ScopegateConfig | None = None) -> AsyncIterator[Gate]:
    cfg = cfg or gate_config(upstream.url)
    keys = default_keys()
    revocation = FakeRevocation()
    clock = Clock(NOW)
    registry = CollectorRegistry()
    log = io.StringIO()
    app = ProxyApp(cfg, keys, revocation, ProxyMetrics(registry), log_stream=log, now=clock)
    await app.startup()
    transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 5555))
    async with httpx.AsyncClient(transport=transport, base_url="http://api.example.com") as client:
        yield Gate(app, client, upstream, keys, revocation, clock, registry, log)
    await app.shutdown()


@pytest.fixture
async def upstream() -> AsyncIterator[RecordingUpstream]:
    server = RecordingUpstream()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def gate(upstream: RecordingUpstream) -> AsyncIterator[Gate]:
    async for g in make_gate(upstream):
        yield g
