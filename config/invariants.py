"""Invariants that span several objects: references that must resolve, resources that must not collide.

Each check yields ``(path, rule)`` pairs, where the path is a tuple of keys and indexes into the
document, so the loader can attach a line number and the management API can name the field.
"""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlsplit

from config.schema import ALL_CLIENTS, ANY_SCOPE, EVERYONE, OIDC_SCOPES, ScopegateConfig, resource_path

Path = tuple[str | int, ...]


def find_reference_errors(cfg: ScopegateConfig) -> list[tuple[Path, str]]:
    """Every cross-object violation of ``cfg``, in document order."""
    return [*_server_references(cfg), *_app_references(cfg), *_user_references(cfg), *_resource_overlaps(cfg),
            *_route_references(cfg), *_route_claim_headers(cfg)]


def _server_references(cfg: ScopegateConfig) -> Iterator[tuple[Path, str]]:
    clients = {a.client_id for a in cfg.apps}
    users = {u.id for u in cfg.users}
    groups = {g.id for g in cfg.groups} | {EVERYONE}
    for i, server in enumerate(cfg.authorization_servers):
        base: Path = ("authorizationServers", i)
        scopes = server.scope_names
        for c, claim in enumerate(server.claims):
            for s, name in enumerate(claim.conditions.scopes):
                if name not in scopes:
                    yield (*base, "claims", c, "conditions", "scopes", s), f"scope {name!r} is not defined on authorization server {server.id!r}"
        for p, policy in enumerate(server.policies):
            pbase = (*base, "policies", p)
            for k, client in enumerate(policy.conditions.clients.include):
                if client != ALL_CLIENTS and client not in clients:
                    yield (*pbase, "conditions", "clients", "include", k), f"client {client!r} does not exist (declare it under apps, or use ALL_CLIENTS)"
            for r, rule in enumerate(policy.rules):
                rbase = (*pbase, "rules", r, "conditions")
                for k, name in enumerate(rule.conditions.scopes.include):
                    if name != ANY_SCOPE and name not in scopes:
                        yield (*rbase, "scopes", "include", k), f"scope {name!r} is not defined on authorization server {server.id!r}"
                people = rule.conditions.people
                for which in ("include", "exclude"):
                    for k, uid in enumerate(getattr(people.users, which)):
                        if uid not in users:
                            yield (*rbase, "people", "users", which, k), f"user {uid!r} does not exist"
                    for k, gid in enumerate(getattr(people.groups, which)):
                        if gid not in groups:
                            yield (*rbase, "people", "groups", which, k), f"group {gid!r} does not exist (declare it under groups, or use EVERYONE)"


def _app_references(cfg: ScopegateConfig) -> Iterator[tuple[Path, str]]:
    users = {u.id for u in cfg.users}
    groups = {g.id for g in cfg.groups}
    for i, app in enumerate(cfg.apps):
        for k, uid in enumerate(app.assignments.users):
            if uid not in users:
                yield ("apps", i, "assignments", "users", k), f"user {uid!r} does not exist"
        for k, gid in enumerate(app.assignments.groups):
            if gid not in groups:
                yield ("apps", i, "assignments", "groups", k), f"group {gid!r} does not exist"


def _user_references(cfg: ScopegateConfig) -> Iterator[tuple[Path, str]]:
    groups = {g.id for g in cfg.groups}
    for i, user in enumerate(cfg.users):
        for k, gid in enumerate(user.groups):
            if gid not in groups:
                yield ("users", i, "groups", k), f"group {gid!r} does not exist"


def _resource_overlaps(cfg: ScopegateConfig) -> Iterator[tuple[Path, str]]:
    """Two servers may not cover the same path: the request could not tell which one decides.

    Nested resources (``/orders`` and ``/orders/admin``) are not ambiguous: the longest segment-aligned
    prefix decides (DESIGN §2.3). With ``matchHost`` on both, equal paths on different hosts are distinct.
    """
    seen: dict[tuple[str, str], str] = {}
    for i, server in enumerate(cfg.authorization_servers):
        try:
            uri = server.resource
        except IndexError:  # already reported by the schema
            continue
        host = urlsplit(uri).netloc.lower() if server.match_host else "*"
        key = (host, resource_path(uri))
        clashes = [other for (h, p), other in seen.items() if p == key[1] and (h == "*" or host == "*" or h == host)]
        field = ("remote", "audience") if server.remote is not None else ("audiences", 0)
        for other in clashes:
            yield ("authorizationServers", i, *field), (
                f"resource path {key[1]!r} is already covered by authorization server {other!r}: resources that "
                "share a path belong to one authorization server (give them one server, or set matchHost on both "
                "with different hosts)"
            )
        seen[key] = server.id


def _route_references(cfg: ScopegateConfig) -> Iterator[tuple[Path, str]]:
    """A route's scopes must exist on the local server covering its path, or the route can never pass."""
    local = [(resource_path(s.audiences[0]), s) for s in cfg.authorization_servers if s.remote is None and s.audiences]
    for i, route in enumerate(cfg.routes):
        if route.scopes is None:
            continue
        covering = [(p, s) for p, s in local if p == "/" or route.path == p or route.path.startswith(p + "/")]
        if not covering:
            continue
        _, server = max(covering, key=lambda item: len(item[0]))
        names = route.scopes.any_of or route.scopes.all_of or []
        key = "anyOf" if route.scopes.any_of is not None else "allOf"
        for k, name in enumerate(names):
            if name not in server.scope_names:
                yield ("routes", i, "scopes", key, k), f"scope {name!r} is not defined on authorization server {server.id!r}, which covers {route.path}"



def _route_claim_headers(cfg: ScopegateConfig) -> Iterator[tuple[Path, str]]:
    """A route's claim header must not be a built-in identity header, and ``null`` must drop a global one."""
    identity = cfg.proxy.identity
    builtin = {h.lower() for h in identity.builtin_headers()}
    global_names = {h.lower() for h in identity.claims}
    for i, route in enumerate(cfg.routes):
        for name, path in (route.claims or {}).items():
            if name.lower() in builtin:
                yield ("routes", i, "claims", name), (
                    f"{name!r} is already an identity header (proxy.identity subjectHeader, clientIdHeader, "
                    "scopesHeader or authServerHeader)")
            elif path is None and name.lower() not in global_names:
                yield ("routes", i, "claims", name), (
                    f"null drops a header of proxy.identity.claims on this route, and {name!r} is not one")


__all__ = ["OIDC_SCOPES", "Path", "find_reference_errors"]
