"""Issue 8 items 8, 9, 12 and 15 through the real ``scopegate run`` process, in raw bytes, in front of the
recording upstream: what reaches the upstream is exactly what the gate allowed, and nothing else."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

import pytest

from tests.e2e.conftest import RunningScopegate
from tests.e2e.recording_upstream import RecordingUpstream, raw_request, status_of
from tests.e2e.test_proxy_gate import config, token

pytestmark = pytest.mark.e2e

HOST = b"api.example.com"


@pytest.fixture
def gate(scopegate: Callable[..., RunningScopegate], upstream: RecordingUpstream) -> RunningScopegate:
    doc = config(upstream.url)
    doc["proxy"] = {"stripHeaders": ["X-Tenant"], "limits": {"readTimeout": "3s"}}
    return scopegate(doc)


def request(method: str, target: str, headers: list[tuple[str, str]] = [], body: bytes = b"") -> bytes:  # noqa: B006
    lines = [f"{method} {target} HTTP/1.1", "Host: api.example.com", *(f"{k}: {v}" for k, v in headers),
             "Connection: close"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def test_path_double_encoding_through_an_encoded_percent_never_reaches_the_upstream(
        gate: RunningScopegate, upstream: RecordingUpstream) -> None:
    """'%25%32%65' decodes once to '%2e': the upstream would receive '/api/public/%252e%252e/...' for a second
    decode. 400, and the upstream receives nothing."""
    for target in ("/api/public/%25%32%65%25%32%65/orders", "/api/public/%25%32%66x", "/api/public/%25%35%63x"):
        response, _ = raw_request(gate.proxy, request("GET", target))
        assert status_of(response) == 400, (target, response)
    assert upstream.requests == []


def test_spoofed_identity_headers_and_method_overrides_never_reach_the_upstream(
        gate: RunningScopegate, upstream: RecordingUpstream) -> None:
    """Other gateways' identity and client-IP headers, method overrides and the configured proxy.stripHeaders
    are stripped; their '.'/'_' spellings are refused with 400."""
    spoofed = [("Remote-User", "admin"), ("X-Auth-Request-Email", "admin@example.com"), ("True-Client-IP", "10.0.0.1"),
               ("CF-Connecting-IP", "10.0.0.2"), ("X-Original-Host", "admin.internal"), ("X-HTTP-Method", "DELETE"),
               ("X-Method-Override", "DELETE"), ("X-Tenant", "other-tenant"), ("X-Kept", "yes")]
    response, _ = raw_request(gate.proxy, request("GET", "/api/orders/7",
                                                  [("Authorization", f"Bearer {token(gate)}"), *spoofed]))
    assert status_of(response) == 200, response
    seen = upstream.last()
    assert seen.method == "GET"
    assert seen.header("X-Kept") == ["yes"]
    for name, value in spoofed[:-1]:
        assert not seen.header(name), name
        assert value not in [v for _, v in seen.headers], name
    for name in ("X.Scopegate.Subject", "Remote_User", "X.Tenant", "X_HTTP_Method"):
        refused, _ = raw_request(gate.proxy, request("GET", "/api/public/x", [(name, "admin")]))
        assert status_of(refused) == 400, name
    assert len(upstream.requests) == 1


def test_cors_preflight_reaches_the_upstream_with_only_cors_headers(gate: RunningScopegate,
                                                                   upstream: RecordingUpstream) -> None:
    """A token-less preflight is forwarded as OPTIONS with Origin and Access-Control-Request-* only: no body, no
    Authorization or Cookie."""
    body = b"secret-body"
    response, _ = raw_request(gate.proxy, request("OPTIONS", "/api/orders/7", [
        ("Origin", "https://app.example"), ("Access-Control-Request-Method", "DELETE"),
        ("Authorization", "Bearer junk"), ("Cookie", "s=1"), ("Content-Length", str(len(body)))], body))
    assert status_of(response) == 200, response
    seen = upstream.last()
    assert (seen.method, seen.body) == ("OPTIONS", b"")
    names = {k.lower() for k, _ in seen.headers}
    assert names <= {"host", "origin", "access-control-request-method", "x-forwarded-for", "x-forwarded-proto",
                     "x-forwarded-host"}, names


def test_form_body_before_token_junk_bearer_is_answered_from_the_head(gate: RunningScopegate,
                                                                     upstream: RecordingUpstream) -> None:
    """A form POST with a junk bearer and a 1 MB Content-Length is answered 401 before the client sends any of
    the body (before: the proxy waited for the whole form, here until readTimeout, 3 s)."""
    host, _, port = gate.proxy.removeprefix("http://").partition(":")
    head = request("POST", "/api/orders", [("Content-Type", "application/x-www-form-urlencoded"),
                                           ("Authorization", "Bearer junk.junk.junk"), ("Content-Length", "1000000")])
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        started = time.monotonic()
        sock.sendall(head)
        answer = sock.recv(65536)
        elapsed = time.monotonic() - started
    assert status_of(answer) == 401, answer
    assert elapsed < 1.0
    assert upstream.requests == []
