"""Issue 8's hardening items on the request path, in-process (``attack_bench.gate``): what the attacker gets
back, and that nothing (or only what the gate allowed) reaches the upstream. Wire-level checks of the same
items are in ``test_wire.py``-style tests below, over a real uvicorn (``wire``)."""

from __future__ import annotations

import pytest

from tests.security.attack_bench import Gate

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
