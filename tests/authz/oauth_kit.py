"""An in-process core for the protocol tests: a real SqliteStore, the config written the way
``reconcile`` writes it, the real system log and revocation state, and an httpx client over ASGI."""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from starlette.applications import Starlette

from authz.context import CoreContext
from authz.errors import ScopegateError
from authz.oauth import oauth_routes
from authz.reconcile import reconcile
from authz.responses import handle_scopegate_error
from authz.revocation import RevocationState
from authz.store.base import LogQuery, Store
from authz.store.sqlite import SqliteStore
from authz.syslog import SystemLog
from config.loader import parse_config
from config.schema import ScopegateConfig
from tests.clock import Clock

ISSUER = "http://core.test"
SECRET = "svc-secret-0123456789"
WEB_SECRET = "web-secret-0123456789"
PASSWORD = "correct-horse-battery"
REDIRECT = "https://app.example.com/callback"

BASE_CONFIG: dict[str, Any] = {
    "issuer": ISSUER,
    "authorizationServers": [{
        "id": "orders", "name": "Orders API", "audiences": ["https://api.example.com/orders"],
        "scopes": [{"name": "orders:read", "default": True}, {"name": "orders:write"}, {"name": "orders:admin"}],
        "policies": [
            {"name": "Services", "priority": 1, "conditions": {"clients": {"include": ["svc"]}},
             "rules": [{"name": "Read write", "priority": 1,
                        "conditions": {"grantTypes": {"include": ["client_credentials"]},
                                       "scopes": {"include": ["orders:read", "orders:write"]}},
                        "actions": {"token": {"accessTokenLifetimeMinutes": 30}}}]},
            {"name": "People", "priority": 2, "conditions": {"clients": {"include": ["ALL_CLIENTS"]}},
             "rules": [{"name": "Engineers", "priority": 1,
                        "conditions": {"grantTypes": {"include": ["password", "authorization_code"]},
                                       "people": {"groups": {"include": ["engineering"]}},
                                       "scopes": {"include": ["openid", "profile", "email", "offline_access",
                                                              "orders:read", "orders:write"]}},
                        "actions": {"token": {"accessTokenLifetimeMinutes": 15, "refreshTokenLifetimeMinutes": 1440,
                                              "refreshTokenWindowMinutes": 60}}}]},
        ],
    }, {
        "id": "billing", "name": "Billing API", "audiences": ["https://api.example.com/billing"],
        "scopes": [{"name": "billing:read"}],
        "policies": [{"name": "All", "priority": 1, "rules": [
            {"name": "Any", "priority": 1, "conditions": {"grantTypes": {"include": ["client_credentials"]},
                                                          "scopes": {"include": ["*"]}}}]}],
    }],
    "apps": [
        {"clientId": "svc", "clientSecret": SECRET, "name": "Service", "grantTypes": ["client_credentials"]},
        {"clientId": "web", "clientSecret": WEB_SECRET, "name": "Web app",
         "grantTypes": ["authorization_code", "refresh_token", "password"], "redirectUris": [REDIRECT],
         "assignments": {"groups": ["engineering"], "users": ["dave"]}},
        {"clientId": "spa", "name": "SPA", "tokenEndpointAuthMethod": "none",
         "grantTypes": ["authorization_code", "refresh_token"], "redirectUris": [REDIRECT],
         "refreshToken": {"rotationType": "ROTATE", "leeway": 0},
         "assignments": {"users": ["alice"]}},
    ],
    "groups": [{"id": "engineering", "name": "Engineering"}, {"id": "sales", "name": "Sales"}],
    "users": [
        {"id": "alice", "login": "alice@example.com", "password": PASSWORD, "groups": ["engineering"],
         "profile": {"firstName": "Alice", "lastName": "Doe", "email": "alice@example.com"}},
        {"id": "bob", "login": "bob@example.com", "password": PASSWORD, "groups": ["sales"]},
        {"id": "dave", "login": "dave@example.com", "password": PASSWORD, "groups": ["sales"]},
        {"id": "carol", "login": "carol@example.com", "password": PASSWORD, "groups": ["engineering"],
         "status": "SUSPENDED"},
    ],
}


def rsa_key_pair() -> tuple[bytes, dict[str, Any]]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    numbers = key.public_key().public_numbers()

    def b64(n: int) -> str:
        return base64.urlsafe_b64encode(n.to_bytes((n.bit_length() + 7) // 8, "big")).rstrip(b"=").decode()

    return pem, {"kty": "RSA", "n": b64(numbers.n), "e": b64(numbers.e), "alg": "RS256", "use": "sig"}


@dataclass
class Core:
    ctx: CoreContext
    store: Store
    clock: Clock
    client: httpx.AsyncClient
    config: ScopegateConfig
    syslog: SystemLog
    revocation: RevocationState
    refreshed: list[int] = field(default_factory=list)

    def events(self, event_type: str | None = None) -> list[dict[str, Any]]:
        records = self.store.query_logs(LogQuery(limit=1000))
        return [r.event for r in records if event_type is None or r.event["eventType"] == event_type]

    async def token(self, data: dict[str, str], auth: tuple[str, str] | None = None, as_id: str = "orders",
                    **kwargs: Any) -> httpx.Response:
        if auth is not None:
            kwargs["auth"] = auth
        return await self.client.post(f"/oauth2/{as_id}/v1/token", data=data, **kwargs)

    async def cc(self, scope: str = "orders:read", client: tuple[str, str] = ("svc", SECRET),
                 as_id: str = "orders") -> httpx.Response:
        return await self.token({"grant_type": "client_credentials", "scope": scope}, auth=client, as_id=as_id)

    async def password(self, scope: str = "openid orders:read", username: str = "alice@example.com",
                       client: tuple[str, str] = ("web", WEB_SECRET)) -> httpx.Response:
        return await self.token({"grant_type": "password", "scope": scope, "username": username,
                                 "password": PASSWORD}, auth=client)

    async def update_server(self, as_id: str, mutate: Any) -> None:
        """Change an AS document in the store directly (no watermark), as a policy edit would be seen."""
        obj = self.store.get_object("authorization_server", as_id)
        assert obj is not None
        document = mutate(dict(obj.document))
        with self.store.transaction() as tx:
            tx.put_object("authorization_server", as_id, document, obj.origin)


def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


async def build_core(tmp_path: Path, document: dict[str, Any] | None = None) -> AsyncIterator[Core]:
    cfg = parse_config(yaml.safe_dump(document or BASE_CONFIG), "test.yaml", {})
    clock = Clock()
    store = SqliteStore(f"sqlite:///{tmp_path / 'core.db'}")
    reconcile(store, cfg, clock())
    syslog = SystemLog(stream=None)
    issuers = {cfg.issuer_for(s.id): s.id for s in cfg.authorization_servers}
    revocation = RevocationState(issuers, now=clock)
    revocation.apply(store.changes_since(0))
    core: Core

    async def refresh() -> None:
        revocation.apply(store.changes_since(revocation.last_seq))
        core.refreshed.append(revocation.last_seq)

    ctx = CoreContext(config=cfg, store=store, syslog=syslog, revocation=revocation, now=clock,
                      refresh_revocations=refresh)
    app = Starlette(routes=oauth_routes(ctx), exception_handlers={ScopegateError: handle_scopegate_error})
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=ISSUER) as client:
        core = Core(ctx, store, clock, client, cfg, syslog, revocation)
        yield core
    store.close()


class _Inputs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.fields: dict[str, str] = {}
        self.action = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.action = values.get("action", "")
        if tag == "input" and values.get("type") == "hidden":
            self.fields[values["name"]] = values.get("value", "")


def read_form(html: str) -> tuple[str, dict[str, str]]:
    """The sign-in form's action and hidden fields, as a browser sees them."""
    parser = _Inputs()
    parser.feed(html)
    return parser.action, parser.fields


async def sign_in(browser: httpx.AsyncClient, authorize_url: str, username: str = "alice@example.com",
                  password: str = PASSWORD) -> httpx.Response:
    """Load the authorize page and submit the form like a browser (cookies kept by the client)."""
    page = await browser.get(authorize_url)
    assert page.status_code == 200, page.text
    action, fields = read_form(page.text)
    return await browser.post(action, data={**fields, "username": username, "password": password})
