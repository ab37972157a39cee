"""Resource resolution (step 3), the route table (step 4) and the scope check (step 9)."""

from __future__ import annotations

from typing import Any

from config.schema import Route, ScopegateConfig, ScopeRequirement
from proxy.resources import ResourceMap, split_host
from proxy.routes import RouteTable
from proxy.scopes import ScopeCheck


def server(id: str, audience: str, **extra: Any) -> dict[str, Any]:
    return {"id": id, "name": id, "audiences": [audience], **extra}


def config(*servers: dict[str, Any]) -> ScopegateConfig:
    return ScopegateConfig.model_validate({"authorizationServers": list(servers)})


class TestResources:
    def test_segment_aligned_prefix(self) -> None:
        """/orders covers /orders and /orders/7, never /ordersX (DESIGN §2.3)."""
        rmap = ResourceMap(config(server("orders", "https://api.example.com/orders")))
        assert rmap.resolve("/orders", None).as_id == "orders"  # type: ignore[union-attr]
        assert rmap.resolve("/orders/7", None).as_id == "orders"  # type: ignore[union-attr]
        assert rmap.resolve("/orders/", None).as_id == "orders"  # type: ignore[union-attr]
        assert rmap.resolve("/ordersX", None) is None
        assert rmap.resolve("/", None) is None

    def test_longest_prefix_wins(self) -> None:
        """Nested resources: the longest segment-aligned prefix decides."""
        rmap = ResourceMap(config(server("orders", "https://api.example.com/orders"),
                                  server("admin", "https://api.example.com/orders/admin"),
                                  server("root", "https://api.example.com/")))
        assert rmap.resolve("/orders/admin/x", None).as_id == "admin"  # type: ignore[union-attr]
        assert rmap.resolve("/orders/adminx", None).as_id == "orders"  # type: ignore[union-attr]
        assert rmap.resolve("/other", None).as_id == "root"  # type: ignore[union-attr]

    def test_match_host(self) -> None:
        """With matchHost the Host must name the resource's host: case-insensitive, trailing dot ignored."""
        rmap = ResourceMap(config(server("a", "https://a.example.com/api", matchHost=True),
                                  server("b", "https://b.example.com/api", matchHost=True)))
        assert rmap.resolve("/api/x", "A.EXAMPLE.COM").as_id == "a"  # type: ignore[union-attr]
        assert rmap.resolve("/api/x", "b.example.com.:443").as_id == "b"  # type: ignore[union-attr]
        assert rmap.resolve("/api/x", "c.example.com") is None
        assert rmap.resolve("/api/x", None) is None

    def test_split_host(self) -> None:
        """Host values are lower-cased, lose a trailing dot, and keep an explicit port."""
        assert split_host("API.Example.com.") == ("api.example.com", None)
        assert split_host("api.example.com:8443") == ("api.example.com", 8443)
        assert split_host("[::1]:80") == ("::1", 80)


class TestRoutes:
    def test_first_match_by_prefix_and_method(self) -> None:
        """Routes are tried in order; method and segment-aligned prefix must both match."""
        table = RouteTable([
            Route(name="health", path="/orders/health", public=True),
            Route(name="read", path="/orders", methods=["GET"], scopes=ScopeRequirement(any_of=["r"])),
            Route(name="write", path="/orders", methods=["POST"], scopes=ScopeRequirement(all_of=["w"])),
        ])
        assert table.match("GET", "/orders/health").name == "health"  # type: ignore[union-attr]
        assert table.match("GET", "/orders/7").name == "read"  # type: ignore[union-attr]
        assert table.match("POST", "/orders").name == "write"  # type: ignore[union-attr]
        assert table.match("DELETE", "/orders") is None
        assert table.match("GET", "/ordersX") is None

    def test_root_route_matches_everything(self) -> None:
        """A route on / covers every path."""
        table = RouteTable([Route(name="all", path="/", public=True)])
        assert table.match("GET", "/anything/at/all") is not None


class TestScopes:
    def test_any_of(self) -> None:
        """anyOf passes with one of the scopes; exact, case-sensitive tokens."""
        check = ScopeCheck.compile(ScopeRequirement(any_of=["orders:read", "orders:write"]))
        assert check.is_satisfied_by(frozenset({"orders:write"}))
        assert not check.is_satisfied_by(frozenset({"orders:writeX", "ORDERS:READ", "orders:*"}))
        assert check.challenge == "orders:read orders:write"

    def test_all_of(self) -> None:
        """allOf needs every scope."""
        check = ScopeCheck.compile(ScopeRequirement(all_of=["a", "b"]))
        assert check.is_satisfied_by(frozenset({"a", "b", "c"}))
        assert not check.is_satisfied_by(frozenset({"a"}))
        assert check.challenge == "a b"
