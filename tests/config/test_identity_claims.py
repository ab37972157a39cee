"""``proxy.identity.claims`` and ``routes[].claims`` (issue 10 item 5): validated at load, every error naming
the file, line, path and rule."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from config.loader import ConfigError, parse_config

AS = {"id": "orders", "name": "Orders", "audiences": ["https://api.example.com/orders"],
      "scopes": [{"name": "orders:read"}]}


def document(identity: dict[str, Any] | None = None, route_claims: dict[str, Any] | None = None,
             public: bool = False) -> str:
    route: dict[str, Any] = {"name": "orders", "path": "/orders"}
    route.update({"public": True} if public else {"scopes": {"anyOf": ["orders:read"]}})
    if route_claims is not None:
        route["claims"] = route_claims
    doc = {"proxy": {"identity": identity or {}}, "routes": [route], "authorizationServers": [AS]}
    return yaml.safe_dump(doc, sort_keys=False)


def errors(text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "scopegate.yaml", {})
    return str(caught.value)


def test_identity_claims_global_and_per_route_maps_load() -> None:
    """Header names map to claim paths; a route may add, replace (any case) or drop (null) a global entry."""
    cfg = parse_config(document({"claims": {"X-User-Id": "uid", "X-Tenant": "org.tenant_id",
                                            "Remote-User": "https://example.com/login"}},
                                {"x-tenant": "org.id", "X-User-Id": None, "X-Role": "role"}), "s.yaml", {})
    assert cfg.proxy.identity.claims == {"X-User-Id": "uid", "X-Tenant": "org.tenant_id",
                                         "Remote-User": "https://example.com/login"}
    assert cfg.routes[0].claims == {"x-tenant": "org.id", "X-User-Id": None, "X-Role": "role"}
    assert cfg.proxy.identity.max_claim_bytes == 4096


@pytest.mark.parametrize(("name", "why"), [
    ("Connection", "hop-by-hop"), ("TE", "hop-by-hop"), ("Content-Length", "hop-by-hop"), ("Host", "hop-by-hop"),
    ("Transfer-Encoding", "hop-by-hop"), ("Upgrade", "hop-by-hop"),
    ("X-Forwarded-For", "forwarding"), ("x-forwarded-user", "forwarding"), ("Forwarded", "forwarding"),
    ("X-Real-IP", "forwarding"), ("X-HTTP-Method-Override", "method-override"), ("X-Envoy-Original-Path", "forwarding"),
    ("True-Client-IP", "client-address"), ("Authorization", "forwards from the client"),
    ("Cookie", "forwards from the client"),
])
def test_identity_claims_header_clashing_with_proxy_headers_is_a_config_error(name: str, why: str) -> None:
    """A claim header may not take a name the proxy removes, rebuilds or forwards itself: the error names the
    file, line, path and the rule, globally and per route."""
    message = errors(document({"claims": {name: "sub"}}))
    assert "scopegate.yaml:4: proxy.identity.claims:" in message and why in message and repr(name) in message
    message = errors(document(route_claims={name: "sub"}))
    assert "routes[0].claims:" in message and why in message


@pytest.mark.parametrize("name", ["X-Scopegate-Subject", "x-scopegate-scopes", "X-Scopegate-Auth-Server",
                                  "X-Scopegate-Client-Id"])
def test_identity_claims_header_clashing_with_builtin_identity_headers_is_a_config_error(name: str) -> None:
    """The four identity headers carry what the gate decided; a claim may not replace one, globally or per route."""
    assert "already an identity header" in errors(document({"claims": {name: "sub"}}))
    message = errors(document(route_claims={name: "sub"}))
    assert f"scopegate.yaml:10: routes[0].claims.{name}: {name!r} is already an identity header" in message


def test_identity_claims_clash_with_a_renamed_identity_header() -> None:
    """The check follows the configured names."""
    message = errors(document({"subjectHeader": "X-User", "claims": {"x-user": "sub"}}))
    assert "already an identity header" in message
    message = errors(document({"subjectHeader": "X-User"}, {"X-USER": "sub"}))
    assert "routes[0].claims.X-USER" in message


@pytest.mark.parametrize(("claims", "rule"), [
    ({"X-Tenant": "a", "x-tenant": "b"}, "named twice"),
    ({"X_Tenant": "a"}, "not a header name"), ({"X Tenant": "a"}, "not a header name"),
    ({"X-Tenant": ""}, "not a claim path"), ({"X-Tenant": "org..id"}, "not a claim path"),
    ({"X-Tenant": ".org"}, "not a claim path"), ({"X-Tenant": "org."}, "not a claim path"),
    ({"X-Tenant": "org id"}, "not a claim path"), ({"X-Tenant": "a" * 257}, "not a claim path"),
    ({"X-Tenant": 7}, "valid string"),
])
def test_identity_claims_malformed_names_and_paths_are_config_errors(claims: dict[str, Any], rule: str) -> None:
    assert rule in errors(document({"claims": claims}))


def test_identity_claims_route_rules() -> None:
    """A public route has no token and so no claims; null must drop a global entry; the cap is bounded."""
    assert "a public route takes no token, so it has no claims" in errors(document(route_claims={"X-A": "a"},
                                                                                   public=True))
    assert "'X-Typo' is not one" in errors(document({"claims": {"X-Tenant": "t"}}, {"X-Typo": None}))
    assert "proxy.identity.maxClaimBytes" in errors(document({"maxClaimBytes": 9000}))


@pytest.mark.parametrize("name", ["unrouted", "none"])
def test_identity_claims_route_names_reserved_for_labels(name: str) -> None:
    """'unrouted' and 'none' label requests no route matched; a route of that name would take their claims."""
    text = document().replace("name: orders\n  path", f"name: {name}\n  path")
    assert "is reserved" in errors(text)
