"""The refresh_token grant (spec §3.6, §9 D3, D5): lifetimes, idle window, rotation, reuse detection."""

from __future__ import annotations

from typing import Any

import jwt

from tests.authz.oauth_kit import REDIRECT, WEB_SECRET, Core, pkce_pair, read_form

WEB = ("web", WEB_SECRET)


async def refresh(core: Core, token: str, auth: tuple[str, str] | None = WEB, **extra: str) -> Any:
    data = {"grant_type": "refresh_token", "refresh_token": token, **extra}
    if auth is None:
        data["client_id"] = "spa"
    return await core.token(data, auth=auth)


async def spa_tokens(core: Core) -> dict[str, Any]:
    verifier, challenge = pkce_pair()
    url = (f"/oauth2/orders/v1/authorize?client_id=spa&response_type=code&redirect_uri={REDIRECT}"
           f"&scope=offline_access+orders:read&state=s&code_challenge={challenge}&code_challenge_method=S256")
    page = await core.client.get(url)
    action, fields = read_form(page.text)
    done = await core.client.post(action, data={**fields, "username": "alice@example.com",
                                                "password": "correct-horse-battery"})
    code = done.headers["location"].split("code=")[1].split("&")[0]
    response = await core.token({"grant_type": "authorization_code", "code": code, "client_id": "spa",
                                 "redirect_uri": REDIRECT, "code_verifier": verifier})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


class TestRefresh:
    async def test_refresh_returns_new_access_token_with_the_original_rule_lifetime(self, core: Core) -> None:
        """Spec §9 D3: no re-evaluation; lifetimes from the rule in effect when the flow started."""
        first = (await core.password("offline_access orders:read")).json()

        def shorten(doc: dict[str, Any]) -> dict[str, Any]:
            doc["policies"][1]["rules"][0]["actions"]["token"]["accessTokenLifetimeMinutes"] = 5
            return doc

        await core.update_server("orders", shorten)
        core.clock.advance(60)
        second = (await refresh(core, first["refresh_token"])).json()
        claims = jwt.decode(second["access_token"], options={"verify_signature": False})
        assert claims["exp"] - claims["iat"] == 15 * 60 == second["expires_in"]
        assert second["refresh_token"] == first["refresh_token"]  # STATIC by default

    async def test_refresh_token_is_stored_hashed(self, core: Core) -> None:
        """Only a hash of the opaque value is kept."""
        body = (await core.password("offline_access orders:read")).json()
        stored = core.store.list_refresh_tokens(client_id="web")
        assert len(stored) == 1 and body["refresh_token"] not in str(stored)
        assert stored[0].id.startswith("RT.")

    async def test_refresh_scopes_must_be_a_subset(self, core: Core) -> None:
        """Asking for more than the original scopes → access_denied refresh_scopes_denied."""
        body = (await core.password("offline_access orders:read")).json()
        narrower = await refresh(core, body["refresh_token"], scope="orders:read")
        assert narrower.json()["scope"] == "orders:read"
        wider = await refresh(core, body["refresh_token"], scope="orders:read orders:write")
        assert wider.json() == {"error": "access_denied", "error_description":
                                "Some of the scopes requested for the refresh request were not granted in the original "
                                "authorize request. Denied scopes: [orders:write]."}

    async def test_refresh_token_is_bound_to_its_client(self, core: Core) -> None:
        """Another client cannot use it."""
        body = (await core.password("offline_access orders:read")).json()
        response = await refresh(core, body["refresh_token"], auth=None)
        assert response.json() == {"error": "invalid_grant", "error_description": "The refresh token is invalid or expired."}

    async def test_idle_window_revokes_unused_token_and_each_use_resets_it(self, core: Core) -> None:
        """Not used within refreshTokenWindowMinutes (60) → invalid; each use resets the window."""
        body = (await core.password("offline_access orders:read")).json()
        core.clock.advance(50 * 60)
        assert (await refresh(core, body["refresh_token"])).status_code == 200
        core.clock.advance(50 * 60)
        assert (await refresh(core, body["refresh_token"])).status_code == 200
        core.clock.advance(61 * 60)
        assert (await refresh(core, body["refresh_token"])).json()["error"] == "invalid_grant"

    async def test_absolute_lifetime(self, core: Core) -> None:
        """refreshTokenLifetimeMinutes (1440) bounds the token even when used within the window."""
        body = (await core.password("offline_access orders:read")).json()
        for _ in range(24):
            core.clock.advance(59 * 60)
            if (await refresh(core, body["refresh_token"])).status_code != 200:
                break
        core.clock.advance(59 * 60)
        assert (await refresh(core, body["refresh_token"])).json()["error"] == "invalid_grant"

    async def test_suspended_user_refresh_fails(self, core: Core) -> None:
        """Spec §9 D5: the token is kept but fails while the user is not ACTIVE."""
        body = (await core.password("offline_access orders:read")).json()
        obj = core.store.get_object("user", "alice")
        assert obj is not None
        with core.store.transaction() as tx:
            tx.put_object("user", "alice", {**obj.document, "status": "SUSPENDED"}, "config")
        assert (await refresh(core, body["refresh_token"])).json()["error"] == "invalid_grant"
        with core.store.transaction() as tx:
            tx.put_object("user", "alice", obj.document, "config")
        assert (await refresh(core, body["refresh_token"])).status_code == 200

    async def test_watermark_revokes_refresh_tokens(self, core: Core) -> None:
        """A user watermark (implicit revocation) also revokes refresh tokens issued before it."""
        body = (await core.password("offline_access orders:read")).json()
        with core.store.transaction() as tx:
            tx.append_change("watermark", {"scope": "user", "key": "alice", "before_seq": tx.current_token_seq(),
                                           "exp": core.clock() + 86400})
        await core.ctx.refresh_revocations()
        assert (await refresh(core, body["refresh_token"])).json()["error"] == "invalid_grant"


class TestRotation:
    async def test_rotation_returns_a_new_token_and_keeps_the_chain_expiry(self, core: Core) -> None:
        """ROTATE: each refresh returns a new refresh token; expiry is inherited from the first."""
        first = await spa_tokens(core)
        second = (await refresh(core, first["refresh_token"], auth=None)).json()
        assert second["refresh_token"] != first["refresh_token"]
        chain = core.store.list_refresh_tokens(client_id="spa")
        assert len({t.chain_id for t in chain}) == 1 and len({t.expires_at for t in chain}) == 1

    async def test_reuse_of_a_rotated_token_revokes_the_chain(self, core: Core) -> None:
        """Reuse after the grace period → detect_reuse; the newest refresh token and its access tokens die."""
        first = await spa_tokens(core)
        second = (await refresh(core, first["refresh_token"], auth=None)).json()
        core.clock.advance(1)
        reused = await refresh(core, first["refresh_token"], auth=None)
        assert reused.json()["error"] == "invalid_grant"
        assert (await refresh(core, second["refresh_token"], auth=None)).json()["error"] == "invalid_grant"
        introspected = await core.client.post("/oauth2/orders/v1/introspect",
                                              data={"token": second["access_token"], "client_id": "spa"})
        assert introspected.json() == {"active": False}
        event = core.events("app.oauth2.as.token.detect_reuse")[-1]
        assert event["outcome"]["result"] == "FAILURE"
        assert core.refreshed  # the revocation state was refreshed before answering
