"""Issue 4, "Revocation state": when the change feed cannot be read for longer than
``revocation.maxStaleness``, ``/readyz`` fails and the proxy answers 503 (``onStale: deny``) or keeps
the last state (``onStale: allow``), and says so in the decision log and a metric. Through the real
process on PostgreSQL, made unreadable by a lock held on the feed's table."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import RunningScopegate
from tests.e2e.recording_upstream import RecordingUpstream
from tests.e2e.test_proxy_gate import bearer, config, decision_lines, sample, token, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

BASE = os.environ.get("SCOPEGATE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture
def schema() -> Iterator[str]:
    import psycopg

    name = f"e2e_stale_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(BASE, autocommit=True)
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is required at {BASE}: {exc}")
    try:
        yield name
    finally:
        admin.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        admin.close()


def start(scopegate: Callable[..., RunningScopegate], upstream: RecordingUpstream, schema: str,
          on_stale: str) -> RunningScopegate:
    revocation: dict[str, Any] = {"maxStaleness": "1s", "pollInterval": "100ms", "onStale": on_stale}
    return scopegate(config(upstream.url, store=f"{BASE}?schema={schema}", revocation=revocation))


def ready(gate: RunningScopegate) -> int:
    return httpx.get(f"{gate.ops}/readyz", timeout=5).status_code


def orders(gate: RunningScopegate, access: str) -> int:
    return httpx.get(f"{gate.proxy}/api/orders", headers=bearer(access), timeout=5).status_code


def test_stale_feed_fails_readiness_and_denies_with_503(scopegate: Callable[..., RunningScopegate],
                                                        upstream: RecordingUpstream, schema: str) -> None:
    """onStale: deny (the default): while the feed is unreadable past maxStaleness, /readyz fails, a
    token request gets 503 stale_revocation, the decision log and the requests metric name the reason,
    and the state-age gauge exceeds maxStaleness; once readable again, both recover."""
    import psycopg

    gate = start(scopegate, upstream, schema, "deny")
    access = token(gate)
    assert orders(gate, access) == 200 and ready(gate) == 200
    with psycopg.connect(BASE) as locker:
        locker.execute(f'LOCK TABLE "{schema}".changes IN ACCESS EXCLUSIVE MODE')
        wait_for(lambda: ready(gate) != 200, 10)
        assert ready(gate) == 503
        response = httpx.get(f"{gate.proxy}/api/orders", headers=bearer(access), timeout=5)
        assert (response.status_code, response.json()["error"]) == (503, "stale_revocation")
        assert sample(gate, "scopegate_revocation_state_age_seconds") > 1.0
        assert sample(gate, "scopegate_requests_total", route="orders-read", decision="deny",
                      reason="stale_revocation") >= 1
        locker.rollback()
    wait_for(lambda: ready(gate) == 200 and orders(gate, access) == 200, 10)
    # The decision log is written in batches (at least every 100 ms), after the answers.
    wait_for(lambda: any(d["reason"] == "stale_revocation" and d["status"] == 503 for d in decision_lines(gate)))
    gate.stop()


def test_stale_feed_with_on_stale_allow_keeps_the_last_state(scopegate: Callable[..., RunningScopegate],
                                                             upstream: RecordingUpstream, schema: str) -> None:
    """onStale: allow: /readyz still fails (the instance is not current) but the proxy keeps serving from
    the last state, and the decision log and the metric say the decision was made on a stale state."""
    import psycopg

    gate = start(scopegate, upstream, schema, "allow")
    access = token(gate)
    assert orders(gate, access) == 200
    with psycopg.connect(BASE) as locker:
        locker.execute(f'LOCK TABLE "{schema}".changes IN ACCESS EXCLUSIVE MODE')
        wait_for(lambda: ready(gate) != 200, 10)
        assert orders(gate, access) == 200
        assert sample(gate, "scopegate_requests_total", route="orders-read", decision="allow",
                      reason="stale_revocation") >= 1
        locker.rollback()
    wait_for(lambda: any(d["reason"] == "stale_revocation" for d in decision_lines(gate)))  # written in batches
    stale = [d for d in decision_lines(gate) if d["reason"] == "stale_revocation"]
    assert stale and all(d["status"] == 200 for d in stale)
    gate.stop()
