"""Issue 3, "System log": events are written as JSON lines to stdout and served by ``/api/v1/logs``;
through the real process, one denial is the same event in both places."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import ADMIN_TOKEN, RunningScopegate
from tests.e2e.recording_upstream import RecordingUpstream
from tests.e2e.test_proxy_gate import SECRET, config, wait_for

pytestmark = pytest.mark.e2e


def stdout_events(gate: RunningScopegate) -> list[dict[str, Any]]:
    events = []
    for line in gate.output().splitlines():
        if line.startswith("{") and '"eventType"' in line:
            events.append(json.loads(line))
    return events


def test_a_denial_is_the_same_event_on_stdout_and_in_the_logs_api(scopegate: Callable[..., RunningScopegate],
                                                                   upstream: RecordingUpstream) -> None:
    """A token request for an undefined scope is denied; /api/v1/logs returns its FAILURE event with the
    reason and debug data, and stdout carries the same event (same uuid, same content), holding no secret."""
    gate = scopegate(config(upstream.url))
    denied = httpx.post(f"{gate.core}/oauth2/orders/v1/token", auth=("service", SECRET),
                        data={"grant_type": "client_credentials", "scope": "orders:delete"})
    assert denied.json()["error"] == "invalid_scope"
    response = httpx.get(f"{gate.core}/api/v1/logs", headers={"Authorization": f"SSWS {ADMIN_TOKEN}"},
                         params={"filter": 'eventType eq "app.oauth2.as.token.grant" and outcome.result eq "FAILURE"'})
    assert response.status_code == 200, response.text
    [event] = response.json()
    assert event["outcome"] == {"result": "FAILURE", "reason": "no_matching_scope"}
    assert event["debugContext"]["debugData"]["requested_scopes"] == "orders:delete"
    wait_for(lambda: any(e["uuid"] == event["uuid"] for e in stdout_events(gate)), 5)
    [printed] = [e for e in stdout_events(gate) if e["uuid"] == event["uuid"]]
    assert printed == event
    assert SECRET not in gate.output() and ADMIN_TOKEN not in gate.output()
    gate.stop()
