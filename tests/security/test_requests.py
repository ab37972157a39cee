"""security.md §2 and §3.2-§3.9 in-process: bearer handling, header abuse, path bypasses, Host, sizes,
upstream failures and injection. Framing and slow clients need a real socket: ``test_wire.py``."""

from __future__ import annotations

import io
import json

import httpx
import pytest

from proxy.keys import IssuerKeys, LocalKeys
from tests.e2e.conftest import free_port
from tests.security.attack_bench import (
    ADMIN_AUD,
    ADMIN_ISS,
    HOST,
    MAX_BODY_BYTES,
    ORDERS_ISS,
    Gate,
    KeyTable,
    Revocations,
    build_proxy_app,
    claims,
    forge,
    gate_config,
    valid_token,
)

IDENTITY = ("x-scopegate-subject", "x-scopegate-client-id", "x-scopegate-scopes", "x-scopegate-auth-server")


def normalized_names(headers: list[tuple[str, str]]) -> list[str]:
    return [k.lower().replace("_", "-") for k, _ in headers]


# ---------------------------------------------------------------------------------------------- §2 bearer


async def test_bearer_two_authorization_headers_rejected(gate: Gate) -> None:
    """RFC 6750 §2: two Authorization headers are invalid_request (400), never first- or last-wins."""
    status, headers, _ = await gate.asgi("GET", b"/orders", [(b"authorization", f"Bearer {valid_token()}".encode()),
                                                            (b"authorization", b"Bearer other")])
    assert status == 400 and 'error="invalid_request"' in headers["www-authenticate"]
    assert gate.upstream.requests == []


@pytest.mark.parametrize("where", ["query", "form"])
async def test_bearer_token_in_two_places_rejected(gate: Gate, where: str) -> None:
    """RFC 6750 §2: a token in the header and also in the query or form body is invalid_request (400)."""
    token = valid_token()
    if where == "query":
        response = await gate.get(f"/orders?access_token={token}", token)
    else:
        response = await gate.get("/orders", token, method="POST", data={"access_token": token})
    assert response.status_code == 400
    assert gate.upstream.requests == []


async def test_bearer_query_token_alone_counts_as_no_credentials(gate: Gate) -> None:
    """RFC 6750 §2.3 disabled: a token only in the query is no credentials (401, bare challenge)."""
    response = await gate.get(f"/orders?access_token={valid_token()}")
    assert response.status_code == 401
    assert "error=" not in response.headers["www-authenticate"]
    assert gate.upstream.requests == []


@pytest.mark.parametrize("value", ["Basic YWxpY2U6c2VjcmV0", "Token abc", "Bearer", "Bearerabc", ""])
async def test_bearer_missing_or_other_scheme_gets_a_bare_challenge(gate: Gate, value: str) -> None:
    """RFC 6750 §3.1: no usable credentials → 401 or 400, never the upstream."""
    response = await gate.get("/orders", headers={"Authorization": value})
    assert response.status_code in (400, 401)
    assert response.headers["www-authenticate"].startswith("Bearer realm=")
    assert gate.upstream.requests == []


@pytest.mark.parametrize("suffix", [" extra", ",other", " ", "\t"])
async def test_bearer_trailing_garbage_rejected(gate: Gate, suffix: str) -> None:
    """`Bearer a b` or `Bearer a,b` is malformed: 400 invalid_request, nothing forwarded."""
    status, _, _ = await gate.asgi("GET", b"/orders", [(b"authorization", f"Bearer {valid_token()}{suffix}".encode())])
    assert status == 400
    assert gate.upstream.requests == []


@pytest.mark.parametrize("scope", ["orders:readX", "ORDERS:READ", "orders:*", "orders:read\torders:write",
                                   "orders:read\u00a0orders:write"])
async def test_scope_matching_is_exact(gate: Gate, scope: str) -> None:
    """RFC 6749 §3.3: scope tokens compare exactly; near-misses get 403 insufficient_scope naming the need."""
    response = await gate.get("/orders", valid_token(scp=[scope]))
    assert response.status_code in (401, 403)
    if response.status_code == 403:
        challenge = response.headers["www-authenticate"]
        assert 'error="insufficient_scope"' in challenge and "orders:read" in challenge
    assert gate.upstream.requests == []


# ---------------------------------------------------------------------------------------------- §3.2 / §3.3


async def test_hop_by_hop_connection_listing_cannot_remove_identity_headers(gate: Gate) -> None:
    """Traefik CVE-2021-32813: naming the identity headers in Connection does not strip the proxy's own."""
    status, _, _ = await gate.asgi("GET", b"/orders", [
        (b"authorization", f"Bearer {valid_token()}".encode()),
        (b"connection", b"close, X-Scopegate-Subject, X-Forwarded-For, X-Scopegate-Scopes"),
    ])
    assert status == 200
    (req,) = gate.upstream.requests
    assert req.header("x-scopegate-subject") == ["alice@example.com"]
    assert req.header("x-scopegate-scopes") == ["orders:read"]
    assert len(req.header("x-forwarded-for")) == 1


async def test_hop_by_hop_headers_are_not_forwarded(gate: Gate) -> None:
    """RFC 9110 §7.6.1: Keep-Alive, TE, Trailer, Proxy-* and headers named in Connection stay on this hop."""
    status, _, _ = await gate.asgi("GET", b"/public", [
        (b"connection", b"keep-alive, X-Private"), (b"x-private", b"1"), (b"keep-alive", b"timeout=5"),
        (b"te", b"trailers"), (b"trailer", b"X-T"), (b"proxy-authorization", b"Basic eA=="),
    ])
    assert status == 200
    names = normalized_names(gate.upstream.requests[0].headers)
    for name in ("x-private", "keep-alive", "te", "trailer", "proxy-authorization"):
        assert name not in names, name


@pytest.mark.parametrize("name", [b"X-Scopegate-Subject", b"x-scopegate-subject", b"X_Scopegate_Subject",
                                  b"X-SCOPEGATE-SUBJECT"])
async def test_spoofed_identity_header_on_a_public_route_never_reaches_the_upstream(gate: Gate, name: bytes) -> None:
    """A client-sent identity header, in any case or `_` spelling, is stripped (or the request refused)."""
    status, _, _ = await gate.asgi("GET", b"/public", [(name, b"admin"), (name, b"admin2")])
    assert status in (200, 400)
    for req in gate.upstream.requests:
        for header, value in req.headers:
            if header.lower().replace("_", "-") in IDENTITY:
                assert value not in ("admin", "admin2"), (header, value)


async def test_spoofed_identity_header_is_replaced_by_the_token_identity(gate: Gate) -> None:
    """With a valid token, the upstream sees exactly one subject header: the token's."""
    status, _, _ = await gate.asgi("GET", b"/orders", [
        (b"authorization", f"Bearer {valid_token()}".encode()),
        (b"x-scopegate-subject", b"admin"), (b"X_Scopegate_Client_Id", b"root"),
    ])
    assert status in (200, 400)
    for req in gate.upstream.requests:
        assert req.header("x-scopegate-subject") == ["alice@example.com"]
        assert "root" not in [v for _, v in req.headers]


async def test_spoofed_forwarding_headers_are_replaced(gate: Gate) -> None:
    """X-Forwarded-For/Host/Proto and Forwarded from the client are not passed on as the truth."""
    status, _, _ = await gate.asgi("GET", b"/public", [
        (b"x-forwarded-for", b"10.0.0.1"), (b"x-forwarded-host", b"evil.example"),
        (b"x-forwarded-proto", b"https"), (b"x_forwarded_for", b"10.0.0.2"),
    ])
    assert status in (200, 400)
    for req in gate.upstream.requests:
        assert req.header("x-forwarded-host") in ([], [HOST])
        assert "evil.example" not in [v for _, v in req.headers]
        assert req.header("x-forwarded-for") == ["203.0.113.9"], req.header("x-forwarded-for")
        assert "x-forwarded-for" not in [k.lower() for k, _ in req.headers if "_" in k]


async def test_spoofed_original_url_headers_do_not_change_routing(gate: Gate) -> None:
    """oauth2-proxy CVE-2026-40575: X-Original-URL / X-Forwarded-Uri never decide the route."""
    response = await gate.get("/admin/users", headers={"X-Original-URL": "/public", "X-Forwarded-Uri": "/public",
                                                       "X-Rewrite-URL": "/public"})
    assert response.status_code in (401, 403)
    assert gate.upstream.requests == []


async def test_spoofed_rewrite_headers_are_stripped(gate: Gate) -> None:
    """security.md §3.3: X-Original-URL, X-Rewrite-URL, X-Real-IP and X-HTTP-Method-Override never reach the upstream."""
    await gate.get("/public", headers={"X-Original-URL": "/admin", "X-Rewrite-URL": "/admin", "X-Real-IP": "10.0.0.1",
                                       "X-HTTP-Method-Override": "DELETE"})
    names = normalized_names(gate.upstream.requests[0].headers)
    for name in ("x-original-url", "x-rewrite-url", "x-real-ip", "x-http-method-override"):
        assert name not in names, name


# ---------------------------------------------------------------------------------------------- §3.4 paths

BYPASSES = [
    b"/public/../admin", b"/public/./../admin", b"/public/%2e%2e/admin", b"/%2E%2E/admin", b"/api%2e/admin",
    b"//admin", b"/public//..//admin", b"/admin%2F", b"/public%2F..%2Fadmin", b"/admin%5C", b"\\admin",
    b"/public\\..\\admin", b"/admin;x=1", b"/admin;/", b"/public;/../admin", b"/%61dmin", b"/ADMIN", b"/Admin",
    b"/admin.", b"/admin%20", b"/admin%00", b"/admin%09", b"/%252e%252e/admin", b"/public/%252e%252e/admin",
    b"/public/..%2fadmin", b"/orders/../admin", b"/public/%2e%2e%2fadmin", b"/public/\xc3\xa9/../../admin",
]


@pytest.mark.parametrize("raw_path", BYPASSES, ids=lambda p: p.decode("latin-1"))
async def test_path_normalization_bypass_of_a_protected_route_rejected(gate: Gate, raw_path: bytes) -> None:
    """security.md §3.4: no spelling of /admin escapes its token requirement or reaches the upstream."""
    status, _, _ = await gate.asgi("GET", raw_path, [])
    assert status in (400, 401, 403, 404), status
    assert gate.upstream.requests == []


@pytest.mark.parametrize("query", [b"/public", b"x=/health", b"access=/public/../admin"])
async def test_path_query_never_joins_the_path(gate: Gate, query: bytes) -> None:
    """oauth2-proxy CVE-2025-54576: `/admin?/public` is /admin."""
    status, _, _ = await gate.asgi("GET", b"/admin", [], query=query)
    assert status in (401, 403)
    assert gate.upstream.requests == []


@pytest.mark.parametrize(("raw", "expected"), [(b"/public/%7Euser/./a", "/public/~user/a"),
                                               (b"/public/a/../b", "/public/b"),
                                               (b"/public/%41%42", "/public/AB"),
                                               (b"/public/x%3Ay", "/public/x%3Ay")])
async def test_path_forwarded_is_byte_for_byte_the_authorized_one(gate: Gate, raw: bytes, expected: str) -> None:
    """The upstream receives exactly the normalized path the route decision was made on."""
    status, _, _ = await gate.asgi("GET", raw, [])
    assert status == 200
    assert gate.upstream.requests[0].raw_path == expected


@pytest.mark.parametrize("method", ["get", "Get", "G ET", "GET\x00"])
async def test_path_lowercase_or_odd_method_rejected(gate: Gate, method: str) -> None:
    """Methods compare exactly: a lower-case `get` never matches the GET route nor reaches the upstream."""
    status, _, _ = await gate.asgi(method, b"/orders", [(b"authorization", f"Bearer {valid_token()}".encode())])
    assert status in (400, 403, 405, 501)
    assert gate.upstream.requests == []


# ---------------------------------------------------------------------------------------------- §3.5 Host


@pytest.mark.parametrize("host", [b"evil.example.com", b"api.example.com.evil", b"api.example.com@evil", b""])
async def test_host_header_mismatch_on_a_host_bound_resource_rejected(gate: Gate, host: bytes) -> None:
    """matchHost: a Host other than the resource's never reaches the upstream (403 no_resource)."""
    token = forge(valid_claims_for_admin(), kid="admin-1", header={"alg": "RS256", "kid": "admin-1", "typ": "at+jwt"})
    scope_headers = [(b"authorization", f"Bearer {token}".encode())]
    status, _, _ = await gate.asgi_with_host("GET", b"/admin", host, scope_headers)
    assert status in (400, 403)
    assert gate.upstream.requests == []


@pytest.mark.parametrize("host", [b"API.EXAMPLE.COM", b"api.example.com.", b"api.example.com:80"])
async def test_host_header_is_compared_case_insensitively(gate: Gate, host: bytes) -> None:
    """Istio CVE-2021-39155: Host is lower-cased and its trailing dot stripped before matching."""
    token = forge(valid_claims_for_admin(), kid="admin-1", header={"alg": "RS256", "kid": "admin-1", "typ": "at+jwt"})
    status, _, _ = await gate.asgi_with_host("GET", b"/admin", host, [(b"authorization", f"Bearer {token}".encode())])
    assert status == 200


async def test_host_header_never_chooses_the_upstream(gate: Gate) -> None:
    """The upstream comes from configuration: a client Host of another server changes nothing."""
    response = await gate.get("/public", headers={"Host": "127.0.0.1:1"})
    assert response.status_code == 200
    assert len(gate.upstream.requests) == 1


def valid_claims_for_admin() -> dict[str, object]:
    return claims(iss=ADMIN_ISS, aud=ADMIN_AUD, scp=["admin:all"])


# ---------------------------------------------------------------------------------------------- §3.6 sizes


async def test_oversized_body_rejected_413(gate: Gate) -> None:
    """A body over maxBodyBytes is 413, and the upstream gets no complete request."""
    response = await gate.get("/public", method="POST", content=b"x" * (MAX_BODY_BYTES + 1))
    assert response.status_code == 413
    assert gate.upstream.requests == []


async def test_oversized_target_rejected_414(gate: Gate) -> None:
    """A request target over maxTargetBytes (8 KiB) is 414."""
    status, _, _ = await gate.asgi("GET", b"/public/" + b"a" * 9000, [])
    assert status == 414
    assert gate.upstream.requests == []


async def test_oversized_headers_rejected_431(gate: Gate) -> None:
    """Headers over maxHeaderBytes, or more of them than maxHeaders, are 431."""
    status, _, _ = await gate.asgi("GET", b"/public", [(b"x-big", b"a" * 17000)])
    assert status == 431
    status, _, _ = await gate.asgi("GET", b"/public", [(f"x-h{i}".encode(), b"1") for i in range(150)])
    assert status == 431
    assert gate.upstream.requests == []


# ---------------------------------------------------------------------------------------------- §3.8 upstream


async def test_upstream_timeout_is_504_without_internals(gate: Gate) -> None:
    """An upstream that does not answer within the timeout is 504 with a short JSON body."""
    gate.upstream.hang = True
    response = await gate.get("/public")
    assert response.status_code == 504
    body = json.loads(response.content)
    assert "127.0.0.1" not in response.text and "Traceback" not in response.text and isinstance(body, dict)
    assert gate.upstream.started == 1, "a timed-out request is not retried"


async def test_upstream_refusing_connections_is_502_without_internals(upstream: object) -> None:
    """A connect failure is 502 with a short JSON body naming no host or port."""



    port = free_port()
    local = LocalKeys(KeyTable([]), {ORDERS_ISS: "orders", ADMIN_ISS: "admin"})  # type: ignore[arg-type]
    app = build_proxy_app(gate_config(f"http://127.0.0.1:{port}"), IssuerKeys(local, {}), Revocations(), io.StringIO())
    await app.startup()
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=f"http://{HOST}") as client:
            response = await client.post("/public", content=b"{}")
        assert response.status_code == 502
        assert str(port) not in response.text and "Traceback" not in response.text
    finally:
        await app.shutdown()


async def test_upstream_redirect_is_passed_back_not_followed(gate: Gate) -> None:
    """security.md §3.8: an upstream redirect is returned to the client, never followed by the proxy (SSRF)."""
    gate.upstream.status = 302
    gate.upstream.response_headers = {"Location": "http://169.254.169.254/latest/meta-data/"}
    response = await gate.get("/public")
    assert response.status_code == 302
    assert len(gate.upstream.requests) == 1


# ---------------------------------------------------------------------------------------------- §3.9 injection


async def test_response_hop_by_hop_headers_from_the_upstream_are_stripped(gate: Gate) -> None:
    """The upstream's Connection-listed and hop-by-hop response headers stay on the upstream hop."""
    gate.upstream.response_headers = {"Connection": "X-Internal", "X-Internal": "secret", "Keep-Alive": "timeout=5",
                                      "Proxy-Authenticate": "Basic"}
    response = await gate.get("/public")
    assert response.status_code == 200
    for name in ("x-internal", "keep-alive", "proxy-authenticate"):
        assert name not in response.headers, name


async def test_claim_with_crlf_never_becomes_a_header(gate: Gate) -> None:
    """security.md §3.9: a sub of `u1\\r\\nX-Admin: true` is 401, never a split header upstream."""
    response = await gate.get("/orders", valid_token(sub="u1\r\nX-Admin: true"))
    assert response.status_code == 401
    assert gate.upstream.requests == []


async def test_decision_log_lines_escape_client_values(gate: Gate) -> None:
    """CVE-2020-7694 class: every decision-log line is one JSON object with no raw control characters."""
    await gate.asgi("GET", b"/public/%1b[31mred", [(b"user-agent", b"\x1b[31mevil")])
    await gate.asgi("GET", b"/orders/%0d%0aX-Fake:%201", [])
    await gate.asgi("GET", b"/public/ok", [])
    lines = [line for line in gate.log.getvalue().split("\n") if line]
    assert len(lines) >= 3
    for line in lines:
        json.loads(line)
        assert "\x1b" not in line and "\r" not in line
