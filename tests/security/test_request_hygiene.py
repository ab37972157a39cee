"""Issue 8's hardening items on the request path, in-process (``attack_bench.gate``): what the attacker gets
back, and that nothing (or only what the gate allowed) reaches the upstream. Wire-level checks of the same
items are in ``test_wire.py``-style tests below, over a real uvicorn (``wire``)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, MutableMapping
from typing import Any

import pytest

from tests.security.attack_bench import Gate, RawClient, gate_config, request_bytes, valid_token

FORWARDED_BY_THE_PROXY = {"host", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"}


def closing(method: str, target: str, headers: Iterable[tuple[str, str]] = (), body: bytes = b"") -> bytes:
    """A request that asks the server to close after answering, so the raw client need not wait to see it."""
    return request_bytes(method, target, [*headers, ("Connection", "close")], body)


def names_seen(gate: Gate) -> set[str]:
    return {k.lower() for req in gate.upstream.requests for k, _ in req.headers}

# ---------------------------------------------------------------------------------------------- item 8


@pytest.mark.parametrize("raw_path", [
    b"/health/%25%32%65%25%32%65/admin",   # %25 then encoded '2' 'e': "%252e" once the unreserved are decoded
    b"/health/%25%32%66/admin",            # "%252f": an encoded '/' one decode later
    b"/health/%25%35%63/admin",            # "%255c": an encoded '\' one decode later
    b"/health/%25%32%45%25%32%45/admin",
    b"/health/%25%34%31dmin",              # "%2541" (an 'A')
    b"/health/%25%32e%25%32e/admin",       # mixed: one digit encoded, one raw
    b"/health/%252%65/admin",
])
async def test_path_double_encoding_through_an_encoded_percent_rejected(gate: Gate, raw_path: bytes) -> None:
    """A '%25' whose two hex digits are themselves percent-encoded is still double encoding once the unreserved
    escapes are decoded; forwarding it would hand the upstream '%252e%252e' for a second decode. 400 bad_path."""
    status, _, _ = await gate.asgi("GET", raw_path, [])
    assert status == 400
    assert gate.upstream.requests == []
    assert '"reason":"bad_path"' in gate.log.getvalue()


async def test_path_double_encoding_control_a_lone_encoded_percent_passes(gate: Gate) -> None:
    """An encoded '%' that is not followed by two hex digits is a plain character and passes as '%25'."""
    status, _, _ = await gate.asgi("GET", b"/health/100%25-sure", [])
    assert status == 200
    assert gate.upstream.requests[-1].raw_path == "/health/100%25-sure"


# ---------------------------------------------------------------------------------------------- item 9


@pytest.mark.parametrize("name", ["X-HTTP-Method", "X-Method-Override", "X-HTTP-Method-Override", "x-http-method",
                                  "X-METHOD-OVERRIDE"])
async def test_method_override_headers_never_reach_the_upstream(wire: RawClient, gate: Gate, name: str) -> None:
    """Frameworks that honour X-HTTP-Method / X-Method-Override would run a DELETE the gate authorized as a GET
    (the route's scopes are chosen by the method the gate saw): all three names are stripped in any case."""
    response = await wire.exchange(closing("GET", "/orders", [("Authorization", f"Bearer {valid_token()}"),
                                                                   (name, "DELETE")]))
    assert response.status == 200
    (req,) = gate.upstream.requests
    assert req.method == "GET"
    assert not req.header(name)
    assert "DELETE" not in [v for _, v in req.headers]


@pytest.mark.parametrize("name", ["X_HTTP_Method", "X_Method_Override", "X.HTTP.Method.Override", "X-HTTP.Method"])
async def test_method_override_headers_spelled_with_underscores_or_dots_rejected(wire: RawClient, gate: Gate,
                                                                                 name: str) -> None:
    """A CGI-style backend folds '_' (Apache: any non-alphanumeric) into '-': such a spelling is refused (400)."""
    response = await wire.exchange(closing("GET", "/public", [(name, "DELETE")]))
    assert response.status == 400
    assert gate.upstream.started == 0


async def test_cors_preflight_forwarded_without_body_and_with_only_cors_headers(wire: RawClient, gate: Gate) -> None:
    """A token-less CORS preflight reaches the upstream as OPTIONS with Origin and the Access-Control-Request-*
    headers only (plus the proxy's Host and X-Forwarded-*): no body, no credentials, cookies or other headers
    the client chose. The unread body is framed away by its Content-Length: the next request on the same
    connection is parsed where it starts."""
    body = b"DELETE /orders/1 HTTP/1.1\r\nHost: x\r\n\r\n"
    preflight = request_bytes("OPTIONS", "/orders/7", [
        ("Origin", "https://app.example"), ("Access-Control-Request-Method", "DELETE"),
        ("Access-Control-Request-Headers", "authorization, content-type"),
        ("Authorization", "Bearer junk"), ("Cookie", "session=s3cret"), ("X-Api-Key", "k"),
        ("Content-Type", "text/plain"), ("Content-Length", str(len(body))),
    ], body)
    response = await wire.exchange(preflight + closing("GET", "/public/next"))
    assert response.status == 200
    for _ in range(100):
        if len(gate.upstream.requests) == 2:
            break
        await asyncio.sleep(0.01)
    first, second = gate.upstream.requests
    assert first.method == "OPTIONS" and first.raw_path == "/orders/7"
    assert first.body == b""
    assert first.header("Origin") == ["https://app.example"]
    assert first.header("Access-Control-Request-Method") == ["DELETE"]
    assert first.header("Access-Control-Request-Headers") == ["authorization, content-type"]
    names = {k.lower() for k, _ in first.headers}
    assert names - FORWARDED_BY_THE_PROXY - {"origin", "access-control-request-method",
                                             "access-control-request-headers"} == set(), names
    assert (second.method, second.raw_path) == ("GET", "/public/next")


# ---------------------------------------------------------------------------------------------- item 12

OTHER_GATEWAYS = [
    "Remote-User", "X-Remote-User", "X-Auth-Request-User", "X-Auth-Request-Email", "True-Client-IP",
    "CF-Connecting-IP", "X-Cluster-Client-IP", "Client-IP", "X-Host", "X-Original-Host",
    "X-Auth-Request-Groups", "X-User", "X-User-Id", "X-Authenticated-Userid", "X-Consumer-Username",
    "X-MS-Client-Principal-Name", "X-Goog-Authenticated-User-Email", "X-Amzn-Oidc-Identity",
    "Cf-Access-Authenticated-User-Email", "X-WebAuth-User", "X-Pomerium-Claim-Email",
]


@pytest.mark.parametrize("name", OTHER_GATEWAYS)
async def test_spoofed_identity_headers_of_other_gateways_never_reach_the_upstream(wire: RawClient, gate: Gate,
                                                                                   name: str) -> None:
    """Headers that other authenticating proxies (oauth2-proxy, Kong, Cloudflare, IAP, ALB, Easy Auth...) set
    for their upstream are client input here: an upstream that also sits behind one of them trusts them."""
    response = await wire.exchange(closing("GET", "/public", [(name, "admin"), (name, "10.0.0.1")]))
    assert response.status == 200
    assert name.lower() not in names_seen(gate)
    assert not {"admin", "10.0.0.1"} & {v for req in gate.upstream.requests for _, v in req.headers}


@pytest.mark.parametrize("name", ["X.Scopegate.Subject", "X.Forwarded.For", "Remote.User", "X_Remote_User",
                                  "True_Client_IP", "X.Auth.Request.Email", "x-scopegate.subject"])
async def test_spoofed_identity_headers_spelled_with_dots_or_underscores_rejected(wire: RawClient, gate: Gate,
                                                                                  name: str) -> None:
    """'.' and '_' fold to '-' in CGI-style and Apache backends: a name that folds to a stripped one is a 400."""
    response = await wire.exchange(closing("GET", "/public", [(name, "admin")]))
    assert response.status == 400
    assert gate.upstream.started == 0


async def test_spoofed_identity_headers_other_dotted_names_are_dropped(wire: RawClient, gate: Gate) -> None:
    """Other names with '.' are not forwarded (as nginx's ignore_invalid_headers), like '_' names already."""
    response = await wire.exchange(closing("GET", "/public", [("X.Tenant", "t1"), ("X-Kept", "yes")]))
    assert response.status == 200
    assert gate.upstream.requests[0].header("X-Kept") == ["yes"]
    assert "x.tenant" not in names_seen(gate)


async def test_spoofed_identity_headers_configured_strip_list(wire: RawClient, gate: Gate) -> None:
    """``proxy.stripHeaders`` names the headers the user's upstream trusts: stripped in any case, duplicated or
    not, and refused when spelled with '_' or '.'."""
    gate.app.configure(gate_config(gate.upstream.url, stripHeaders=["X-Tenant", "X-Internal-Role"]))
    response = await wire.exchange(closing("GET", "/public", [("X-Tenant", "other"), ("x-internal-role", "admin"),
                                                                    ("X-INTERNAL-ROLE", "root"), ("X-Kept", "yes")]))
    assert response.status == 200
    assert {"x-tenant", "x-internal-role"} & names_seen(gate) == set()
    assert gate.upstream.requests[0].header("X-Kept") == ["yes"]
    for spelling in ("X_Tenant", "X.Internal.Role"):
        refused = await wire.exchange(closing("GET", "/public", [(spelling, "admin")]))
        assert refused.status == 400, spelling
    assert len(gate.upstream.requests) == 1


# ---------------------------------------------------------------------------------------------- item 15

FORM = ("Content-Type", "application/x-www-form-urlencoded")


async def test_form_body_before_token_junk_bearer_is_401_without_the_body(wire: RawClient, gate: Gate) -> None:
    """A form request with a junk bearer is answered 401 from its head alone: the client never sends the body
    (before the fix the proxy waited for the whole form to scan it, and answered 408 at readTimeout)."""
    head = request_bytes("POST", "/orders", [FORM, ("Authorization", "Bearer junk.junk.junk"),
                                             ("Content-Length", "4000")])
    response = await wire.exchange(head, wait=0.4)   # readTimeout is 0.5 s: the answer must not wait for it
    assert response.status == 401
    assert gate.upstream.started == 0


async def post_form_in_chunks(gate: Gate, token: str) -> tuple[int, int]:
    """POST a 310-byte form in 4 chunks straight to the ASGI app: (status, how many chunks the gate asked for)."""
    chunks = [b"a=1&b=", b"2" * 300, b"&c=", b"3"]
    asked = 0
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal asked
        asked += 1
        chunk = chunks.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/orders", "raw_path": b"/orders", "query_string": b"", "root_path": "",
             "headers": [(b"host", b"api.example.com"), (b"content-type", b"application/x-www-form-urlencoded"),
                         (b"authorization", f"Bearer {token}".encode()), (b"content-length", b"310")],
             "client": ("203.0.113.9", 40000), "server": ("127.0.0.1", 8080)}
    await gate.app(scope, receive, send)
    return int(sent[0]["status"]), asked


async def test_form_body_before_token_gate_reads_no_byte_of_it(gate: Gate) -> None:
    """Measured in-process: with a junk bearer the gate never asks for the body (0 of 4 chunks read; before
    the fix, all 4); with a valid one it reads the form to refuse an access_token field in it."""
    assert await post_form_in_chunks(gate, "junk.junk.junk") == (401, 0)
    assert await post_form_in_chunks(gate, valid_token(scp=["orders:write"])) == (200, 4)
    assert [len(r.body) for r in gate.upstream.requests] == [310]


async def test_form_body_before_token_form_over_the_scan_cap_is_413(wire: RawClient, gate: Gate) -> None:
    """A form with a valid bearer is buffered to be scanned only up to proxy.limits.maxFormScanBytes: a larger
    one (declared or chunked) is 413 and closed, never streamed unscanned; one within the cap is forwarded whole."""
    gate.app.configure(gate_config(gate.upstream.url, limits={"maxFormScanBytes": 1024}))
    auth = ("Authorization", f"Bearer {valid_token(scp=['orders:write'])}")
    body = b"a=" + b"x" * 2000
    declared = await wire.exchange(request_bytes("POST", "/orders", [FORM, auth, ("Content-Length", str(len(body)))]),
                                   wait=0.4)
    assert declared.status == 413 and declared.closed
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    streamed = await wire.exchange(request_bytes("POST", "/orders", [FORM, auth, ("Transfer-Encoding", "chunked")],
                                                 chunked))
    assert streamed.status == 413 and streamed.closed
    assert gate.upstream.started == 0
    small = b"a=" + b"x" * 1000 + b"&access_tokenx=1"
    ok = await wire.exchange(closing("POST", "/orders", [FORM, auth, ("Content-Length", str(len(small)))], small))
    assert ok.status == 200
    assert gate.upstream.requests[0].body == small
    late = b"a=" + b"x" * 1000 + b"&access_token=1"
    refused = await wire.exchange(closing("POST", "/orders", [FORM, auth, ("Content-Length", str(len(late)))], late))
    assert refused.status == 400
    assert len(gate.upstream.requests) == 1


async def test_form_body_before_token_second_content_type_does_not_hide_the_form(gate: Gate) -> None:
    """Two Content-Type headers, the first a form: an upstream reading the first one sees a form, so the body is
    still searched for a second token (400), whatever the last Content-Type says."""
    token = valid_token(scp=["orders:write"])
    status, _, _ = await gate.asgi("POST", b"/orders", [
        (b"authorization", f"Bearer {token}".encode()), (b"content-type", b"application/x-www-form-urlencoded"),
        (b"content-type", b"application/json"), (b"content-length", b"20")], body=b"access_token=abcdefg")
    assert status == 400
    assert '"reason":"invalid_request"' in gate.log.getvalue()   # the gate's refusal, not the upstream's
    assert gate.upstream.started == 0
