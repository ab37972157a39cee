"""Issue 8 item 1, made general: hostile framings, generated, through the real process, against a raw upstream
that answers early; each upstream connection's byte stream must parse into exactly the requests the decision
log allowed (same method, same path, same body length, nothing extra).

Hypothesis builds one or two client connections per example, each a run of requests sent pipelined in one
write or one by one: Upgrade/Connection variants, Content-Length exact, short, long or repeated, chunked with
and without trailers, Content-Length with Transfer-Encoding, chunk extensions, a chunk cut short, odd Transfer-Encodings, bodies that hold a whole
hidden request, Expect: 100-continue, a half-closed client, public paths the upstream answers before reading the
body and paths it answers after, and a protected route with a read-only token asked to DELETE. The process and
the upstream start once per module; every request path is unique, so an example's decision lines and upstream
requests are its own. CI bound: ``max_examples=50``, derandomized, no deadline, no example database.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.security.framing_kit import FramingGate, check_invariant, exchange, framing_gate

pytestmark = pytest.mark.e2e

__all__ = ["framing_gate"]

_ids = itertools.count()

UPGRADES: list[list[tuple[str, str]]] = [
    [],
    [("Connection", "Upgrade"), ("Upgrade", "h2c")],
    [("Connection", "keep-alive, Upgrade"), ("Upgrade", "websocket")],
    [("Connection", "Upgrade, HTTP2-Settings"), ("Upgrade", "h2c"), ("HTTP2-Settings", "AAMAAABkAAQCAAAAAAIAAAAA")],
    [("Upgrade", "h2c")],
    [("Connection", "Upgrade")],
    [("Connection", "close")],
    [("Connection", "upgrade"), ("Upgrade", "websocket"), ("Sec-WebSocket-Version", "13"),
     ("Sec-WebSocket-Key", "MDEyMzQ1Njc4OWFiY2RlZg==")],
]
FRAMINGS = ["none", "cl", "cl-short", "cl-long", "cl-twice", "cl-signed", "chunked", "chunked-trailers",
            "chunked-ext", "chunked-short", "cl-and-te", "te-identity", "te-twice", "chunked-bad-size"]
ROUTES = ["early", "late", "orders-get", "orders-delete"]


@dataclass(frozen=True)
class Spec:
    route: str
    method: str
    upgrade: int
    framing: str
    body: bytes
    hidden: bool
    """The body is (or ends with) a whole request to a fresh public path."""
    expect_continue: bool


@dataclass(frozen=True)
class Built:
    data: bytes
    target: str
    declared: int | None
    """The body length its framing declares (what a complete forwarded request must carry)."""
    hidden_target: str | None


specs = st.builds(
    Spec,
    route=st.sampled_from(ROUTES),
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"]),
    upgrade=st.integers(0, len(UPGRADES) - 1),
    framing=st.sampled_from(FRAMINGS),
    body=st.binary(min_size=0, max_size=40),
    hidden=st.booleans(),
    expect_continue=st.booleans(),
)
connections = st.lists(
    st.tuples(st.lists(specs, min_size=1, max_size=4), st.sampled_from(["pipelined", "one-by-one", "half-close"])),
    min_size=1, max_size=2)


def build(spec: Spec, token: str) -> Built:
    n = next(_ids)
    if spec.route == "early":
        method, target = spec.method, f"/health/early/p{n}"
    elif spec.route == "late":
        method, target = spec.method, f"/health/late/p{n}"
    elif spec.route == "orders-get":
        method, target = "GET", f"/orders/p{n}"
    else:
        method, target = "DELETE", f"/orders/p{n}"
    headers: list[tuple[str, str]] = [("Host", "api.example.com")]
    if spec.route.startswith("orders"):
        headers.append(("Authorization", f"Bearer {token}"))
    headers += UPGRADES[spec.upgrade]
    if spec.expect_continue:
        headers.append(("Expect", "100-continue"))
    hidden_target = f"/health/late/h{n}" if spec.hidden else None
    body = spec.body
    if hidden_target is not None:
        body += f"GET {hidden_target} HTTP/1.1\r\nHost: api.example.com\r\n\r\n".encode()
    declared: int | None = len(body)
    framing = spec.framing
    wire_body = body
    if framing == "none":
        declared, wire_body = None, b""
        if hidden_target is not None:  # the hidden request simply follows: pipelined, and gated like any other
            wire_body = body[len(spec.body):]
    elif framing == "cl":
        headers.append(("Content-Length", str(len(body))))
    elif framing == "cl-short":
        headers.append(("Content-Length", str(len(body) + 7)))
        declared = len(body) + 7
    elif framing == "cl-long":
        headers.append(("Content-Length", str(len(spec.body))))
        declared = len(spec.body)
    elif framing == "cl-twice":
        headers += [("Content-Length", str(len(body))), ("Content-Length", str(len(body) + 1))]
    elif framing == "cl-signed":
        headers.append(("Content-Length", f"+{len(body)}"))
    elif framing in ("chunked", "chunked-trailers", "chunked-bad-size", "chunked-ext", "chunked-short"):
        headers.append(("Transfer-Encoding", "chunked"))
        size = b"%x" % len(body) if framing != "chunked-bad-size" else b"%x\n" % len(body)
        if framing == "chunked-ext":
            size += b";name=value"
        if framing == "chunked-short":  # a chunk that promises more than it holds, and no last chunk
            declared = len(body) + 5
            wire_body = b"%x\r\n" % declared + body
        else:
            wire_body = (size + b"\r\n" + body + b"\r\n" if body else b"") + b"0\r\n"
            if framing == "chunked-trailers":
                wire_body += b"X-Trailer: 1\r\nX-Scopegate-Subject: admin\r\n"
            wire_body += b"\r\n"
    elif framing == "cl-and-te":
        headers += [("Content-Length", str(len(body))), ("Transfer-Encoding", "chunked")]
    elif framing == "te-identity":
        headers.append(("Transfer-Encoding", "identity"))
    elif framing == "te-twice":
        headers += [("Transfer-Encoding", "chunked"), ("Transfer-Encoding", "chunked")]
        wire_body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body) if body else b"0\r\n\r\n"
    head = f"{method} {target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
    return Built(head.encode("latin-1") + wire_body, target, declared, hidden_target)


@settings(max_examples=50, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(plan=connections)
def test_request_smuggling_framing_property_upstream_sees_exactly_what_was_allowed(
        framing_gate: FramingGate, plan: list[tuple[list[Spec], str]]) -> None:
    """Whatever the framing, no byte reaches an upstream connection that is not part of an allowed request of
    the length its client declared: nothing smuggled, nothing short, nothing extra."""
    gate = framing_gate
    token = gate.token("orders:read")
    since, cursor = len(gate.decisions()), gate.cursor()
    bodies: dict[str, int] = {}
    for requests, mode in plan:
        built = [build(spec, token) for spec in requests]
        for b in built:
            if b.declared is not None:
                bodies[b.target] = b.declared
        parts = [b"".join(b.data for b in built)] if mode != "one-by-one" else [b.data for b in built]
        exchange(gate, parts, expect=len(built), idle=0.12, total=3.0, pause=0.05 if mode == "one-by-one" else 0.0,
                 half_close=mode == "half-close")
    gate.settle(cursor, quiet=0.12)
    assert check_invariant(gate, cursor, since, bodies) == []
