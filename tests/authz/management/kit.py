"""An in-process core with the management API: a real SqliteStore seeded the way the config file seeds
it, the real system log and revocation state, a pinned clock, and an httpx client over ASGI."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from starlette.applications import Starlette

from authz.context import CoreContext
from authz.documents import dump
from authz.errors import ScopegateError
from authz.jti import make_jti
from authz.management import management_routes
from authz.responses import handle_scopegate_error
from authz.revocation import RevocationState
from authz.store.base import LogQuery, RefreshToken, Store
from authz.store.sqlite import SqliteStore
from authz.syslog import SystemLog
from config.schema import AppConfig, AuthorizationServerConfig, GroupConfig, ScopegateConfig, UserConfig
from tests.clock import Clock

ISSUER = "http://core.test"
ADMIN_TOKEN = "admin-token-0123456789abcdef"
SECOND_ADMIN_TOKEN = "second-admin-token-0123456789"

SERVER: dict[str, Any] = {
    "id": "orders", "name": "Orders API", "audiences": ["https://api.example.com/orders"],
    "scopes": [{"name": "orders:read", "default": True}, {"name": "orders:write"}],
    "policies": [{"id": "00porders0000000001", "name": "Services", "priority": 1,
                  "conditions": {"clients": {"include": ["svc"]}},
                  "rules": [{"id": "0prorders0000000001", "name": "Read", "priority": 1,
                             "conditions": {"grantTypes": {"include": ["client_credentials"]},
                                            "scopes": {"include": ["orders:read"]}},
                             "actions": {"token": {"accessTokenLifetimeMinutes": 30}}}]}],
}
APPS: list[dict[str, Any]] = [
    {"clientId": "svc", "clientSecret": "svc-secret-0123456789", "name": "Service"},
    {"clientId": "web", "clientSecret": "web-secret-0123456789", "name": "Web",
     "grantTypes": ["authorization_code", "refresh_token", "password"], "redirectUris": ["https://app.test/cb"],
     "assignments": {"users": ["alice"], "groups": ["engineering"]}},
]
GROUPS: list[dict[str, Any]] = [{"id": "engineering", "name": "Engineering"}, {"id": "sales", "name": "Sales"}]
USERS: list[dict[str, Any]] = [
    {"id": "alice", "login": "alice@example.com", "groups": ["engineering"],
     "profile": {"firstName": "Alice", "lastName": "Doe", "email": "alice@example.com"}},
    {"id": "bob", "login": "bob@example.com", "groups": ["engineering"]},
    {"id": "dave", "login": "dave@example.com", "groups": ["sales"]},
]


def seed(store: Store) -> None:
    """The objects a config file would declare, written as ``authz.reconcile`` writes them."""
    with store.transaction() as tx:
        tx.put_object("authorization_server", "orders", dump(AuthorizationServerConfig.model_validate(SERVER)),
                      "config")
        for group in GROUPS:
            tx.put_object("group", group["id"], dump(GroupConfig.model_validate(group)), "config")
        for user in USERS:
            tx.put_object("user", user["id"], dump(UserConfig.model_validate(user)), "config")
        for app in APPS:
            tx.put_object("app", app["clientId"], dump(AppConfig.model_validate(app), {"client_secret"}), "config",
                          secret_hash="scrypt$stand-in")


@dataclass
class Api:
    ctx: CoreContext
    store: Store
    clock: Clock
    client: httpx.AsyncClient
    revocation: RevocationState
    syslog: SystemLog

    def events(self, event_type: str | None = None) -> list[dict[str, Any]]:
        records = self.store.query_logs(LogQuery(limit=1000))
        return [r.event for r in records if event_type is None or r.event["eventType"] == event_type]

    def mint(self, as_id: str = "orders", client_id: str = "web", user_id: str | None = "alice") -> dict[str, Any]:
        """The claims of an access token minted now (what the proxy would hand to ``is_revoked``)."""
        with self.store.transaction() as tx:
            seq = tx.allocate_token_seq()
        claims: dict[str, Any] = {"iss": f"{ISSUER}/oauth2/{as_id}", "jti": make_jti("AT", seq), "cid": client_id}
        if user_id is not None:
            claims["uid"] = user_id
        return claims

    def refresh_token(self, rt_id: str, as_id: str = "orders", client_id: str = "web",
                      user_id: str | None = "alice") -> RefreshToken:
        now = self.clock()
        with self.store.transaction() as tx:
            seq = tx.allocate_token_seq()
            token = RefreshToken(id=rt_id, token_hash=f"hash-{rt_id}", as_id=as_id, client_id=client_id,
                                 user_id=user_id, scopes=("offline_access",), issued_at=now, expires_at=now + 86400,
                                 window_seconds=3600, last_used_at=now, access_lifetime_seconds=900,
                                 chain_id=f"chain-{rt_id}", seq=seq)
            tx.put_refresh_token(token)
        return token

    def watermarks(self) -> list[dict[str, Any]]:
        return [c.data for c in self.store.changes_since(0) if c.kind == "watermark"]


def build_context(tmp_path: Path) -> tuple[CoreContext, Starlette, Clock]:
    """A seeded core context and the Starlette app serving the management API."""
    clock = Clock()
    cfg = ScopegateConfig.model_validate({"issuer": ISSUER, "adminTokens": [ADMIN_TOKEN, SECOND_ADMIN_TOKEN]})
    store = SqliteStore(f"sqlite:///{tmp_path / 'mgmt.db'}")
    seed(store)
    syslog = SystemLog(stream=None)
    revocation = RevocationState({f"{ISSUER}/oauth2/orders": "orders", f"{ISSUER}/oauth2/billing": "billing"},
                                 now=clock)

    async def refresh() -> None:
        revocation.apply(store.changes_since(revocation.last_seq))

    ctx = CoreContext(config=cfg, store=store, syslog=syslog, revocation=revocation, now=clock,
                      refresh_revocations=refresh)
    app = Starlette(routes=management_routes(ctx), exception_handlers={ScopegateError: handle_scopegate_error})
    return ctx, app, clock


async def build_api(tmp_path: Path) -> AsyncIterator[Api]:
    ctx, app, clock = build_context(tmp_path)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=ISSUER,
                                 headers={"Authorization": f"SSWS {ADMIN_TOKEN}"}) as client:
        yield Api(ctx, ctx.store, clock, client, ctx.revocation, ctx.syslog)
    ctx.store.close()
