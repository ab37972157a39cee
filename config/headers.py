"""Header names the configuration must know: claim headers (``proxy.identity.claims``) may not take them.

The proxy strips and rebuilds these (``proxy/forward.py``, ``proxy/guard.py``); they live here because
dependencies point one way (proxy → authz → config) and the config validates against them.
"""

from __future__ import annotations

from typing import Final

HOP_BY_HOP: Final = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection", "te", "trailer",
    "transfer-encoding", "upgrade", "content-length", "host", "expect",
})
"""RFC 9110 §7.6.1 plus the framing headers the proxy rebuilds itself (Content-Length, Host), and ``Expect``:
the server already answered the client's 100-continue when the gate read the body, and forwarded, it made
aiohttp hold the body until the upstream sent a 100 of its own (Envoy strips it too)."""

FORWARDING: Final = frozenset({
    # Forwarding and rewrite headers (security.md §3.3): the proxy sets its own X-Forwarded-*.
    "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto", "x-forwarded-port", "x-forwarded-prefix",
    "x-forwarded-uri", "forwarded", "x-real-ip", "x-original-url", "x-rewrite-url", "x-original-uri",
    "x-original-method", "x-host", "x-original-host",
    # Method overrides (Rails, Symfony, ASP.NET, Express method-override): an upstream honouring one would run
    # a method the gate never authorized, under scopes chosen for another.
    "x-http-method-override", "x-http-method", "x-method-override",
    # Client addresses as CDNs and load balancers set them (Akamai, Cloudflare, Rackspace, Fastly, ...).
    "x-client-ip", "true-client-ip", "cf-connecting-ip", "x-cluster-client-ip", "client-ip", "fastly-client-ip",
    "x-originating-ip", "x-remote-ip", "x-remote-addr",
})
"""Headers that say where a request came from or what it really is: never client input, and never a claim
(a claim-valued ``X-Forwarded-For`` or ``X-HTTP-Method-Override`` would change routing or the method)."""

FORWARDING_PREFIXES: Final = ("x-forwarded-", "x-envoy-")

GATEWAY_IDENTITIES: Final = frozenset({"remote-user", "x-remote-user", "x-user", "x-credential-identifier"})
"""Identities other authenticating proxies hand their upstream: trusted there, client input here. A claim
header may take one of these names (a legacy upstream reading ``Remote-User``)."""

NOT_FOR_CLAIMS: Final = HOP_BY_HOP | FORWARDING | {"authorization", "cookie"}
"""Names a claim header may not take (with ``FORWARDING_PREFIXES`` and the built-in identity headers):
the proxy rebuilds, forwards or strips them itself, so a claim there would either vanish or impersonate."""


def claim_header_clash(lower: str) -> str | None:
    """Why a claim header named ``lower`` (lower case) is refused, or None when it is free."""
    if lower in HOP_BY_HOP:
        return "a hop-by-hop or framing header, which the proxy removes and rebuilds"
    if lower in FORWARDING or lower.startswith(FORWARDING_PREFIXES):
        return "a forwarding, rewrite, method-override or client-address header"
    if lower in NOT_FOR_CLAIMS:
        return "a header the proxy forwards from the client as is"
    return None
