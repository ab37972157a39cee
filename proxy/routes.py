"""Step 4 of the gate: the compiled route table.

First match wins, by segment-aligned path prefix and method (DESIGN §2.4). A public route takes no token;
otherwise the route names the scopes it needs. The table is built once per configuration.

TRACE is matched only by a route that lists it in ``methods`` (issue 8 item 16): an upstream that echoes a
TRACE reflects the request's headers, the gate's identity headers included (cross-site tracing), so a route
that leaves ``methods`` out ("every method") does not mean that one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from config.schema import Route as RouteConfig
from proxy.scopes import ScopeCheck


@dataclass(frozen=True, slots=True)
class Route:
    name: str
    path: str
    prefix: str
    methods: frozenset[str] | None
    public: bool
    scopes: ScopeCheck | None

    def matches(self, method: str, path: str) -> bool:
        if self.methods is not None and method not in self.methods:
            return False
        return path == self.path or path.startswith(self.prefix)


FORWARDED_METHODS = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"
"""The ``Allow`` of a 405 for CONNECT or an unrouted TRACE (RFC 9110 §15.5.6: a 405 MUST carry one)."""
EXPLICIT_ONLY = frozenset({"TRACE", "CONNECT"})
"""Methods only a route that names them matches (CONNECT is refused before routing anyway)."""
UNROUTED = "unrouted"
"""The route label of a request that matched no route (metrics, decision log)."""
NONE = "none"
"""The route label of a request denied before routing (parse guard, path normalization)."""


class RouteTable:
    def __init__(self, routes: Sequence[RouteConfig]) -> None:
        self.routes = tuple(
            Route(
                name=r.name,
                path=r.path,
                prefix="/" if r.path == "/" else r.path + "/",
                methods=frozenset(r.methods) if r.methods is not None else None,
                public=r.public,
                scopes=ScopeCheck.compile(r.scopes) if r.scopes is not None else None,
            )
            for r in routes
        )
        self.names = tuple(r.name for r in self.routes)
        self._explicit = tuple(r for r in self.routes if r.methods is not None)

    def match(self, method: str, path: str) -> Route | None:
        for route in self._explicit if method in EXPLICIT_ONLY else self.routes:
            if route.matches(method, path):
                return route
        return None
