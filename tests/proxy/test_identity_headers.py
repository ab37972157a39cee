"""Issue 10 items 5 and 6 in-process: claims passed to the upstream as headers (``proxy.identity.claims``,
``routes[].claims``) and ``proxy.stripHeaders`` prefixes; the client can never send any of those names."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from authz.errors import BearerError
from config.schema import ScopegateConfig
from proxy.app import ProxyApp
from proxy.forward import ClaimHeaders, HeaderPlan
from proxy.guard import ParseGuard
from proxy.metrics import ProxyMetrics
from tests.clock import Clock
from tests.proxy.conftest import Gate, make_gate
from tests.proxy.gatekit import NOW, FakeRevocation, RecordingUpstream, claims, default_keys, gate_config, mint
from tests.proxy.test_websocket import EchoUpstream, serve

CLAIMS = {"X-User-Id": "uid", "X-Tenant": "org.tenant_id", "X-Groups": "groups", "X-Email": "email"}


def claim_config(url: str, **proxy: Any) -> ScopegateConfig:
    cfg = gate_config(url)
    document = cfg.model_dump(by_alias=True, exclude_none=True)
    document["proxy"] = {"identity": {"claims": CLAIMS}, **proxy}
    document["routes"] = [
        {"name": "health", "path": "/health", "public": True},
        {"name": "orders-admin", "path": "/orders/admin", "scopes": {"anyOf": ["orders:read"]},
         "claims": {"x-tenant": "org.id", "X-Email": None, "X-Role": "org.role"}},
        {"name": "orders-read", "path": "/orders", "scopes": {"anyOf": ["orders:read"]}},
    ]
    return ScopegateConfig.model_validate(document)


def values(received: list[tuple[str, str]], name: str) -> list[str]:
    return [v for k, v in received if k.lower() == name.lower()]


def user_token(**overrides: Any) -> str:
    user: dict[str, Any] = {"uid": "00u1", "email": "alice@example.com", "groups": ["eng", "ops"],
                            "org": {"tenant_id": "t-7", "id": "org-1", "role": "admin"}}
    return mint(claims(**{**user, **overrides}))


@pytest.fixture
async def claim_gate(upstream: RecordingUpstream) -> AsyncIterator[Gate]:
    async for g in make_gate(upstream, claim_config(upstream.url)):
        yield g


class TestClaimValues:
    def plan(self, **claims_map: str) -> ClaimHeaders:
        return ClaimHeaders(claims_map, max_bytes=64)

    def test_identity_claims_dotted_paths_arrays_and_missing_claims(self) -> None:
        """A dotted path reaches into objects, arrays are joined with ',', scalars are JSON text, a missing or null
        claim (or a path through a non-object) sends no header, a namespaced claim name is taken whole."""
        plan = self.plan(A="sub", B="org.tenant_id", C="groups", D="n", E="flag", F="missing", G="org.missing.deep",
                         H="sub.x", I="https://example.com/roles", J="nothing", K="ratio")
        token = {"sub": "alice", "org": {"tenant_id": "t-7"}, "groups": ["eng", 7, True], "n": 12, "flag": False,
                 "https://example.com/roles": ["r1"], "nothing": None, "ratio": 0.5}
        assert plan.values(token, "orders") == [("A", "alice"), ("B", "t-7"), ("C", "eng,7,true"), ("D", "12"),
                                                ("E", "false"), ("I", "r1"), ("K", "0.5")]
        assert self.plan(X="groups").values({"groups": []}, "orders") == [("X", "")]

    @pytest.mark.parametrize("value", [
        "a\r\nX-Injected: 1", "a\nb", "tab\there", "nul\x00", "del\x7f", "nel\x85", " leading", "trailing ",
        "x" * 65, "é" * 33, "lone\ud800surrogate", {"an": "object"}, ["a,b"], [["nested"]], [{"a": 1}], [None], float("inf"),
    ])
    def test_identity_claims_values_that_cannot_be_sent_faithfully_are_bad_claims(self, value: Any) -> None:
        """Control characters (header injection), edge spaces the upstream would trim, over the byte cap (UTF-8), a
        lone surrogate (no UTF-8 form), objects, and arrays whose join would be ambiguous refuse the token: 401 invalid_token, bad_claims."""
        with pytest.raises(BearerError) as caught:
            self.plan(X="c").values({"c": value}, "orders")
        assert (caught.value.status_code, caught.value.error, caught.value.reason) == (401, "invalid_token",
                                                                                       "bad_claims")
        assert caught.value.realm == "orders"

    def test_identity_claims_cap_counts_utf8_bytes(self) -> None:
        """The cap is in bytes as sent: 32 two-byte characters fit 64, 64 ASCII characters fit."""
        assert self.plan(X="c").values({"c": "é" * 32}, "o") == [("X", "é" * 32)]
        assert self.plan(X="c").values({"c": "x" * 64}, "o") == [("X", "x" * 64)]

    def test_identity_claims_plans_built_once_and_absent_without_claims(self) -> None:
        """Without claims the hot path sees an empty plan table; with them, each token route has its merged,
        pre-split plan (route entries replace global ones in any case, null drops one), public routes none."""
        assert HeaderPlan(gate_config()).claims == {}
        plans = HeaderPlan(claim_config("builtin:echo")).claims
        assert set(plans) == {"unrouted", "orders-admin", "orders-read"}
        assert plans["orders-read"].entries == tuple((h, p, tuple(p.split("."))) for h, p in CLAIMS.items())
        assert [(h, p) for h, p, _ in plans["orders-admin"].entries] == [
            ("X-User-Id", "uid"), ("x-tenant", "org.id"), ("X-Groups", "groups"), ("X-Role", "org.role")]


class TestClaimHeadersThroughTheGate:
    async def test_identity_claims_reach_the_upstream_per_route(self, claim_gate: Gate) -> None:
        """The global map on one route; the route's override (replace, drop, add) on another."""
        response = await claim_gate.client.get("/orders/7", headers={"Authorization": f"Bearer {user_token()}"})
        assert response.status_code == 200
        seen = claim_gate.upstream.received[-1].headers
        assert values(seen, "X-User-Id") == ["00u1"]
        assert values(seen, "X-Tenant") == ["t-7"]
        assert values(seen, "X-Groups") == ["eng,ops"]
        assert values(seen, "X-Email") == ["alice@example.com"]
        assert values(seen, "X-Scopegate-Subject") == ["alice@example.com"]

        response = await claim_gate.client.get("/orders/admin", headers={"Authorization": f"Bearer {user_token()}"})
        assert response.status_code == 200
        seen = claim_gate.upstream.received[-1].headers
        assert values(seen, "X-Tenant") == ["org-1"]
        assert values(seen, "X-Role") == ["admin"]
        assert values(seen, "X-Email") == []
        assert values(seen, "X-User-Id") == ["00u1"]

    async def test_spoofed_identity_headers_claim_names_are_stripped_in_any_case_and_duplicated(
            self, claim_gate: Gate) -> None:
        """Client copies of every configured claim header (global and per route), any case, repeated, are
        removed, on token routes and public ones; a missing claim leaves no header at all."""
        spoofed = [("x-tenant", "evil"), ("X-TENANT", "evil2"), ("X-Tenant", "evil3"), ("X-User-Id", "root"),
                   ("x-role", "superuser"), ("X-Email", "root@example.com")]
        token = mint(claims(uid="00u1"))  # no email, org or groups
        response = await claim_gate.client.get("/orders/7", headers=[("Authorization", f"Bearer {token}"), *spoofed])
        assert response.status_code == 200
        seen = claim_gate.upstream.received[-1].headers
        assert values(seen, "X-User-Id") == ["00u1"]
        for name in ("X-Tenant", "X-Role", "X-Email", "X-Groups"):
            assert values(seen, name) == [], name
        await claim_gate.client.get("/health", headers=spoofed)
        seen = claim_gate.upstream.received[-1].headers
        for name in ("X-Tenant", "X-Role", "X-Email", "X-User-Id"):
            assert values(seen, name) == [], name

    @pytest.mark.parametrize("name", ["X_Tenant", "X.Tenant", "x_role", "X.Email"])
    async def test_spoofed_identity_headers_claim_names_spelled_with_punctuation_are_400(
            self, claim_gate: Gate, name: str) -> None:
        """A '_' or '.' spelling of a claim header (which a CGI-style upstream folds into the real name) is refused."""
        response = await claim_gate.client.get("/health", headers={name: "evil"})
        assert response.status_code == 400
        assert claim_gate.upstream.received == []

    async def test_identity_claims_that_cannot_be_sent_deny_with_bad_claims(self, claim_gate: Gate) -> None:
        """A claim with a CR/LF is 401 invalid_token, logged as bad_claims, and the upstream receives nothing."""
        token = user_token(email="alice@example.com\r\nX-Admin: yes")
        response = await claim_gate.client.get("/orders/7", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 401
        assert 'error="invalid_token"' in response.headers["www-authenticate"]
        assert claim_gate.upstream.received == []
        line = claim_gate.log_lines()[-1]
        assert (line["decision"], line["reason"], line["status"]) == ("deny", "bad_claims", 401)
        # The same token passes the route that drops X-Email.
        response = await claim_gate.client.get("/orders/admin", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 200


class TestStripHeaderPrefixes:
    @pytest.fixture
    async def prefix_gate(self, upstream: RecordingUpstream) -> AsyncIterator[Gate]:
        cfg = gate_config(upstream.url, proxy={"stripHeaders": ["X-Legacy-*", "X-Tenant"]})
        async for g in make_gate(upstream, cfg):
            yield g

    async def test_spoofed_identity_headers_strip_prefix_removes_every_name_under_it(self, prefix_gate: Gate) -> None:
        """Every name under a configured prefix is removed, in any case and repeated; names beside it are kept."""
        response = await prefix_gate.client.get("/orders/7", headers=[
            ("Authorization", f"Bearer {mint()}"), ("X-Legacy-User", "admin"), ("x-legacy-user", "root"),
            ("X-LEGACY-ROLE", "admin"), ("X-Legacy-", "x"), ("X-Legacy", "kept"), ("X-Legacyish", "kept"),
            ("X-Tenant", "evil")])
        assert response.status_code == 200
        seen = prefix_gate.upstream.received[-1].headers
        assert [k.lower() for k, _ in seen if k.lower().startswith("x-legacy-") or k.lower() == "x-tenant"] == []
        assert values(seen, "X-Legacy") == ["kept"]
        assert values(seen, "X-Legacyish") == ["kept"]

    @pytest.mark.parametrize("name", ["X_Legacy_User", "X.Legacy.Role", "x-legacy_user", "X_Tenant"])
    async def test_spoofed_identity_headers_strip_prefix_punctuation_spellings_are_400(
            self, prefix_gate: Gate, name: str) -> None:
        """A spelling with '_' or '.' that folds under the prefix is refused, as for exact names."""
        response = await prefix_gate.client.get("/health", headers={name: "admin"})
        assert response.status_code == 400
        assert prefix_gate.upstream.received == []

    def test_spoofed_identity_headers_strip_prefix_in_the_guard_and_the_plan(self) -> None:
        """Both the parse guard and the header plan see the configured prefix (folded to lower case)."""
        cfg = gate_config(proxy={"stripHeaders": ["X-Legacy-*"]})
        guard = ParseGuard(cfg.proxy.limits, cfg.proxy.identity, cfg.proxy.strip_headers, cfg.routes)
        assert "x-legacy-anything" in guard.protected and "x-legacy" not in guard.protected
        assert "x-legacy-anything" in HeaderPlan(cfg).protected


class TestClaimHeadersOnWebSockets:
    @pytest.fixture
    async def ws_gate(self) -> AsyncIterator[tuple[str, EchoUpstream, io.StringIO]]:
        upstream = EchoUpstream()
        app = web.Application()
        app.router.add_get("/{tail:.*}", upstream.handle)
        runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.5)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        upstream.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        log = io.StringIO()
        gate = ProxyApp(claim_config(upstream.url), default_keys(), FakeRevocation(), ProxyMetrics(CollectorRegistry()),
                        log_stream=log, now=Clock(NOW))
        await gate.startup()
        try:
            async with serve(gate) as url:
                yield url, upstream, log
        finally:
            await gate.shutdown()
            await runner.cleanup()

    async def test_identity_claims_reach_a_websocket_upstream_and_bad_ones_refuse_the_handshake(
            self, ws_gate: tuple[str, EchoUpstream, io.StringIO]) -> None:
        """The handshake goes through the same plan: claim headers (not the client's copies) reach the upstream;
        a claim that cannot be sent refuses the upgrade with 401 and the upstream sees no handshake."""
        url, upstream, log = ws_gate
        async with aiohttp.ClientSession() as session:
            headers = {"Authorization": f"Bearer {user_token()}", "X-Tenant": "t-evil"}
            async with session.ws_connect(f"{url}/orders/feed", headers=headers) as ws:
                await ws.send_str("hi")
                assert (await ws.receive(timeout=5)).data == "echo:hi"
            [handshake] = upstream.handshakes
            assert handshake["x-tenant"] == ["t-7"]
            assert handshake["x-groups"] == ["eng,ops"]
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await session.ws_connect(f"{url}/orders/feed", headers={
                    "Authorization": f"Bearer {user_token(groups=['a,b'])}"})
            assert refused.value.status == 401
        assert len(upstream.handshakes) == 1
        assert json.loads(log.getvalue().splitlines()[-1])["reason"] == "bad_claims"
