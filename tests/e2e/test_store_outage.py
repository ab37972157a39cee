"""Issue 12 item 2, "No listener may ever block on the database": the real process on PostgreSQL behind a
TCP relay the test controls (``fault_proxy.FaultProxy``), which black-holes (accepts and reads, never
answers, no RST: a partition) or refuses.

While the store cannot be reached: a valid token keeps passing the proxy until ``revocation.maxStaleness``
and then gets 503 ``stale_revocation`` (``onStale: deny``); the token endpoint answers 503
``temporarily_unavailable`` and a management write 503 in Okta's error object, each within a bound set by
``storeTimeout`` (1 s here); ``/readyz`` answers at once, not ready. No body names the store (URL, host,
port, user, database) or carries the driver's message. When the relay passes again everything recovers
without a restart. Every HTTP call has a client timeout, so a hang fails the test instead of stalling it.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.e2e.conftest import RunningScopegate
from tests.e2e.fault_proxy import FaultProxy
from tests.e2e.recording_upstream import RecordingUpstream
from tests.e2e.test_proxy_gate import SECRET, bearer, config, sample, token, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

BASE = os.environ.get("SCOPEGATE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
BOUND = 3.0
"""Seconds any answer may take while the store is away (storeTimeout 1 s, plus scheduling)."""
PROMPT = 1.5
"""Seconds within which what never needs the store (the proxy, /readyz) answers, load on the machine included."""
MAX_STALENESS = 3.0


@pytest.fixture
def relay() -> Iterator[FaultProxy]:
    parts = urlsplit(BASE)
    proxy = FaultProxy(parts.hostname or "127.0.0.1", parts.port or 5432).start()
    yield proxy
    proxy.stop()


@pytest.fixture
def schema() -> Iterator[str]:
    import psycopg

    name = f"e2e_outage_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(BASE, autocommit=True)
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is required at {BASE}: {exc}")
    try:
        yield name
    finally:
        admin.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        admin.close()


def start(scopegate: Callable[..., RunningScopegate], upstream: RecordingUpstream, relay: FaultProxy,
          schema: str) -> RunningScopegate:
    parts = urlsplit(BASE)
    store = f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[0]}@127.0.0.1:{relay.port}{parts.path}?schema={schema}"
    revocation = {"maxStaleness": f"{MAX_STALENESS:g}s", "pollInterval": "100ms", "onStale": "deny"}
    return scopegate(config(upstream.url, store=store, storeTimeout="1s", revocation=revocation))


def timed(call: Callable[[], httpx.Response]) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = call()
    return response, time.monotonic() - started


def orders(gate: RunningScopegate, access: str) -> httpx.Response:
    return httpx.get(f"{gate.proxy}/api/orders", headers=bearer(access), timeout=BOUND)


def mint(gate: RunningScopegate) -> httpx.Response:
    return httpx.post(f"{gate.core}/oauth2/orders/v1/token", auth=("service", SECRET),
                      data={"grant_type": "client_credentials", "scope": "orders:read"}, timeout=BOUND)


def create_group(gate: RunningScopegate) -> httpx.Response:
    return httpx.post(f"{gate.core}/api/v1/groups", headers={"Authorization": f"SSWS {gate.admin_token}"},
                      json={"profile": {"name": f"outage-{uuid.uuid4().hex[:8]}"}}, timeout=BOUND)


def readyz(gate: RunningScopegate) -> httpx.Response:
    return httpx.get(f"{gate.ops}/readyz", timeout=BOUND)


def assert_redacted(response: httpx.Response, relay: FaultProxy, schema: str) -> None:
    """No store URL, host, port, user, database or driver message in a body (issue 12)."""
    text = response.text.lower()
    for secret in ("postgres", str(relay.port), "127.0.0.1", schema, "/test", "connection", "psycopg",
                   "server closed", "could not", "no answer", "store "):
        assert secret.lower() not in text, (secret, response.text)


def unknown_kid_token(gate: RunningScopegate) -> str:
    """A token for the local issuer signed by a key it never had: the proxy's one store read on a request
    (a local key set refresh, at most once per cooldown) must be bounded too."""
    import jwt
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = int(time.time())
    claims = {"iss": gate.issuer("orders"), "aud": "https://api.example.com/api", "sub": "service", "cid": "service",
              "scp": ["orders:read"], "iat": now, "exp": now + 300, "jti": uuid.uuid4().hex}
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": "not-a-kid-of-ours", "typ": "at+jwt"})


def assert_outage_answers(gate: RunningScopegate, relay: FaultProxy, schema: str, access: str,
                          outage_started: float) -> None:
    """What every listener answers, and how fast, while the relay is not passing."""
    response, took = timed(lambda: orders(gate, access))
    assert (response.status_code, took < PROMPT) == (200, True), (response.text, took)

    forged = unknown_kid_token(gate)
    response, took = timed(lambda: orders(gate, forged))
    assert response.status_code in (401, 503) and took < BOUND, (response.status_code, response.text, took)
    assert_redacted(response, relay, schema)

    response, took = timed(lambda: mint(gate))
    assert response.status_code == 503 and took < BOUND, (response.status_code, response.text, took)
    body: dict[str, Any] = response.json()
    assert body["error"] == "temporarily_unavailable" and response.headers["retry-after"] == "1", body
    assert_redacted(response, relay, schema)

    response, took = timed(lambda: create_group(gate))
    assert response.status_code == 503 and took < BOUND, (response.status_code, response.text, took)
    body = response.json()
    assert body["errorCode"] == "E0000009" and body["errorSummary"] == "Internal Server Error", body
    assert {"errorLink", "errorId", "errorCauses"} <= set(body) and response.headers["retry-after"] == "1"
    assert_redacted(response, relay, schema)

    # Several clients at once: an outage costs each of them the deadline at most, not a place in a queue.
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: timed(lambda: mint(gate)), range(8)))
    assert all(r.status_code == 503 and took < BOUND for r, took in results), [(r.status_code, t) for r, t in results]

    def not_ready() -> bool:
        response, took = timed(lambda: readyz(gate))
        assert took < PROMPT, took
        return response.status_code == 503

    wait_for(not_ready, BOUND)
    response = readyz(gate)
    assert response.json()["ready"] is False and response.json()["checks"]["store"] != "ok"
    assert_redacted(response, relay, schema)
    assert sample(gate, "scopegate_readiness_check", check="store") == 0.0

    # Past maxStaleness the proxy does what onStale says, promptly.
    time.sleep(max(0.0, outage_started + MAX_STALENESS + 0.5 - time.monotonic()))
    response, took = timed(lambda: orders(gate, access))
    assert (response.status_code, response.json()["error"], took < PROMPT) == (503, "stale_revocation", True)


def assert_recovers(gate: RunningScopegate, relay: FaultProxy, access: str) -> None:
    relay.set_mode("pass")

    def recovered() -> bool:
        return (readyz(gate).status_code == 200 and orders(gate, access).status_code == 200
                and mint(gate).status_code == 200)

    wait_for(recovered, 10)
    assert sample(gate, "scopegate_readiness_check", check="store") == 1.0
    assert create_group(gate).status_code in (200, 201)


def test_store_partition_blackhole_never_blocks_a_listener(scopegate: Callable[..., RunningScopegate],
                                                           upstream: RecordingUpstream, relay: FaultProxy,
                                                           schema: str) -> None:
    gate = start(scopegate, upstream, relay, schema)
    access = token(gate)
    assert orders(gate, access).status_code == 200 and readyz(gate).status_code == 200
    relay.set_mode("blackhole")
    assert_outage_answers(gate, relay, schema, access, time.monotonic())
    assert_recovers(gate, relay, access)
    # The operator's detail is on stderr when the outage starts, not once per failed request (a dozen here).
    assert 1 <= gate.output().count("scopegate: store unavailable") <= 2
    assert gate.stop() == 0


def test_store_refused_connections_fail_fast_and_recover(scopegate: Callable[..., RunningScopegate],
                                                         upstream: RecordingUpstream, relay: FaultProxy,
                                                         schema: str) -> None:
    gate = start(scopegate, upstream, relay, schema)
    access = token(gate)
    assert orders(gate, access).status_code == 200
    relay.set_mode("refuse")
    assert_outage_answers(gate, relay, schema, access, time.monotonic())
    assert_recovers(gate, relay, access)
    assert gate.stop() == 0
