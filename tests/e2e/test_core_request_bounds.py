"""Issue 8 items 4 and 7 through the real process: the probe's requests to an unknown authorization server.

A 120 KiB ``scope`` of repeated "eyJ" sent without credentials stalled every listener for 3.6 s (a
quadratic scrubber regex under the GIL), and a 1 MB ``scope`` stored a 1 MB system-log event and wrote
1 MB to stdout.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable

import httpx
import pytest

from tests.e2e.conftest import RunningScopegate

pytestmark = pytest.mark.e2e

UNKNOWN = "/oauth2/no-such-server/v1/token"


def logs(gate: RunningScopegate) -> list[dict[str, object]]:
    response = httpx.get(f"{gate.core}/api/v1/logs", params={"filter": 'eventType eq "app.oauth2.as.token.grant"'},
                         headers={"Authorization": f"SSWS {gate.admin_token}"}, timeout=10)
    assert response.status_code == 200, response.text
    events: list[dict[str, object]] = response.json()
    return events


def test_redos_syslog_scrubber_and_oversized_event_through_the_process(
        scopegate: Callable[..., RunningScopegate]) -> None:
    """Over the form limit (the probe's 120 KiB and 1 MB): 413 at once, nothing logged. Under it (60 KiB of
    "eyJ"): answered quickly, ops /healthz stays fast meanwhile, and the event stored and printed is a few KiB."""
    gate = scopegate({})
    with httpx.Client(timeout=30) as client:
        for size in (120 * 1024, 1 << 20):
            response = client.post(f"{gate.core}{UNKNOWN}",
                                   data={"grant_type": "client_credentials", "scope": "eyJ" * (size // 3)})
            assert response.status_code == 413
            assert response.json()["error"] == "invalid_request"
        assert logs(gate) == []

        health: list[float] = []
        done = threading.Event()

        def probe() -> None:
            with httpx.Client(timeout=30) as ops:
                while not done.is_set():
                    started = time.monotonic()
                    ops.get(f"{gate.ops}/healthz")
                    health.append(time.monotonic() - started)
                    time.sleep(0.01)

        prober = threading.Thread(target=probe)
        prober.start()
        deadline = time.monotonic() + 10
        while not health and time.monotonic() < deadline:
            time.sleep(0.01)
        try:
            started = time.monotonic()
            for _ in range(3):
                response = client.post(f"{gate.core}{UNKNOWN}",
                                       data={"grant_type": "client_credentials", "scope": "eyJ" * 20_000})
                assert response.status_code == 400
            elapsed = time.monotonic() - started
        finally:
            done.set()
            prober.join()
    assert elapsed < 1.5, elapsed
    assert max(health) < 0.3, max(health)
    events = logs(gate)
    assert len(events) == 3
    assert all(len(json.dumps(event)) < 8 * 1024 for event in events)
    lines = [line for line in gate.output().splitlines() if '"app.oauth2.as.token.grant"' in line]
    assert len(lines) == 3 and all(len(line) < 8 * 1024 for line in lines)
