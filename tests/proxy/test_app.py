"""The gate end to end in-process: ProxyApp over httpx's ASGI transport, a real aiohttp upstream that records
what reaches it. Every denial asserts that nothing reached the upstream."""

from __future__ import annotations

import asyncio
import json
from collections.abc import MutableMapping
from typing import Any

import httpx
import pytest

from proxy.app import ProxyApp
from tests.proxy.conftest import Gate, make_gate
from tests.proxy.gatekit import ISSUER, NOW, RecordingUpstream, claims, gate_config, mint


def bearer(token: str | None = None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token or mint()}"}


def header_values(received: list[tuple[str, str]], name: str) -> list[str]:
    return [v for k, v in received if k.lower() == name.lower()]


class TestAllows:
    async def test_valid_token_reaches_upstream_with_identity(self, gate: Gate) -> None:
        """A valid token with the route's scope is forwarded with the identity headers."""
        response = await gate.client.get("/orders/7", headers=bearer())
        assert response.status_code == 200 and response.json() == {"ok": True, "len": 0}
        [seen] = gate.upstream.received
        assert seen.raw_path == "/orders/7"
        assert header_values(seen.headers, "X-Scopegate-Subject") == ["alice@example.com"]
        assert header_values(seen.headers, "X-Scopegate-Client-Id") == ["reporting"]
        assert header_values(seen.headers, "X-Scopegate-Scopes") == ["orders:read"]
        assert header_values(seen.headers, "X-Scopegate-Auth-Server") == ["orders"]
        assert header_values(seen.headers, "X-Forwarded-For") == ["203.0.113.7"]
        assert header_values(seen.headers, "X-Forwarded-Host") == ["api.example.com"]
        assert header_values(seen.headers, "X-Forwarded-Proto") == ["http"]
        assert header_values(seen.headers, "Authorization")  # forwarded by default

    async def test_public_route_needs_no_token(self, gate: Gate) -> None:
        """A public route is forwarded without a token and without identity headers."""
        response = await gate.client.get("/health")
        assert response.status_code == 200
        [seen] = gate.upstream.received
        assert not header_values(seen.headers, "X-Scopegate-Subject")

    async def test_upstream_receives_exactly_the_authorized_path(self, gate: Gate) -> None:
        """The upstream receives byte for byte the normalized path the decision was made on, and the query untouched."""
        response = await gate.client.get(httpx.URL("http://api.example.com/orders/%7e/a/./b/../c%20d%3f?x=%2F&y=1"),
                                         headers=bearer())
        assert response.status_code == 200
        [seen] = gate.upstream.received
        assert seen.raw_path == "/orders/~/a/c%20d%3F"
        assert seen.query == "x=%2F&y=1"
        assert gate.log_lines()[-1]["path"] == "/orders/~/a/c%20d%3F"

    async def test_preflight_passes_without_token(self, gate: Gate) -> None:
        """A CORS preflight is forwarded without a token, as Envoy does."""
        response = await gate.client.options("/orders/7", headers={"Origin": "https://app.example.com",
                                                                    "Access-Control-Request-Method": "DELETE"})
        assert response.status_code == 200 and len(gate.upstream.received) == 1

    async def test_any_valid_token_mode(self, upstream: RecordingUpstream) -> None:
        """unrouted: any_valid_token lets a valid token through on a path in a resource with no route."""
        cfg = gate_config(upstream.url, proxy={"unrouted": "any_valid_token"})
        async for g in make_gate(upstream, cfg):
            assert (await g.client.patch("/orders/7", headers=bearer())).status_code == 200
            assert (await g.client.patch("/orders/7")).status_code == 401

    async def test_forward_authorization_off(self, upstream: RecordingUpstream) -> None:
        """forwardAuthorization false removes the token before the upstream (Envoy's forward: false)."""
        cfg = gate_config(upstream.url, proxy={"identity": {"forwardAuthorization": False}})
        async for g in make_gate(upstream, cfg):
            assert (await g.client.get("/orders/7", headers=bearer())).status_code == 200
            assert not header_values(upstream.received[0].headers, "Authorization")

    async def test_streaming_response_and_request(self, gate: Gate) -> None:
        """Bodies stream both ways: a chunked upload arrives whole and a streamed response arrives whole."""
        async def chunks() -> Any:
            for i in range(5):
                yield b"part%d," % i

        token = mint(claims(scp=["orders:write"]))
        response = await gate.client.post("/orders", content=chunks(), headers=bearer(token))
        assert response.status_code == 200 and response.json()["len"] == len(b"part0," * 5)
        assert gate.upstream.received[0].body == b"part0,part1,part2,part3,part4,"
        response = await gate.client.get("/orders/stream", headers=bearer())
        assert response.content == b"chunk0;chunk1;chunk2;"


class TestDenies:
    @pytest.mark.parametrize(("method", "path", "headers", "status", "reason"), [
        ("GET", "/orders/7", {}, 401, "missing_token"),
        ("GET", "/orders/7", {"Authorization": "Basic dXNlcjpwYXNz"}, 401, "missing_token"),
        ("GET", "/orders/7", {"Authorization": "Bearer a b"}, 400, "invalid_request"),
        ("GET", "/orders/7", {"Authorization": "Bearer not.a.jwt"}, 401, "malformed"),
        ("GET", "/elsewhere", {}, 403, "no_resource"),
        ("PATCH", "/orders/7", {}, 403, "no_route"),
        ("POST", "/orders", "token", 403, "insufficient_scope"),
        ("GET", "/orders/%2e%2e/%2e%2e/admin", {}, 400, "bad_path"),
        ("GET", "/orders%2F..%2Fadmin", {}, 400, "bad_path"),
        ("GET", "//orders", {}, 400, "bad_path"),
        ("GET", "/orders;x=1", {}, 400, "bad_path"),
        ("GET", "/orders/7", {"X_Scopegate_Subject": "admin"}, 400, "bad_header"),
        ("GET", "/orders/7", {"X_Forwarded_For": "10.0.0.1"}, 400, "bad_header"),
    ])
    async def test_denials_never_reach_the_upstream(self, gate: Gate, method: str, path: str, headers: Any,
                                                    status: int, reason: str) -> None:
        """Each denial answers with its status and reason, logs it, and nothing reaches the upstream."""
        if headers == "token":
            headers = bearer()
        response = await gate.client.request(method, httpx.URL("http://api.example.com" + path), headers=headers)
        assert response.status_code == status
        assert gate.upstream.received == []
        assert gate.log_lines()[-1]["reason"] == reason
        assert gate.metric("scopegate_requests_total", {"route": gate.log_lines()[-1]["route"], "decision": "deny",
                                                         "reason": reason}) == 1

    async def test_missing_token_challenge(self, gate: Gate) -> None:
        """No token: 401 with a bare Bearer challenge naming the AS as realm (RFC 6750 §3.1)."""
        response = await gate.client.get("/orders/7")
        assert response.headers["www-authenticate"] == 'Bearer realm="orders"'

    async def test_insufficient_scope_names_what_the_route_needs(self, gate: Gate) -> None:
        """403 insufficient_scope with scope="..." naming the route's scopes (RFC 6750 §3.1)."""
        response = await gate.client.delete("/orders/7", headers=bearer())
        assert response.status_code == 403
        assert response.headers["www-authenticate"] == (
            'Bearer realm="orders", error="insufficient_scope", error_description="The access token lacks a scope '
            'this route needs.", scope="orders:write"')

    async def test_two_authorization_headers(self, gate: Gate) -> None:
        """Two Authorization headers: 400 invalid_request, never first- or last-wins."""
        token = mint()
        response = await gate.client.get("/orders/7", headers=[("Authorization", f"Bearer {token}"),
                                                                ("Authorization", f"Bearer {token}")])
        assert response.status_code == 400 and gate.upstream.received == []

    async def test_token_in_header_and_query(self, gate: Gate) -> None:
        """A token in the header and in the query: 400 invalid_request (RFC 6750 §2)."""
        response = await gate.client.get("/orders/7", params={"access_token": "x"}, headers=bearer())
        assert response.status_code == 400 and gate.upstream.received == []

    async def test_token_in_header_and_form_body(self, gate: Gate) -> None:
        """A token in the header and in a form body: 400 invalid_request (RFC 6750 §2)."""
        token = mint(claims(scp=["orders:write"]))
        response = await gate.client.post("/orders", data={"access_token": "x", "a": "b"}, headers=bearer(token))
        assert response.status_code == 400 and gate.upstream.received == []
        response = await gate.client.post("/orders", data={"a": "b"}, headers=bearer(token))
        assert response.status_code == 200 and gate.upstream.received[0].body == b"a=b"

    async def test_token_only_in_query_is_no_credentials(self, gate: Gate) -> None:
        """The query method is off: a token only there gets the bare challenge, and never reaches a log."""
        token = mint()
        response = await gate.client.get("/orders/7", params={"access_token": token})
        assert response.status_code == 401 and gate.upstream.received == []
        assert token not in gate.log.getvalue()

    async def test_revoked(self, gate: Gate) -> None:
        """A revoked token is refused even when cached (revocation is never skipped)."""
        token = mint()
        assert (await gate.client.get("/orders/7", headers=bearer(token))).status_code == 200
        gate.revocation.revoked_jtis.add(claims()["jti"])
        response = await gate.client.get("/orders/7", headers=bearer(token))
        assert response.status_code == 401 and 'error="invalid_token"' in response.headers["www-authenticate"]
        assert gate.log_lines()[-1]["reason"] == "revoked" and gate.log_lines()[-1]["tokenCache"] == "hit"
        assert len(gate.upstream.received) == 1

    async def test_stale_revocation_denies(self, gate: Gate) -> None:
        """A stale revocation feed with onStale deny answers 503 stale_revocation."""
        gate.revocation.stale = True
        response = await gate.client.get("/orders/7", headers=bearer())
        assert response.status_code == 503 and response.json()["error"] == "stale_revocation"
        assert gate.upstream.received == []

    async def test_stale_revocation_allow_is_logged(self, upstream: RecordingUpstream) -> None:
        """onStale allow lets the request through and records reason stale_revocation."""
        async for g in make_gate(upstream, gate_config(upstream.url, revocation={"onStale": "allow"})):
            g.revocation.stale = True
            assert (await g.client.get("/orders/7", headers=bearer())).status_code == 200
            assert g.log_lines()[-1]["decision"] == "allow" and g.log_lines()[-1]["reason"] == "stale_revocation"

    async def test_cache_hit_past_exp_is_a_miss(self, gate: Gate) -> None:
        """A cached token is re-validated once its exp passes, and then refused as expired."""
        token = mint()
        await gate.client.get("/orders/7", headers=bearer(token))
        await gate.client.get("/orders/7", headers=bearer(token))
        assert gate.metric("scopegate_token_cache_total", {"result": "hit"}) == 1
        gate.clock.t = NOW + 3600 + 61
        response = await gate.client.get("/orders/7", headers=bearer(token))
        assert response.status_code == 401 and gate.log_lines()[-1]["reason"] == "expired"
        assert gate.log_lines()[-1]["tokenCache"] == "miss"
        assert len(gate.upstream.received) == 2


class TestHeaders:
    async def test_client_identity_headers_are_stripped(self, gate: Gate) -> None:
        """Client copies of identity and forwarding headers, any case, duplicated, never reach the upstream."""
        response = await gate.client.get("/orders/7", headers=[
            *bearer().items(), ("x-scopegate-subject", "admin"), ("X-SCOPEGATE-SUBJECT", "root"),
            ("X-Scopegate-Scopes", "orders:admin"), ("X-Forwarded-For", "10.0.0.1"), ("Forwarded", "for=10.0.0.1"),
            ("X-Real-IP", "10.0.0.1"), ("X-Original-URL", "/admin"), ("X-Envoy-Original-Path", "/admin"),
            ("X-HTTP-Method-Override", "DELETE"), ("X-Forwarded-Uri", "/public"),
        ])
        assert response.status_code == 200
        seen = gate.upstream.received[0].headers
        assert header_values(seen, "X-Scopegate-Subject") == ["alice@example.com"]
        assert header_values(seen, "X-Scopegate-Scopes") == ["orders:read"]
        assert header_values(seen, "X-Forwarded-For") == ["203.0.113.7"]
        for name in ("Forwarded", "X-Real-IP", "X-Original-URL", "X-Envoy-Original-Path", "X-HTTP-Method-Override",
                     "X-Forwarded-Uri"):
            assert header_values(seen, name) == []

    async def test_connection_cannot_remove_injected_headers(self, gate: Gate) -> None:
        """Headers named in Connection are removed before the proxy adds its own (Traefik CVE-2021-32813).
        (``Upgrade`` is not among them: a non-WebSocket Upgrade is refused outright, issue 8 item 1.)"""
        response = await gate.client.get("/orders/7", headers={
            **bearer(), "Connection": "keep-alive, X-Scopegate-Subject, X-Forwarded-For, X-Custom", "X-Custom": "1",
            "Keep-Alive": "timeout=5", "TE": "trailers", "Proxy-Authorization": "Basic x"})
        assert response.status_code == 200
        seen = gate.upstream.received[0].headers
        assert header_values(seen, "X-Scopegate-Subject") == ["alice@example.com"]
        assert header_values(seen, "X-Forwarded-For") == ["203.0.113.7"]
        for name in ("X-Custom", "Keep-Alive", "TE", "Upgrade", "Proxy-Authorization"):
            assert header_values(seen, name) == []

    async def test_underscore_headers_are_dropped(self, gate: Gate) -> None:
        """Other underscore header names are dropped (as nginx does), so X_Custom cannot shadow X-Custom."""
        await gate.client.get("/health", headers={"X_Custom": "1"})
        assert header_values(gate.upstream.received[0].headers, "X_Custom") == []

    async def test_upstream_hop_by_hop_response_headers_are_stripped(self, gate: Gate) -> None:
        """The upstream's hop-by-hop headers, and those its Connection names, do not reach the client."""
        response = await gate.client.get("/health")
        assert response.headers["x-upstream"] == "yes"
        assert "x-secret-hop" not in response.headers and "keep-alive" not in response.headers


async def call(app: ProxyApp, headers: list[tuple[bytes, bytes]], *, method: str = "GET", raw_path: bytes = b"/health",
               body: bytes = b"") -> tuple[int, dict[bytes, bytes], bytes]:
    """Drive the ASGI app with a scope httpx would never build (ambiguous framing, raw targets)."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
             "path": raw_path.decode("latin-1"), "raw_path": raw_path, "query_string": b"", "headers": headers,
             "client": ("203.0.113.7", 1), "server": ("127.0.0.1", 8080)}
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start = sent[0]
    return start["status"], dict(start["headers"]), b"".join(m.get("body", b"") for m in sent[1:])


class TestParseGuard:
    @pytest.mark.parametrize(("headers", "status", "reason"), [
        ([(b"content-length", b"4"), (b"transfer-encoding", b"chunked")], 400, "bad_framing"),
        ([(b"content-length", b"4"), (b"content-length", b"4")], 400, "bad_framing"),
        ([(b"content-length", b"+4")], 400, "bad_framing"),
        ([(b"transfer-encoding", b"gzip, chunked")], 400, "bad_framing"),
        ([(b"transfer-encoding", b"chunked"), (b"transfer-encoding", b"chunked")], 400, "bad_framing"),
        ([(b"x-user", b"alice\r\n admin")], 400, "bad_header"),
        ([(b"x-user", b"a\x00b")], 400, "bad_header"),
        ([(b"host", b"a"), (b"host", b"b")], 400, "bad_header"),
        ([(b"x-a", b"x" * 20000)], 431, "headers_too_large"),
        ([(b"x-%d" % i, b"1") for i in range(200)], 431, "headers_too_large"),
        ([(b"content-length", b"99999999999")], 413, "too_large"),
    ])
    async def test_framing_and_header_abuse(self, gate: Gate, headers: list[tuple[bytes, bytes]], status: int,
                                            reason: str) -> None:
        """Ambiguous framing and oversized headers are refused before anything else, and the connection closes."""
        got, response_headers, body = await call(gate.app, [(b"host", b"api.example.com"), *headers]
                                                 if not any(h[0] == b"host" for h in headers) else headers)
        assert got == status and json.loads(body)["error"] == reason
        assert gate.upstream.received == []
        if status != 400 or reason == "bad_framing":
            assert response_headers.get(b"connection") == b"close"

    async def test_long_target_is_414(self, gate: Gate) -> None:
        """A target over maxTargetBytes is 414."""
        status, _, _ = await call(gate.app, [], raw_path=b"/health/" + b"a" * 9000)
        assert status == 414 and gate.upstream.received == []

    async def test_fragment_is_400(self, gate: Gate) -> None:
        """A fragment in the target (h11 passes it through) is 400."""
        status, _, _ = await call(gate.app, [], raw_path=b"/health#/../orders")
        assert status == 400 and gate.upstream.received == []

    async def test_absolute_form_is_reduced_to_its_path(self, gate: Gate) -> None:
        """An absolute-form target is reduced to its path; its authority chooses nothing."""
        status, _, _ = await call(gate.app, [(b"host", b"api.example.com")], raw_path=b"http://evil.example/health")
        assert status == 200 and gate.upstream.received[0].raw_path == "/health"
        assert header_values(gate.upstream.received[0].headers, "Host") != ["evil.example"]

    async def test_lowercase_method_is_400(self, gate: Gate) -> None:
        """A lowercase method is refused (security.md §3.1)."""
        status, _, _ = await call(gate.app, [], method="get")
        assert status == 400 and gate.upstream.received == []

    async def test_body_over_limit_while_streaming_is_413(self, upstream: RecordingUpstream) -> None:
        """A chunked body that grows past maxBodyBytes is cut off with 413."""
        async for g in make_gate(upstream, gate_config(upstream.url, proxy={"limits": {"maxBodyBytes": 10}})):
            status, _, _ = await call(g.app, [(b"host", b"api.example.com"), (b"transfer-encoding", b"chunked")], method="POST",
                                      body=b"x" * 100)
            assert status == 413


class TestUpstreamFailures:
    async def test_connect_error_is_502(self, upstream: RecordingUpstream) -> None:
        """An upstream that refuses connections gives 502 with a JSON body free of internals."""
        url = upstream.url
        await upstream.stop()
        async for g in make_gate(upstream, gate_config(url)):
            response = await g.client.get("/health")
            assert response.status_code == 502
            assert response.json() == {"error": "upstream_unavailable", "error_description": "The upstream is unavailable."}
            assert "127.0.0.1" not in response.text

    async def test_timeout_is_504(self, upstream: RecordingUpstream) -> None:
        """An upstream slower than upstream.timeout gives 504."""
        upstream.delay = 1.5
        async for g in make_gate(upstream, gate_config(upstream={"url": upstream.url, "timeout": 0.3})):
            response = await g.client.get("/health")
            assert response.status_code == 504 and response.json()["error"] == "upstream_timeout"
            assert g.log_lines()[-1]["status"] == 504


class TestEchoAndRecords:
    async def test_builtin_echo_shows_identity_headers(self, upstream: RecordingUpstream) -> None:
        """builtin:echo answers in-process with the path, query and headers an upstream would receive."""
        async for g in make_gate(upstream, gate_config("builtin:echo")):
            response = await g.client.get("/orders/%7e7?q=1", headers=bearer())
            echoed = response.json()
            assert echoed["path"] == "/orders/~7" and echoed["query"] == "q=1"
            assert ["X-Scopegate-Subject", "alice@example.com"] in echoed["headers"]

    async def test_metrics_and_decision_log(self, gate: Gate) -> None:
        """Each request is one counter increment, one histogram observation and one JSON log line without the token."""
        token = mint()
        await gate.client.get("/orders/7", headers=bearer(token))
        await gate.client.get("/orders/7")
        assert gate.metric("scopegate_requests_total", {"route": "orders-read", "decision": "allow", "reason": "ok"}) == 1
        assert gate.metric("scopegate_requests_total", {"route": "orders-read", "decision": "deny",
                                                         "reason": "missing_token"}) == 1
        assert gate.metric("scopegate_request_duration_seconds_count", {"route": "orders-read"}) == 2
        assert gate.metric("scopegate_upstream_duration_seconds_count") == 1
        assert gate.metric("scopegate_requests_in_flight") == 0
        assert gate.metric("scopegate_revocation_state_age_seconds") == 0.5
        first, second = gate.log_lines()
        assert first["decision"] == "allow" and first["subject"] == "alice@example.com" and first["status"] == 200
        assert first["authServer"] == "orders" and first["clientId"] == "reporting" and first["route"] == "orders-read"
        assert second["reason"] == "missing_token" and second["status"] == 401
        assert token not in gate.log.getvalue() and token.split(".")[2] not in gate.log.getvalue()

    async def test_log_escapes_client_values(self, gate: Gate) -> None:
        """A hostile path cannot forge a log line: one line per request, escaped."""
        await gate.client.get(httpx.URL("http://api.example.com/orders/%0d%0a{\"x\":1}"))
        assert len(gate.log.getvalue().splitlines()) == 1

    async def test_lifespan(self, upstream: RecordingUpstream) -> None:
        """The lifespan protocol starts and stops the upstream pool."""
        from prometheus_client import CollectorRegistry

        from proxy.metrics import ProxyMetrics
        from tests.proxy.gatekit import FakeRevocation, default_keys

        app = ProxyApp(gate_config(upstream.url), default_keys(), FakeRevocation(), ProxyMetrics(CollectorRegistry()), None)
        messages = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
        sent: list[MutableMapping[str, Any]] = []

        async def receive() -> dict[str, Any]:
            await asyncio.sleep(0)
            return messages.pop(0)

        async def send(message: MutableMapping[str, Any]) -> None:
            sent.append(message)
            if message["type"] == "lifespan.startup.complete":
                assert app.forwarder is not None and app.forwarder.session is not None

        await app({"type": "lifespan"}, receive, send)
        assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
        assert app.forwarder is None
        assert ISSUER
