"""Minting: one grant decision becomes tokens, their records and their events, in one transaction."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from authz.clientauth import AUTH_FAILED, UNKNOWN_CLIENT, AuthenticatedClient, invalid_client
from authz.context import CoreContext
from authz.errors import OAuthError
from authz.jti import make_jti
from authz.keys import active_signing_key
from authz.model import App, User, get_app, get_server, get_user
from authz.oauth.audit import Audit, token_target
from authz.oauth.common import protocol_server
from authz.passwords import token_hash
from authz.policy import format_list
from authz.store.base import IssuedToken, RefreshToken, SigningKey, StoreTx
from authz.tokens import (
    ACCESS_TOKEN_TYP,
    ID_TOKEN_LIFETIME,
    AccessTokenRequest,
    access_token_claims,
    custom_claims,
    id_token_claims,
    new_opaque,
    sign,
)
from config.schema import AuthorizationServerConfig

WATERMARK_FREE = 0

pause_hook: Callable[[str], None] | None = None
"""Test-only: called with a point's name where a grant has done its checks and is about to write, so that a
race test can commit a revocation exactly there (issue 8). Always None in production."""


def pause(point: str) -> None:
    hook = pause_hook
    if hook is not None:
        hook(point)


@dataclass(frozen=True)
class Grant:
    """What the policy (or the stored flow) decided: who gets which scopes, with which lifetimes."""

    server: AuthorizationServerConfig
    app: App
    user: User | None
    scopes: tuple[str, ...]
    grant_type: str
    access_lifetime: int
    refresh_lifetime: int = 0
    """Seconds; 0 is unlimited (spec §1.5)."""
    refresh_window: int = 7 * 24 * 3600
    policy_id: str | None = None
    rule_id: str | None = None
    auth_time: int | None = None
    nonce: str | None = None


@dataclass
class Minted:
    body: dict[str, Any]
    access_jti: str
    jtis: list[str] = field(default_factory=list)
    refresh: RefreshToken | None = None


@dataclass(frozen=True)
class CurrentState:
    """The server, client and user of a grant as committed when its tokens are minted."""

    server: AuthorizationServerConfig
    app: App
    user: User | None


def unauthorized_client(app: App) -> OAuthError:
    """Spec §9 D6: a known grant type the client is not configured for."""
    return OAuthError("unauthorized_client", "The client is not authorized to use the provided grant type. "
                      f"Configured grant types: {format_list(app.config.grant_types)}.", reason="unauthorized_client")


def current_principal(ctx: CoreContext, tx: StoreTx, as_id: str, client: AuthenticatedClient,
                      user_id: str | None, grant_type: str) -> CurrentState:
    """Inside the minting transaction: re-read the server, the client and the user under ``hold_objects``.

    A grant's checks ran on what it read earlier; a deactivation (or any change that writes a watermark)
    committed since then has a watermark older than the tokens about to be minted, so it would not cover
    them (issue 8 item 2). Under the lock the change either committed already, and is seen here, or waits
    for this commit, and its watermark then covers these tokens. The client must still be ACTIVE, hold the
    credentials it authenticated with and allow the grant type; the caller decides on the returned objects
    (assignments, policies) and checks the user.
    """
    tx.hold_objects()
    server = protocol_server(get_server(ctx.store, as_id))
    app = get_app(ctx.store, client.client_id)
    basic = client.method == "client_secret_basic"
    if app is None or not app.is_active:
        raise invalid_client(UNKNOWN_CLIENT, basic=basic, reason="client_not_active")
    before, now = client.app.config, app.config
    if (app.secret_hash != client.app.secret_hash or now.token_endpoint_auth_method != before.token_endpoint_auth_method
            or now.jwks != before.jwks):
        raise invalid_client(AUTH_FAILED, basic=basic, reason="client_credentials_changed")
    if grant_type not in now.grant_types:
        raise unauthorized_client(app)
    user = get_user(ctx.store, user_id) if user_id is not None else None
    return CurrentState(server, app, user)


def wants_refresh(grant: Grant) -> bool:
    """Spec §4.3: refresh tokens only for authorization_code, password (and refresh_token) with
    offline_access; the app must also be allowed the refresh_token grant to use one."""
    return ("offline_access" in grant.scopes and grant.grant_type in ("authorization_code", "password")
            and "refresh_token" in grant.app.config.grant_types)


def new_refresh_token(tx: StoreTx, grant: Grant, now: float, *, chain_id: str | None = None,
                      expires_at: float | None = None, inherit: bool = False) -> tuple[str, RefreshToken]:
    """A new opaque refresh token; only its hash is stored (DESIGN §5). Its id has the jti form
    (``RT.<seq>.…``) so that watermarks revoke refresh tokens exactly as they revoke access tokens."""
    value = new_opaque()
    seq = tx.allocate_token_seq()
    if not inherit:
        expires_at = now + grant.refresh_lifetime if grant.refresh_lifetime else None
    record = RefreshToken(
        id=make_jti("RT", seq), token_hash=token_hash(value), as_id=grant.server.id, client_id=grant.app.client_id,
        user_id=grant.user.id if grant.user else None, scopes=grant.scopes, issued_at=now, expires_at=expires_at,
        window_seconds=grant.refresh_window, last_used_at=now, access_lifetime_seconds=grant.access_lifetime,
        chain_id=chain_id or "chain." + secrets.token_urlsafe(12), policy_id=grant.policy_id, rule_id=grant.rule_id,
        auth_time=grant.auth_time, seq=seq)
    tx.put_refresh_token(record)
    return value, record


def mint(ctx: CoreContext, tx: StoreTx, keys: list[SigningKey], grant: Grant, audit: Audit, now: float, *,
         refresh_value: str | None = None, refresh: RefreshToken | None = None,
         new_refresh: bool | None = None) -> Minted:
    """Sign and record the access token (and ID and refresh tokens), and log one event per token type.

    ``refresh_value``/``refresh`` pass a refresh token the caller already holds (the refresh grant);
    otherwise one is created when the grant asks for offline access.
    """
    issuer = ctx.issuer_for(grant.server.id)
    key = active_signing_key(keys)  # spec §1.1: new tokens are signed with the ACTIVE key
    iat = int(now)
    events: list[dict[str, Any]] = []
    user_id = grant.user.id if grant.user else None
    if refresh is None and (new_refresh if new_refresh is not None else wants_refresh(grant)):
        refresh_value, refresh = new_refresh_token(tx, grant, now)
    at_seq = tx.allocate_token_seq()
    at_jti = make_jti("AT", at_seq)
    user_config = grant.user.config if grant.user else None
    request = AccessTokenRequest(issuer=issuer, audience=grant.server.resource, client_id=grant.app.client_id,
                                 scopes=grant.scopes, jti=at_jti, issued_at=iat, lifetime=grant.access_lifetime,
                                 user=user_config, auth_time=grant.auth_time,
                                 scope_claims=grant.server.access_token_claims)
    claims = access_token_claims(request, custom_claims(grant.server.claims, "RESOURCE", grant.scopes, user_config,
                                                        grant.app.client_id))
    access_token = sign(key, claims, ACCESS_TOKEN_TYP)
    tx.record_token(IssuedToken(jti=at_jti, as_id=grant.server.id, client_id=grant.app.client_id, user_id=user_id,
                                scopes=grant.scopes, issued_at=iat, expires_at=claims["exp"],
                                refresh_id=refresh.id if refresh else None, seq=at_seq))
    body: dict[str, Any] = {"token_type": "Bearer", "expires_in": grant.access_lifetime,
                            "access_token": access_token, "scope": " ".join(grant.scopes)}
    target = dict(expires=claims["exp"], scopes=grant.scopes, subject=claims["sub"], audience=grant.server.resource,
                  as_id=grant.server.id, client_id=grant.app.client_id, user_id=user_id)
    events.append(audit.event("app.oauth2.as.token.grant.access_token", now, message="OAuth2 access token is granted",
                              targets=[token_target("access_token", at_jti, **target)]))
    jtis = [at_jti]
    if refresh is not None and refresh_value is not None:
        body["refresh_token"] = refresh_value
        events.append(audit.event("app.oauth2.as.token.grant.refresh_token", now,
                                  message="OAuth2 refresh token is granted",
                                  targets=[token_target("refresh_token", refresh.id, **{**target, "expires": refresh.expires_at})],
                                  extra={"refresh_token_id": refresh.id}))
    if "openid" in grant.scopes and grant.user is not None:
        id_seq = tx.allocate_token_seq()
        id_jti = make_jti("ID", id_seq)
        id_claims = id_token_claims(issuer=issuer, client_id=grant.app.client_id, user=grant.user.config, jti=id_jti,
                                    issued_at=iat, auth_time=grant.auth_time or iat, scopes=grant.scopes,
                                    nonce=grant.nonce, access_token=access_token, idp=ctx.config.issuer)
        id_claims.update({k: v for k, v in custom_claims(grant.server.claims, "IDENTITY", grant.scopes,
                                                         grant.user.config, grant.app.client_id).items()
                          if k not in id_claims})
        body["id_token"] = sign(key, id_claims)
        tx.record_token(IssuedToken(jti=id_jti, as_id=grant.server.id, client_id=grant.app.client_id, user_id=user_id,
                                    scopes=grant.scopes, issued_at=iat, expires_at=iat + ID_TOKEN_LIFETIME,
                                    token_type="id_token", refresh_id=refresh.id if refresh else None, seq=id_seq))
        jtis.append(id_jti)
        events.append(audit.event("app.oauth2.as.token.grant.id_token", now, message="OAuth2 id token is granted",
                                  targets=[token_target("id_token", id_jti, **{**target, "expires": iat + ID_TOKEN_LIFETIME,
                                                                               "audience": grant.app.client_id})]))
    for event in events:
        event["debugContext"]["debugData"]["returned_token_types"] = " ".join(
            t for t in ("access_token", "refresh_token", "id_token") if t in body)
        ctx.syslog.record(tx, event)
    return Minted(body, at_jti, jtis, refresh)


def revoke_refresh_chain(ctx: CoreContext, tx: StoreTx, chain_id: str, now: float) -> list[str]:
    """Revoke every refresh token of a chain and every token minted from any of them (spec §2.8, §3.6).

    Read under the chain's lock (``StoreTx.lock_refresh_chain``): a refresh of this chain either committed
    before, and its new tokens are revoked here, or runs after and finds the chain REVOKED (issue 8 item 3).
    The objects are held first, in the order every grant takes these locks.
    """
    tx.hold_objects()
    tx.lock_refresh_chain(chain_id)
    revoked: list[str] = []
    for rt in ctx.store.list_refresh_tokens(chain_id=chain_id):
        if rt.status != "REVOKED":
            tx.put_refresh_token(replace(rt, status="REVOKED"))
        revoked.append(rt.id)
        for token in ctx.store.list_tokens(refresh_id=rt.id):
            if token.expires_at > now:
                tx.append_change("revoke_jti", {"as_id": token.as_id, "jti": token.jti, "exp": token.expires_at})
    return revoked


def revoke_jtis(ctx: CoreContext, tx: StoreTx, jtis: tuple[str, ...] | list[str], now: float) -> None:
    for jti in jtis:
        token = ctx.store.get_token(jti)
        if token is not None and token.expires_at > now:
            tx.append_change("revoke_jti", {"as_id": token.as_id, "jti": token.jti, "exp": token.expires_at})


__all__ = ["CurrentState", "Grant", "Minted", "current_principal", "mint", "new_refresh_token", "pause", "revoke_jtis",
           "revoke_refresh_chain", "unauthorized_client", "wants_refresh"]
