"""The upstream request as aiohttp builds it (proxy/forward.py): nothing added that the client did not send."""

from __future__ import annotations

import pytest

from tests.proxy.conftest import Gate
from tests.proxy.test_app import call


def names(gate: Gate) -> set[str]:
    return {name.lower() for name, _ in gate.upstream.received[-1].headers}


_PROXY_OWN = {"host", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"}


@pytest.mark.parametrize("method", ["GET", "HEAD", "OPTIONS"])
async def test_no_default_headers_are_added(gate: Gate, method: str) -> None:
    """aiohttp adds Accept, Accept-Encoding and User-Agent by default: the proxy must not (an Accept-Encoding the
    client never sent would have the upstream compress what is relayed uncompressed)."""
    status, _, _ = await call(gate.app, [(b"host", b"api.example.com")], method=method)
    assert status == 200
    assert names(gate) == _PROXY_OWN


async def test_a_body_without_content_type_gets_none(gate: Gate) -> None:
    """aiohttp gives a POST body ``application/octet-stream`` by default: the proxy forwards none."""
    status, _, _ = await call(gate.app, [(b"host", b"api.example.com"), (b"content-length", b"3")], method="POST",
                              body=b"abc")
    assert status == 200
    assert names(gate) == _PROXY_OWN | {"content-length"}
    assert gate.upstream.received[-1].body == b"abc"


async def test_the_clients_own_headers_go_as_sent(gate: Gate) -> None:
    headers = [(b"host", b"api.example.com"), (b"accept", b"text/csv"), (b"accept-encoding", b"identity"),
               (b"user-agent", b"curl/8"), (b"content-type", b"text/plain"), (b"content-length", b"2")]
    status, _, _ = await call(gate.app, headers, method="PUT", body=b"hi")
    assert status == 200
    received = {name.lower(): value for name, value in gate.upstream.received[-1].headers}
    assert (received["accept"], received["accept-encoding"], received["user-agent"], received["content-type"]) == (
        "text/csv", "identity", "curl/8", "text/plain")


async def test_one_scan_keeps_what_each_name_means_on_every_request(gate: Gate) -> None:
    """The guard classifies a header name once and remembers it: the second request with the same names is
    treated as the first (a refused spelling refused again, a Connection-listed name dropped again)."""
    for _ in range(2):
        status, _, _ = await call(gate.app, [(b"host", b"api.example.com"), (b"x_scopegate_subject", b"admin")])
        assert status == 400
        status, _, _ = await call(gate.app, [(b"host", b"api.example.com"), (b"connection", b"x-drop, keep-alive"),
                                             (b"x-drop", b"1"), (b"x-keep", b"2"), (b"x_other", b"3")])
        assert status == 200
        assert names(gate) == _PROXY_OWN | {"x-keep"}
