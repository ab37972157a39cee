"""The refresh_token grant (spec §3.6, §9 D3): no re-evaluation, idle window, rotation with reuse detection."""

from __future__ import annotations

from dataclasses import replace

from authz.clientauth import AuthenticatedClient
from authz.context import CoreContext
from authz.errors import OAuthError
from authz.model import User, is_assigned
from authz.oauth.audit import Audit, RecordedOAuthError
from authz.oauth.issue import (
    CurrentState,
    Grant,
    current_principal,
    mint,
    new_refresh_token,
    pause,
    revoke_refresh_chain,
)
from authz.passwords import token_hash
from authz.policy import format_list
from authz.store.base import RefreshToken, SigningKey, StoreTx
from config.schema import AuthorizationServerConfig

INVALID_REFRESH = "The refresh token is invalid or expired."
MISMATCHED_AS = "The grant was issued for another authorization server."


def refresh_scopes_denied(denied: list[str]) -> OAuthError:
    return OAuthError("access_denied", "Some of the scopes requested for the refresh request were not granted in "
                      f"the original authorize request. Denied scopes: {format_list(denied)}.",
                      reason="refresh_scopes_denied")


def is_usable(ctx: CoreContext, rt: RefreshToken, now: float) -> bool:
    """Not revoked (in the store or by a watermark), within its absolute lifetime and its idle window."""
    if rt.status == "REVOKED":
        return False
    if rt.expires_at is not None and rt.expires_at <= now:
        return False
    # [SUP-IDLE]: "The refresh token expires if unused for refreshTokenWindowMinutes; each use resets the idle timer."
    if rt.last_used_at + rt.window_seconds <= now:
        return False
    claims = {"iss": ctx.issuer_for(rt.as_id), "jti": rt.id, "cid": rt.client_id, "uid": rt.user_id}
    return not ctx.revocation.is_revoked(claims, rt.as_id)


def in_grace(rt: RefreshToken, leeway: int, now: float) -> bool:
    """[G-RT]: a rotated token is 'invalidated after the grace period leeway (0-60 s, default 30)'."""
    return rt.status == "ROTATED" and rt.rotated_at is not None and now - rt.rotated_at <= leeway


def refresh_token(ctx: CoreContext, server: AuthorizationServerConfig, client: AuthenticatedClient,
                  form: dict[str, str], audit: Audit) -> dict[str, object]:
    value = form.get("refresh_token", "")
    now = ctx.now()
    found = ctx.store.get_refresh_token_by_hash(token_hash(value)) if value else None
    if found is None:
        raise OAuthError("invalid_grant", INVALID_REFRESH, reason="invalid_refresh_token")
    audit.extra["refresh_token_id"] = found.id
    # A record's server, client and chain never change: these can be checked on the first read.
    if found.as_id != server.id:
        raise OAuthError("invalid_request", MISMATCHED_AS, reason="mismatched_authorization_server")
    if found.client_id != client.client_id:
        # Bound to its client (RFC 6749 §6: "the refresh token ... was issued to the authenticated client").
        raise OAuthError("invalid_grant", INVALID_REFRESH, reason="mismatched_client")
    keys = ctx.store.list_signing_keys(server.id)
    pause("refresh_token.before_mint")
    reused: RecordedOAuthError | None = None
    body: dict[str, object] = {}
    with ctx.store.transaction() as tx:
        current = current_principal(ctx, tx, server.id, client, found.user_id, "refresh_token")
        # Read, compare and write the token under its chain's lock (issue 8 item 3): a /revoke committed
        # since the read above is seen here, and one that starts now waits for this commit and then
        # revokes what it minted. Writing back the first read would undo a revocation in between.
        tx.lock_refresh_chain(found.chain_id)
        rt = ctx.store.get_refresh_token(found.id)
        if rt is None:
            raise OAuthError("invalid_grant", INVALID_REFRESH, reason="invalid_refresh_token")
        if rt.status == "ROTATED" and not in_grace(rt, current.app.config.refresh_token.leeway, now):
            reused = _detect_reuse(ctx, tx, rt, audit, now)
        else:
            body = _refresh(ctx, tx, keys, current, value, rt, form, audit, now)
    if reused is not None:
        raise reused
    return body


def _refresh(ctx: CoreContext, tx: StoreTx, keys: list[SigningKey], current: CurrentState, value: str,
             rt: RefreshToken, form: dict[str, str], audit: Audit, now: float) -> dict[str, object]:
    """Inside the transaction, on the token and principal as committed now."""
    # A ROTATED token here is within its grace period; it must still pass every other check (a watermark
    # marks only ACTIVE tokens REVOKED, so a rotated one is refused by the watermark itself).
    if not is_usable(ctx, rt, now):
        raise OAuthError("invalid_grant", INVALID_REFRESH, reason="invalid_refresh_token")
    user: User | None = None
    if rt.user_id is not None:
        user = current.user
        audit.user = user
        if user is None or not user.is_active:
            # Spec §9 D5: keep the token, but fail it while the user is not ACTIVE.
            raise OAuthError("invalid_grant", INVALID_REFRESH, reason="user_not_active")
        if not is_assigned(current.app, user):
            # Spec §9 D3 (the alternative it names): the user must still be assigned, directly or through
            # a group; Okta answers invalid_grant. Refresh tokens minted while an unassignment was in
            # flight would otherwise keep minting access tokens (issue 8 item 2).
            raise OAuthError("invalid_grant", INVALID_REFRESH, reason="user_not_assigned")
    scopes = rt.scopes
    if form.get("scope"):
        requested = list(dict.fromkeys(s for s in form["scope"].split(" ") if s))
        denied = [s for s in requested if s not in rt.scopes]
        if denied:
            raise refresh_scopes_denied(denied)
        scopes = tuple(requested)
    audit.extra.update({"policy": rt.policy_id, "rule": rt.rule_id, "requested_scopes": form.get("scope", ""),
                        "granted_scopes": " ".join(scopes)})
    # Spec §9 D3: "Do not re-run rule matching on refresh. Reuse the rule and scopes stored with the
    # refresh token (lifetimes taken from that rule)."
    grant = Grant(server=current.server, app=current.app, user=user, scopes=scopes, grant_type="refresh_token",
                  access_lifetime=rt.access_lifetime_seconds, refresh_window=rt.window_seconds,
                  policy_id=rt.policy_id, rule_id=rt.rule_id,
                  auth_time=int(rt.auth_time) if rt.auth_time is not None else None)
    if current.app.config.refresh_token.rotation_type == "ROTATE":
        # [G-RT]: "Lifetime and expiry are inherited from the first refresh token in the chain."
        chain_grant = replace(grant, scopes=rt.scopes)
        new_value, new_rt = new_refresh_token(tx, chain_grant, now, chain_id=rt.chain_id,
                                              expires_at=rt.expires_at, inherit=True)
        if rt.status == "ACTIVE":
            tx.put_refresh_token(replace(rt, status="ROTATED", rotated_at=now, last_used_at=now))
        minted = mint(ctx, tx, keys, grant, audit, now, refresh_value=new_value, refresh=new_rt)
    else:
        used = replace(rt, last_used_at=now)  # each use resets the idle window
        tx.put_refresh_token(used)
        minted = mint(ctx, tx, keys, grant, audit, now, refresh_value=value, refresh=used)
    return minted.body


def _detect_reuse(ctx: CoreContext, tx: StoreTx, rt: RefreshToken, audit: Audit, now: float) -> RecordedOAuthError:
    """[G-RT]: reuse of a rotated token "immediately invalidates the most recently issued refresh token and
    all access tokens issued since the user authenticated", with event app.oauth2.as.token.detect_reuse.
    Written in the caller's transaction, which commits; the caller raises the returned error after it."""
    current = [t for t in ctx.store.list_refresh_tokens(chain_id=rt.chain_id) if t.status == "ACTIVE"]
    revoked = revoke_refresh_chain(ctx, tx, rt.chain_id, now)
    audit.revoked = True
    ctx.syslog.record(tx, audit.event(
        "app.oauth2.as.token.detect_reuse", now, result="FAILURE", reason="refresh_token_reused", severity="WARN",
        message="Refresh token reuse detected: the refresh token chain and its access tokens are revoked",
        extra={"old_refresh_token_id": rt.id, "current_refresh_token_id": current[-1].id if current else None,
               "revoked_refresh_token_ids": " ".join(revoked)}))
    return RecordedOAuthError("invalid_grant", INVALID_REFRESH, reason="refresh_token_reused")


__all__ = ["in_grace", "is_usable", "refresh_token"]
