"""Revocation races in the authorization core (issue 8 items 2 and 3), on SQLite and on PostgreSQL.

Item 2: a grant whose checks ran before a deactivation (user, client, group assignment) but whose tokens
are minted after it must not mint, or else those tokens sit above the deactivation's watermark and stay
valid for their whole lifetime. Item 3: a refresh that read its refresh token before ``/revoke`` must not
write it back (STATIC) or extend the chain (ROTATE) after the revocation.

Each race is forced once deterministically, through the grant's test-only pause point
(``authz.oauth.issue.pause_hook``: the revocation commits while the grant waits between its first read
and its transaction), and then hammered with real threads for a bounded number of rounds. The oracle is
the real revocation state fed by the real ``FeedPoller``: after a revocation has returned, no token
that a grant handed out may be accepted.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Iterator
from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import yaml
from starlette.applications import Starlette

from authz.context import CoreContext
from authz.errors import ScopegateError
from authz.feed import FeedPoller
from authz.management import management_routes
from authz.oauth import issue, oauth_routes
from authz.reconcile import reconcile
from authz.responses import handle_scopegate_error
from authz.revocation import RevocationState
from authz.store.base import Store, open_store
from authz.syslog import SystemLog
from config.loader import parse_config
from tests.authz.oauth_kit import BASE_CONFIG, PASSWORD, SECRET, WEB_SECRET

POSTGRES_URL = os.environ.get("SCOPEGATE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
ADMIN = "admin-token-0123456789abcdef"
ROT_SECRET = "rot-secret-0123456789"
ROUNDS = 2
HAMMERS = 4
INVALID_REFRESH = "The refresh token is invalid or expired."


def _config() -> dict[str, Any]:
    document = deepcopy(BASE_CONFIG)
    # Only what the races need: every server costs RSA keys and every secret a scrypt hash at setup.
    document["authorizationServers"] = [s for s in document["authorizationServers"] if s["id"] == "orders"]
    document["users"] = [u for u in document["users"] if u["id"] in ("alice", "dave")]
    document["apps"] = [a for a in document["apps"] if a["clientId"] != "spa"]
    document["adminTokens"] = [ADMIN]
    # A deactivated client's grants fail client authentication; the back-off must not end the stress rounds.
    document["core"] = {"clientAuthFailureLimit": 0, "clientAuthFailureSourceLimit": 0}
    # A confidential client with rotating refresh tokens (the kit's rotating client is public and needs the
    # browser flow); a grace period long enough that concurrent refreshes of one token all count as in grace.
    document["apps"].append({"clientId": "rot", "clientSecret": ROT_SECRET, "name": "Rotating",
                             "grantTypes": ["password", "refresh_token"],
                             "refreshToken": {"rotationType": "ROTATE", "leeway": 60},
                             "assignments": {"groups": ["engineering"]}})
    return document


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'races.db'}"
        return
    import psycopg

    schema = f"test_{uuid.uuid4().hex[:16]}"
    try:
        admin = psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=5)
    except psycopg.Error as exc:
        pytest.fail(f"PostgreSQL at {POSTGRES_URL} is unreachable ({exc})", pytrace=False)
    try:
        yield f"{POSTGRES_URL}?schema={schema}"
    finally:
        admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        admin.close()


@dataclass
class Core:
    ctx: CoreContext
    store: Store
    client: httpx.AsyncClient
    revocation: RevocationState
    poller: FeedPoller

    async def token(self, data: dict[str, str], auth: tuple[str, str]) -> httpx.Response:
        return await self.client.post("/oauth2/orders/v1/token", data=data, auth=auth)

    async def password(self, client: tuple[str, str] = ("web", WEB_SECRET),
                       scope: str = "orders:read offline_access") -> httpx.Response:
        return await self.token({"grant_type": "password", "username": "alice@example.com", "password": PASSWORD,
                                 "scope": scope}, client)

    async def cc(self) -> httpx.Response:
        return await self.token({"grant_type": "client_credentials", "scope": "orders:read"}, ("svc", SECRET))

    async def refresh(self, refresh_token: str, client: tuple[str, str]) -> httpx.Response:
        return await self.token({"grant_type": "refresh_token", "refresh_token": refresh_token}, client)

    async def revoke(self, refresh_token: str, client: tuple[str, str]) -> httpx.Response:
        return await self.client.post("/oauth2/orders/v1/revoke", auth=client,
                                      data={"token": refresh_token, "token_type_hint": "refresh_token"})

    async def admin(self, method: str, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
        response = await self.client.request(method, path, headers={"Authorization": f"SSWS {ADMIN}"},
                                             json=body if body is not None else {} if method == "PUT" else None)
        assert response.status_code in (200, 201, 204), response.text
        return response

    def accepted(self, access_token: str) -> bool:
        """What a proxy in any process would decide once it has read the feed: is the token still good?"""
        self.poller.poll_once()
        claims = jwt.decode(access_token, options={"verify_signature": False})
        return not self.revocation.is_revoked(claims)


@pytest.fixture
async def core(store_url: str) -> AsyncIterator[Core]:
    cfg = parse_config(yaml.safe_dump(_config()), "races.yaml", {})
    # These tests are about interleavings, not deadlines: a 1 s storeTimeout tripped (503) under the chain-lock
    # waits of the stress rounds on a CI machine at load average 10+.
    store = open_store(store_url, timeout=30)
    reconcile(store, cfg, time.time())
    revocation = RevocationState({cfg.issuer_for(s.id): s.id for s in cfg.authorization_servers})
    poller = FeedPoller(store, revocation, interval=60, log_stream=None)

    async def refresh() -> None:
        await asyncio.to_thread(poller.poll_once)

    ctx = CoreContext(config=cfg, store=store, syslog=SystemLog(stream=None), revocation=revocation,
                      refresh_revocations=refresh)
    app = Starlette(routes=[*oauth_routes(ctx), *management_routes(ctx)],
                    exception_handlers={ScopegateError: handle_scopegate_error})
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=cfg.issuer) as client:
        yield Core(ctx, store, client, revocation, poller)
    issue.pause_hook = None
    store.close()


class Pause:
    """Holds the first grant that reaches ``point`` until the test has committed its revocation."""

    def __init__(self, point: str) -> None:
        self.point = point
        self.reached = threading.Event()
        self.go = threading.Event()
        self._taken = False
        self._lock = threading.Lock()

    def __call__(self, point: str) -> None:
        if point != self.point:
            return
        with self._lock:
            if self._taken:
                return
            self._taken = True
        self.reached.set()
        assert self.go.wait(20), "the test never released the paused grant"

    async def around(self, grant: Awaitable[httpx.Response], revocation: Awaitable[Any]) -> httpx.Response:
        """Start ``grant``, let ``revocation`` commit while the grant is paused, then let the grant finish."""
        issue.pause_hook = self
        task = asyncio.ensure_future(grant)
        try:
            reached = await asyncio.to_thread(self.reached.wait, 20)
            assert reached, f"the grant never reached {self.point}"
            await revocation
        finally:
            self.go.set()
            issue.pause_hook = None
        return await task


def access_tokens(responses: list[httpx.Response]) -> list[str]:
    return [r.json()["access_token"] for r in responses if r.status_code == 200]


# --- item 2: grants in flight vs implicit revocation --------------------------------------------------


async def test_grant_in_flight_after_user_deactivation_is_refused(core: Core) -> None:
    """The password grant checked alice (and her password) before the deactivation committed, and reaches
    its transaction after: it must refuse, since its token would sit above the user's watermark."""
    response = await Pause("password.before_mint").around(
        core.password(), core.admin("POST", "/api/v1/users/alice/lifecycle/deactivate"))
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_grant"
    assert response.json()["error_description"] == "The credentials provided were invalid."


async def test_grant_in_flight_after_app_deactivation_is_refused(core: Core) -> None:
    response = await Pause("client_credentials.before_mint").around(
        core.cc(), core.admin("POST", "/api/v1/apps/svc/lifecycle/deactivate"))
    assert response.status_code == 401, response.text
    assert response.json()["error"] == "invalid_client"


async def test_grant_in_flight_after_server_deactivation_is_refused(core: Core) -> None:
    response = await Pause("client_credentials.before_mint").around(
        core.cc(), core.admin("POST", "/api/v1/authorizationServers/orders/lifecycle/deactivate"))
    assert response.status_code == 400, response.text
    assert response.json() == {"error": "invalid_request", "error_description": "The authorization server id is invalid."}


async def test_grant_in_flight_after_group_unassignment_is_refused(core: Core) -> None:
    """Alice reaches the web client only through the engineering group; the group is unassigned while her
    password grant (which would also mint a refresh token) is in flight."""
    response = await Pause("password.before_mint").around(
        core.password(), core.admin("DELETE", "/api/v1/apps/web/groups/engineering"))
    assert response.status_code == 400, response.text
    assert response.json() == {"error": "access_denied",
                               "error_description": "User is not assigned to the client application."}


async def test_refresh_in_flight_after_group_unassignment_is_refused(core: Core) -> None:
    first = await core.password()
    assert first.status_code == 200, first.text
    response = await Pause("refresh_token.before_mint").around(
        core.refresh(first.json()["refresh_token"], ("web", WEB_SECRET)),
        core.admin("DELETE", "/api/v1/apps/web/groups/engineering"))
    assert response.status_code == 400, response.text
    assert response.json() == {"error": "invalid_grant", "error_description": INVALID_REFRESH}
    assert not core.accepted(first.json()["access_token"])


async def test_refresh_after_unassignment_without_watermark_is_refused(core: Core) -> None:
    """Refresh re-checks the assignment itself (spec §9 D3's alternative), not only the token's status: an
    assignment removed by a write that marked nothing (as another process's change in flight would be)
    still stops the chain."""
    first = await core.password()
    assert first.status_code == 200, first.text
    app = core.store.get_object("app", "web")
    assert app is not None
    document = {**app.document, "assignments": {"users": ["dave"], "groups": []}}
    with core.store.transaction() as tx:
        tx.put_object("app", "web", document, app.origin)
    response = await core.refresh(first.json()["refresh_token"], ("web", WEB_SECRET))
    assert response.status_code == 400, response.text
    assert response.json() == {"error": "invalid_grant", "error_description": INVALID_REFRESH}


async def test_rotated_refresh_token_in_grace_after_server_change_in_a_lagging_process_is_refused(core: Core) -> None:
    """A rotated refresh token still refreshes within its grace period. A configuration change marks the
    tokens its watermark covers REVOKED, the rotated ones included, so that a process whose change feed
    lags behind (its revocation state does not have the watermark yet) refuses it as well."""
    first = await core.password(("rot", ROT_SECRET))
    assert first.status_code == 200, first.text
    rotated = first.json()["refresh_token"]
    assert (await core.refresh(rotated, ("rot", ROT_SECRET))).status_code == 200
    lagging = CoreContext(config=core.ctx.config, store=core.store, syslog=SystemLog(stream=None),
                          revocation=RevocationState({core.ctx.issuer_for("orders"): "orders"}))
    lagging.revocation.apply(core.store.changes_since(0))
    await core.admin("POST", "/api/v1/authorizationServers/orders/scopes", {"name": "orders:audit"})
    app = Starlette(routes=oauth_routes(lagging), exception_handlers={ScopegateError: handle_scopegate_error})
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=core.ctx.config.issuer) as other:
        response = await other.post("/oauth2/orders/v1/token", auth=("rot", ROT_SECRET),
                                    data={"grant_type": "refresh_token", "refresh_token": rotated})
    assert response.status_code == 400, response.text
    assert response.json() == {"error": "invalid_grant", "error_description": INVALID_REFRESH}


@pytest.mark.parametrize("target", ["user", "app", "group"])
async def test_grant_in_flight_after_deactivation_stress(core: Core, target: str) -> None:
    """Real threads: password grants (and client_credentials grants) hammer /token while alice, the
    service client or alice's group assignment goes away. Afterwards every access token handed out must be
    refused by the revocation state: it was either minted before the change (its watermark covers it) or
    refused at minting."""
    if target == "user":
        revoke, restore = ("POST", "/api/v1/users/alice/lifecycle/deactivate"), (
            "POST", "/api/v1/users/alice/lifecycle/activate")
    elif target == "app":
        revoke, restore = ("POST", "/api/v1/apps/svc/lifecycle/deactivate"), (
            "POST", "/api/v1/apps/svc/lifecycle/activate")
    else:
        revoke, restore = ("DELETE", "/api/v1/apps/web/groups/engineering"), (
            "PUT", "/api/v1/apps/web/groups/engineering")
    grant = core.cc if target == "app" else core.password
    for round_ in range(ROUNDS):
        warm = await grant()  # every cache warm, so that only the race differs between rounds
        assert warm.status_code == 200, warm.text

        async def hammer() -> list[httpx.Response]:
            return [await grant() for _ in range(3)]

        async def change(delay: float) -> None:
            await asyncio.sleep(delay)
            await core.admin(*revoke)

        results = await asyncio.gather(*(hammer() for _ in range(HAMMERS)), change(0.02 + 0.03 * round_))
        minted = [token for batch in results[:-1] if isinstance(batch, list) for token in access_tokens(batch)]
        minted.append(warm.json()["access_token"])
        still_accepted = [t for t in minted if core.accepted(t)]
        assert still_accepted == [], f"round {round_}: {len(still_accepted)} of {len(minted)} tokens outlived the change"
        refresh_tokens = [r.json()["refresh_token"] for batch in results[:-1] if isinstance(batch, list)
                          for r in batch if r.status_code == 200 and "refresh_token" in r.json()]
        for value in refresh_tokens:
            again = await core.refresh(value, ("web", WEB_SECRET))
            assert again.status_code == 400, again.text
        await core.admin(*restore)


# --- item 3: refresh vs /revoke ----------------------------------------------------------------------


@pytest.mark.parametrize("client", [("web", WEB_SECRET), ("rot", ROT_SECRET)], ids=["static", "rotate"])
async def test_refresh_revoke_race_forced(core: Core, client: tuple[str, str]) -> None:
    """The refresh read its token (ACTIVE) before /revoke committed and writes after: it must find the
    chain REVOKED, mint nothing, and leave the chain unusable."""
    first = await core.password(client)
    assert first.status_code == 200, first.text
    value = first.json()["refresh_token"]
    response = await Pause("refresh_token.before_mint").around(core.refresh(value, client), core.revoke(value, client))
    assert response.status_code == 400, response.text
    assert response.json() == {"error": "invalid_grant", "error_description": INVALID_REFRESH}
    again = await core.refresh(value, client)
    assert again.status_code == 400, again.text
    assert not core.accepted(first.json()["access_token"])
    assert {rt.status for rt in core.store.list_refresh_tokens(client_id=client[0])} == {"REVOKED"}


@pytest.mark.parametrize("client", [("web", WEB_SECRET), ("rot", ROT_SECRET)], ids=["static", "rotate"])
async def test_refresh_admin_revoke_race_forced(core: Core, client: tuple[str, str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The same race against the admin API's revocation of a refresh token (spec §1.8): the paused refresh
    is let go at the moment the admin request reads the chain, and the admin request then waits (up to a
    second) for it. Reading the chain before the revoking transaction, the admin revoked the chain as it
    was, and the refresh's new token stayed live; read under the chain's lock, the refresh waits instead."""
    first = await core.password(client)
    assert first.status_code == 200, first.text
    value = first.json()["refresh_token"]
    [rt] = core.store.list_refresh_tokens(client_id=client[0])
    pause = Pause("refresh_token.before_mint")
    issue.pause_hook = pause
    refreshing = asyncio.ensure_future(core.refresh(value, client))
    refreshed_done = threading.Event()
    refreshing.add_done_callback(lambda _: refreshed_done.set())
    real_list = core.store.list_refresh_tokens

    def chain_read(**filters: Any) -> list[Any]:
        result = real_list(**filters)
        if filters.get("chain_id") is not None and not pause.go.is_set():
            pause.go.set()
            refreshed_done.wait(1.0)
        return result

    try:
        assert await asyncio.to_thread(pause.reached.wait, 20)
        monkeypatch.setattr(core.store, "list_refresh_tokens", chain_read)
        await core.admin("DELETE", f"/api/v1/authorizationServers/orders/clients/{client[0]}/tokens/{rt.id}")
    finally:
        pause.go.set()
        issue.pause_hook = None
    refreshed = await refreshing
    monkeypatch.setattr(core.store, "list_refresh_tokens", real_list)
    minted = [first.json()["access_token"], *access_tokens([refreshed])]
    assert [t for t in minted if core.accepted(t)] == []
    handed_out = {value, *([refreshed.json().get("refresh_token", value)] if refreshed.status_code == 200 else [])}
    for refresh_token in handed_out:
        again = await core.refresh(refresh_token, client)
        assert again.status_code == 400, again.text
    assert {rt.status for rt in core.store.list_refresh_tokens(client_id=client[0])} == {"REVOKED"}


@pytest.mark.parametrize("client", [("web", WEB_SECRET), ("rot", ROT_SECRET)], ids=["static", "rotate"])
async def test_refresh_revoke_race_stress(core: Core, client: tuple[str, str]) -> None:
    """Real threads: refreshes of one chain hammer /token while /revoke of its refresh token runs. Once
    /revoke has returned, no refresh token the race handed out refreshes again, and no access token minted
    from the chain is accepted."""
    for round_ in range(ROUNDS):
        first = await core.password(client)
        assert first.status_code == 200, first.text
        value = first.json()["refresh_token"]

        async def hammer(value: str) -> list[httpx.Response]:
            return [await core.refresh(value, client) for _ in range(3)]

        async def revoke(value: str, delay: float) -> httpx.Response:
            await asyncio.sleep(delay)
            return await core.revoke(value, client)

        results = await asyncio.gather(*(hammer(value) for _ in range(HAMMERS)),
                                       revoke(value, 0.01 + 0.02 * round_))
        revoked = results[-1]
        assert isinstance(revoked, httpx.Response) and revoked.status_code == 200
        batches = [batch for batch in results[:-1] if isinstance(batch, list)]
        minted = [first.json()["access_token"], *(t for batch in batches for t in access_tokens(batch))]
        still_accepted = [t for t in minted if core.accepted(t)]
        assert still_accepted == [], f"round {round_}: {len(still_accepted)} of {len(minted)} tokens outlived /revoke"
        handed_out = {value, *(r.json()["refresh_token"] for batch in batches for r in batch if r.status_code == 200)}
        for refresh_token in handed_out:
            again = await core.refresh(refresh_token, client)
            assert again.status_code == 400, again.text
