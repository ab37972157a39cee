"""The gate of issue 5 through the real ``scopegate run`` process, step by step, in front of a real
upstream that records what it receives (``recording_upstream.py``). Tokens come from the process's own
core (client_credentials)."""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import jwt
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import RunningScopegate, decision_lines, free_port
from tests.e2e.recording_upstream import RecordingUpstream, raw_request, status_of

pytestmark = pytest.mark.e2e

RESOURCE = "https://api.example.com/api"
SECRET = "service-secret-0123456789abc"
UPSTREAM_TIMEOUT = 2.0


def config(upstream_url: str, **extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "upstream": {"url": upstream_url, "timeout": f"{UPSTREAM_TIMEOUT:g}s", "connectTimeout": "1s"},
        "routes": [
            {"name": "public", "path": "/api/public", "public": True},
            {"name": "orders-admin", "path": "/api/orders/admin", "scopes": {"allOf": ["orders:read", "orders:admin"]}},
            {"name": "orders-read", "path": "/api/orders", "methods": ["GET", "HEAD"],
             "scopes": {"anyOf": ["orders:read", "orders:write"]}},
            {"name": "orders-write", "path": "/api/orders", "methods": ["POST", "PUT", "PATCH", "DELETE"],
             "scopes": {"allOf": ["orders:write"]}},
            {"name": "outside", "path": "/status", "public": True},
        ],
        "authorizationServers": [{
            "id": "orders", "name": "Orders API", "audiences": [RESOURCE],
            "scopes": [{"name": "orders:read"}, {"name": "orders:write"}, {"name": "orders:admin"}],
            "policies": [{"name": "Everyone", "priority": 1, "conditions": {"clients": {"include": ["ALL_CLIENTS"]}},
                          "rules": [{"name": "All", "priority": 1,
                                     "conditions": {"grantTypes": {"include": ["client_credentials"]},
                                                    "scopes": {"include": ["*"]}},
                                     "actions": {"token": {"accessTokenLifetimeMinutes": 60}}}]}],
        }],
        "apps": [{"clientId": "service", "clientSecret": SECRET, "name": "Service"}],
    }
    doc.update(extra)
    return doc


@pytest.fixture
def gate(scopegate: Callable[..., RunningScopegate], upstream: RecordingUpstream) -> RunningScopegate:
    return scopegate(config(upstream.url))


def token(gate: RunningScopegate, scope: str = "orders:read") -> str:
    response = httpx.post(f"{gate.core}/oauth2/orders/v1/token", auth=("service", SECRET),
                          data={"grant_type": "client_credentials", "scope": scope})
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


def metrics(gate: RunningScopegate) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = httpx.get(f"{gate.ops}/metrics").text
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def sample(gate: RunningScopegate, name: str, **labels: str) -> float:
    return metrics(gate).get((name, frozenset(labels.items())), 0.0)


def last_reason(gate: RunningScopegate) -> str | None:
    lines = decision_lines(gate)
    return str(lines[-1]["reason"]) if lines else None


def wait_for(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


# ---------------------------------------------------------------------------------------------- 1-2: guard, paths


def test_parse_guard_refuses_content_length_with_transfer_encoding(gate: RunningScopegate,
                                                                   upstream: RecordingUpstream) -> None:
    """A request with both Content-Length and Transfer-Encoding is answered 400 and the connection is closed,
    and nothing reaches the upstream."""
    request = (b"POST /api/public/x HTTP/1.1\r\nHost: api.example.com\r\nContent-Length: 5\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /api/public/smuggled HTTP/1.1\r\nHost: x\r\n\r\n")
    response, closed = raw_request(gate.proxy, request)
    assert status_of(response) == 400
    assert closed
    assert response.count(b"HTTP/1.1") == 1
    assert upstream.requests == []


def test_upstream_receives_exactly_the_authorized_path(gate: RunningScopegate, upstream: RecordingUpstream) -> None:
    """Dot segments and escaped unreserved characters are normalized once; the upstream receives that path byte
    for byte, and the decision log names the same path."""
    access = token(gate)
    request = (b"GET /api/orders/x/../%7Ealice/./items?q=%2F1 HTTP/1.1\r\nHost: api.example.com\r\n"
               b"Authorization: Bearer " + access.encode() + b"\r\nConnection: close\r\n\r\n")
    response, _ = raw_request(gate.proxy, request)
    assert status_of(response) == 200, response
    assert upstream.last().raw_path == "/api/orders/~alice/items?q=%2F1"
    wait_for(lambda: any(d["path"] == "/api/orders/~alice/items" for d in decision_lines(gate)))
    bad, _ = raw_request(gate.proxy, b"GET /api/public/a%2Fb HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert status_of(bad) == 400
    assert len(upstream.requests) == 1


# ---------------------------------------------------------------------------------------------- 3-5: resource, route, bearer


def test_resource_and_route_resolution(gate: RunningScopegate, upstream: RecordingUpstream) -> None:
    """A path no AS covers is 403 no_resource unless a public route names it; inside the resource, a path
    with no route is 403 no_route even with a valid token; a public route takes no token."""
    access = token(gate)
    elsewhere = httpx.get(f"{gate.proxy}/elsewhere", headers=bearer(access))
    assert (elsewhere.status_code, elsewhere.json()["error"]) == (403, "no_resource")
    assert httpx.get(f"{gate.proxy}/apix/orders", headers=bearer(access)).status_code == 403  # segment-aligned
    unrouted = httpx.get(f"{gate.proxy}/api/other", headers=bearer(access))
    assert (unrouted.status_code, unrouted.json()["error"]) == (403, "no_route")
    assert upstream.requests == []
    assert httpx.get(f"{gate.proxy}/status").status_code == 200          # public, outside every resource
    assert httpx.get(f"{gate.proxy}/api/public/ping").status_code == 200  # public, inside the resource
    assert [r.raw_path for r in upstream.requests] == ["/status", "/api/public/ping"]
    wait_for(lambda: len(decision_lines(gate)) >= 5)
    reasons = [d["reason"] for d in decision_lines(gate)]
    assert reasons == ["no_resource", "no_resource", "no_route", "public", "public"]


def test_bearer_extraction_challenges(gate: RunningScopegate, upstream: RecordingUpstream) -> None:
    """No token, or another scheme: 401 with a bare Bearer challenge naming the AS as realm; two credentials:
    400 invalid_request."""
    for headers in ({}, {"Authorization": "Basic c2VydmljZTpzZWNyZXQ="}):
        response = httpx.get(f"{gate.proxy}/api/orders", headers=headers)
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == 'Bearer realm="orders"'
    access = token(gate)
    two = httpx.get(f"{gate.proxy}/api/orders?access_token={access}", headers=bearer(access))
    assert two.status_code == 400
    assert 'error="invalid_request"' in two.headers["www-authenticate"]
    doubled = (b"GET /api/orders HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + access.encode() +
               b"\r\nAuthorization: Bearer " + access.encode() + b"\r\nConnection: close\r\n\r\n")
    raw, _ = raw_request(gate.proxy, doubled)
    assert status_of(raw) == 400
    assert upstream.requests == []


# ---------------------------------------------------------------------------------------------- 6-9: validation, cache, revocation, scopes


def forge_expired(gate: RunningScopegate) -> str:
    """A token signed with the core's real active key (read from its store), expired beyond the leeway."""
    from authz.store import open_store

    store = open_store(gate.config["store"])
    try:
        key = next(k for k in store.list_signing_keys("orders") if k.status == "ACTIVE")
    finally:
        store.close()
    now = int(time.time())
    claims = {"ver": 1, "jti": f"AT.{uuid.uuid4().hex}", "iss": gate.issuer("orders"), "aud": RESOURCE,
              "iat": now - 7200, "exp": now - 3600, "cid": "service", "client_id": "service", "sub": "service",
              "scp": ["orders:read"]}
    return jwt.encode(claims, key.private_pem, algorithm="RS256", headers={"kid": key.kid, "typ": "at+jwt"})


def test_invalid_tokens_are_401_invalid_token(gate: RunningScopegate, upstream: RecordingUpstream) -> None:
    """A garbage token and a correctly signed but expired one are refused with 401 invalid_token; the
    description never echoes the token."""
    expired = forge_expired(gate)
    for value in ("not.a.jwt", expired):
        response = httpx.get(f"{gate.proxy}/api/orders", headers=bearer(value))
        assert response.status_code == 401, response.text
        challenge = response.headers["www-authenticate"]
        assert challenge.startswith('Bearer realm="orders", error="invalid_token"')
        assert value not in challenge and value not in response.text
    wait_for(lambda: {"malformed", "expired"} <= {d["reason"] for d in decision_lines(gate)})
    assert upstream.requests == []
    assert expired not in gate.output()


def test_second_request_is_a_cache_hit(gate: RunningScopegate, upstream: RecordingUpstream) -> None:
    """The verified-token cache: the first use of a token is a miss, the second a hit (scopegate_token_cache_total)."""
    access = token(gate)
    assert httpx.get(f"{gate.proxy}/api/orders", headers=bearer(access)).status_code == 200
    assert sample(gate, "scopegate_token_cache_total", result="miss") == 1
    assert sample(gate, "scopegate_token_cache_total", result="hit") == 0
    assert httpx.get(f"{gate.proxy}/api/orders/7", headers=bearer(access)).status_code == 200
    assert sample(gate, "scopegate_token_cache_total", result="hit") == 1
    wait_for(lambda: [d["tokenCache"] for d in decision_lines(gate)] == ["miss", "hit"])


def test_revoked_token_is_refused_as_soon_as_revoke_returns(gate: RunningScopegate, upstream: RecordingUpstream) -> None:
    """Issue 4: once the core's revoke endpoint has answered, the proxy refuses the (cached) token at once."""
    access = token(gate)
    assert httpx.get(f"{gate.proxy}/api/orders", headers=bearer(access)).status_code == 200
    revoked = httpx.post(f"{gate.core}/oauth2/orders/v1/revoke", auth=("service", SECRET),
                         data={"token": access, "token_type_hint": "access_token"})
    assert revoked.status_code == 200
    refused = httpx.get(f"{gate.proxy}/api/orders", headers=bearer(access))   # no wait at all
    assert refused.status_code == 401
    assert 'error="invalid_token"' in refused.headers["www-authenticate"]
    assert len(upstream.requests) == 1
    wait_for(lambda: last_reason(gate) == "revoked")
    assert httpx.get(f"{gate.proxy}/api/orders", headers=bearer(token(gate))).status_code == 200


def test_scopes_any_of_all_of_and_insufficient_scope(gate: RunningScopegate, upstream: RecordingUpstream) -> None:
    """anyOf accepts either scope, allOf needs every one; a miss is 403 insufficient_scope naming what the route needs."""
    read = token(gate, "orders:read")
    write = token(gate, "orders:write")
    both = token(gate, "orders:read orders:admin")
    assert httpx.get(f"{gate.proxy}/api/orders", headers=bearer(write)).status_code == 200   # anyOf
    assert httpx.post(f"{gate.proxy}/api/orders", headers=bearer(write), content=b"{}").status_code == 200
    denied = httpx.post(f"{gate.proxy}/api/orders", headers=bearer(read), content=b"{}")
    assert denied.status_code == 403
    assert denied.headers["www-authenticate"] == ('Bearer realm="orders", error="insufficient_scope", '
                                                  'error_description="The access token lacks a scope this route needs.", '
                                                  'scope="orders:write"')
    admin = httpx.get(f"{gate.proxy}/api/orders/admin/x", headers=bearer(read))
    assert admin.status_code == 403 and 'scope="orders:read orders:admin"' in admin.headers["www-authenticate"]
    assert httpx.get(f"{gate.proxy}/api/orders/admin/x", headers=bearer(both)).status_code == 200
    assert [r.method for r in upstream.requests] == ["GET", "POST", "GET"]


# ---------------------------------------------------------------------------------------------- 10: forwarding


def test_forwarded_headers(gate: RunningScopegate, upstream: RecordingUpstream) -> None:
    """The upstream sees the identity headers from the token, never the client's copies; X-Forwarded-* set by
    the proxy; hop-by-hop headers and those named in Connection removed; Authorization forwarded."""
    access = token(gate, "orders:read orders:write")
    request = (b"GET /api/orders HTTP/1.1\r\nHost: api.example.com\r\nAuthorization: Bearer " + access.encode() + b"\r\n"
               b"X-Scopegate-Subject: mallory\r\nx-scopegate-client-id: evil\r\nX-SCOPEGATE-SCOPES: orders:admin\r\n"
               b"X-Forwarded-For: 10.9.9.9\r\nX-Forwarded-Host: evil.example\r\nConnection: keep-alive, X-Hop-Secret\r\n"
               b"X-Hop-Secret: 1\r\nKeep-Alive: timeout=5\r\nProxy-Authorization: Basic eA==\r\nTE: trailers\r\n"
               b"X-Kept: yes\r\n\r\n")
    response, _ = raw_request(gate.proxy, request)
    assert status_of(response) == 200
    seen = upstream.last()
    assert seen.header("X-Scopegate-Subject") == ["service"]
    assert seen.header("X-Scopegate-Client-Id") == ["service"]
    assert seen.header("X-Scopegate-Scopes") == ["orders:read orders:write"]
    assert seen.header("X-Scopegate-Auth-Server") == ["orders"]
    assert seen.header("X-Forwarded-For") == ["127.0.0.1"]
    assert seen.header("X-Forwarded-Host") == ["api.example.com"]
    assert seen.header("X-Forwarded-Proto") == ["http"]
    for name in ("X-Hop-Secret", "Keep-Alive", "Proxy-Authorization", "TE"):
        assert seen.header(name) == [], name
    assert seen.header("X-Kept") == ["yes"]
    assert seen.header("Authorization") == [f"Bearer {access}"]
    assert b"x-upstream-hop: kept" in response.lower()
    assert b"keep-alive: timeout" not in response.lower()   # the upstream's hop-by-hop header is not relayed
    underscored = httpx.get(f"{gate.proxy}/api/orders", headers={**bearer(access), "X_Scopegate_Subject": "mallory"})
    assert underscored.status_code == 400
    assert len(upstream.requests) == 1


def test_upstream_slow_is_504_with_json(gate: RunningScopegate, upstream: RecordingUpstream) -> None:
    """An upstream that does not answer within upstream.timeout → 504 with a short JSON body."""
    started = time.monotonic()
    response = httpx.get(f"{gate.proxy}/api/public/slow?delay=10", timeout=15)
    assert response.status_code == 504
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["error"] == "upstream_timeout"
    assert "127.0.0.1" not in response.text
    assert time.monotonic() - started < UPSTREAM_TIMEOUT + 3


def test_upstream_down_is_502_with_json(scopegate: Callable[..., RunningScopegate]) -> None:
    """An upstream that refuses connections → 502 with a short JSON body and no internals."""
    gate = scopegate(config(f"http://127.0.0.1:{free_port()}"))
    response = httpx.get(f"{gate.proxy}/api/public/x")
    assert response.status_code == 502
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["error"] == "upstream_unavailable" and "127.0.0.1" not in response.text and "Errno" not in response.text
    wait_for(lambda: last_reason(gate) == "upstream_unavailable")


# ---------------------------------------------------------------------------------------------- 11: record


def test_metrics_names_and_labels(gate: RunningScopegate, upstream: RecordingUpstream) -> None:
    """The ops listener exposes every metric of issue 5 step 11 with bounded labels (route, decision, reason)."""
    access = token(gate)
    httpx.get(f"{gate.proxy}/api/orders", headers=bearer(access))
    httpx.get(f"{gate.proxy}/api/orders")
    httpx.get(f"{gate.proxy}/elsewhere")
    samples = metrics(gate)
    assert samples[("scopegate_requests_total", frozenset({("route", "orders-read"), ("decision", "allow"),
                                                            ("reason", "ok")}))] == 1
    assert samples[("scopegate_requests_total", frozenset({("route", "orders-read"), ("decision", "deny"),
                                                            ("reason", "missing_token")}))] == 1
    assert samples[("scopegate_requests_total", frozenset({("route", "none"), ("decision", "deny"),
                                                            ("reason", "no_resource")}))] == 1
    assert samples[("scopegate_request_duration_seconds_count", frozenset({("route", "orders-read")}))] == 2
    assert samples[("scopegate_upstream_duration_seconds_count", frozenset())] == 1
    assert ("scopegate_token_cache_total", frozenset({("result", "miss")})) in samples
    age = samples[("scopegate_revocation_state_age_seconds", frozenset())]
    assert 0 <= age < 5
    assert samples[("scopegate_requests_in_flight", frozenset())] == 0
    label_names = {name for (metric, labels) in samples if metric.startswith("scopegate_") for name, _ in labels}
    # The core's token counter (issue 9) adds the bounded AS id, grant type and outcome; the readiness gauge
    # (issue 12) names its check (store, revocation_feed).
    assert label_names <= {"route", "decision", "reason", "result", "le", "authorization_server", "grant_type", "outcome",
                           "check"}
    checks = {value for (metric, labels) in samples if metric == "scopegate_readiness_check" for name, value in labels}
    assert checks <= {"store", "revocation_feed"}


def test_one_decision_log_line_per_request_without_the_token(gate: RunningScopegate, upstream: RecordingUpstream) -> None:
    """Each request writes one JSON line on stdout with the decision fields; the token never appears."""
    access = token(gate)
    httpx.get(f"{gate.proxy}/api/orders/1", headers=bearer(access))
    httpx.get(f"{gate.proxy}/api/orders/2", headers=bearer(access + "x"))
    httpx.get(f"{gate.proxy}/api/orders/3?access_token={access}")
    wait_for(lambda: len(decision_lines(gate)) == 3)
    first, second, third = decision_lines(gate)
    assert {"time", "requestId", "method", "path", "route", "authServer", "clientId", "subject", "decision",
            "reason", "status", "durationMs", "upstreamMs"} <= set(first)
    assert (first["path"], first["route"], first["authServer"], first["clientId"], first["subject"]) == \
        ("/api/orders/1", "orders-read", "orders", "service", "service")
    assert (first["decision"], first["reason"], first["status"]) == ("allow", "ok", 200)
    assert (second["decision"], second["status"]) == ("deny", 401)
    assert third["status"] in (400, 401)
    assert len({first["requestId"], second["requestId"], third["requestId"]}) == 3
    output = gate.output()
    assert access not in output
    assert access.split(".")[2] not in output


# ---------------------------------------------------------------------------------------------- SIGTERM, staleness


def test_sigterm_drains_an_in_flight_request(gate: RunningScopegate, upstream: RecordingUpstream) -> None:
    """SIGTERM while a slow request is in flight: the request completes with 200, then the process exits 0."""
    result: dict[str, Any] = {}

    def slow() -> None:
        try:
            result["response"] = httpx.get(f"{gate.proxy}/api/public/slow?delay=1", timeout=10)
        except Exception as exc:  # reported by the assertion below
            result["error"] = exc

    thread = threading.Thread(target=slow)
    thread.start()
    assert upstream.started.wait(5)
    gate.signal(signal.SIGTERM)
    thread.join(10)
    assert "error" not in result, result
    assert result["response"].status_code == 200
    assert gate.process.wait(15) == 0


@pytest.mark.postgres
def test_stale_revocation_state_denies_with_503(scopegate: Callable[..., RunningScopegate],
                                                upstream: RecordingUpstream) -> None:
    """When the change feed cannot be read for longer than maxStaleness (a lock held on its table), a
    token request is refused with 503 stale_revocation; once the feed is readable again it passes."""
    psycopg = pytest.importorskip("psycopg")
    base = os.environ.get("SCOPEGATE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
    schema = f"e2e_stale_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(base, autocommit=True)
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is required at {base}: {exc}")
    try:
        gate = scopegate(config(upstream.url, store=f"{base}?schema={schema}",
                                revocation={"maxStaleness": "1s", "pollInterval": "100ms"}))
        access = token(gate)
        assert httpx.get(f"{gate.proxy}/api/orders", headers=bearer(access)).status_code == 200
        with psycopg.connect(base) as locker:
            locker.execute(f'LOCK TABLE "{schema}".changes IN ACCESS EXCLUSIVE MODE')
            wait_for(lambda: httpx.get(f"{gate.proxy}/api/orders", headers=bearer(access)).status_code == 503, 10)
            stale = httpx.get(f"{gate.proxy}/api/orders", headers=bearer(access))
            assert (stale.status_code, stale.json()["error"]) == (503, "stale_revocation")
            assert httpx.get(f"{gate.proxy}/api/public/x").status_code == 200   # public routes need no revocation state
            locker.rollback()
        wait_for(lambda: httpx.get(f"{gate.proxy}/api/orders", headers=bearer(access)).status_code == 200, 10)
        wait_for(lambda: any(d["reason"] == "stale_revocation" and d["status"] == 503
                             for d in decision_lines(gate)))  # the decision log is written in batches
        gate.stop()
    finally:
        admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        admin.close()


# ---------------------------------------------------------------------------------------------- WebSocket


def test_websocket_upgrade_after_the_gate(gate: RunningScopegate, upstream: RecordingUpstream) -> None:
    """Through the real process, a WebSocket handshake needs the route's token like any GET; once upgraded,
    frames are relayed both ways, also after an idle spell longer than upstream.timeout."""
    import asyncio

    import aiohttp

    access = token(gate)

    async def exchange() -> tuple[int, list[str]]:
        async with aiohttp.ClientSession() as session:
            try:
                await session.ws_connect(f"{gate.proxy}/api/orders/ws")
            except aiohttp.WSServerHandshakeError as exc:
                denied = exc.status
            else:  # pragma: no cover - reported by the assertion below
                denied = 101
            replies = []
            async with session.ws_connect(f"{gate.proxy}/api/orders/ws", headers=bearer(access)) as ws:
                await ws.send_str("one")
                replies.append((await ws.receive(timeout=5)).data)
                await asyncio.sleep(UPSTREAM_TIMEOUT + 0.5)
                await ws.send_str("two")
                replies.append((await ws.receive(timeout=5)).data)
            return denied, replies

    denied, replies = asyncio.run(exchange())
    assert denied == 401
    assert replies == ["echo:one", "echo:two"]
    [handshake] = upstream.requests
    assert handshake.raw_path == "/api/orders/ws"
    assert handshake.header("X-Scopegate-Client-Id") == ["service"]
