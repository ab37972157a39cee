"""The /token grants that start or finish a flow: client_credentials, password, authorization_code.

Each runs in a worker thread (store and scrypt block) and decides in one transaction: the tokens it
mints, their records and their system-log events are committed together (issue 3).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
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
    pause,
    revoke_jtis,
    revoke_refresh_chain,
    wants_refresh,
)
from authz.oauth.password_grant_throttle import check_user_password
from authz.passwords import token_hash
from authz.policy import Principal, evaluate, require_match, resolve_scopes, user_not_assigned
from authz.store.base import AuthorizationCode, StoreTx
from config.schema import AuthorizationServerConfig, RuleConfig

INVALID_CODE = "The authorization code is invalid or has expired."
MISMATCHED_CLIENT = ("The grant was issued to another client. Please make sure the 'client_id' matches the one used "
                     "at the authorize request.")
MISMATCHED_REDIRECT = "The 'redirect_uri' does not match the redirection URI used in the authorization request."
PKCE_FAILED = "PKCE verification failed."
PKCE_VERIFIER_REQUIRED = "PKCE code verifier is required by the application."
MISMATCHED_AS = "The grant was issued for another authorization server."
BAD_CREDENTIALS = "The credentials provided were invalid."
VERIFIER_ABNF = re.compile(r"[A-Za-z0-9\-._~]{43,128}")
"""RFC 7636 §4.1: code-verifier = 43*128unreserved; unreserved = ALPHA / DIGIT / "-" / "." / "_" / "~"."""


def lifetimes(rule: RuleConfig) -> tuple[int, int, int]:
    """The rule's access lifetime, refresh lifetime (0 = unlimited) and idle window, in seconds."""
    token = rule.actions.token
    return (token.access_token_lifetime_minutes * 60, token.refresh_token_lifetime_minutes * 60,
            token.refresh_token_window_minutes * 60)


def decide(ctx: CoreContext, server: AuthorizationServerConfig, client: AuthenticatedClient, user: User | None,
           grant_type: str, scope_param: str | None, audit: Audit) -> Grant:
    """Spec §3.2 steps 7, 9 and 10: scopes exist, the user is assigned, then the policy."""
    request = resolve_scopes(server, scope_param, grant_type)
    if user is not None and not is_assigned(client.app, user):
        # The brief: "A user must be assigned to the client ... for the client to get Access Tokens".
        raise user_not_assigned()
    principal = Principal(user.id, user.groups) if user is not None else None
    evaluation = evaluate(server, client.client_id, principal, grant_type, request)
    audit.evaluation = evaluation
    policy, rule = require_match(evaluation)
    access, refresh, window = lifetimes(rule)
    return Grant(server=server, app=client.app, user=user, scopes=evaluation.granted, grant_type=grant_type,
                 access_lifetime=access, refresh_lifetime=refresh, refresh_window=window, policy_id=policy.id,
                 rule_id=rule.id, auth_time=int(ctx.now()) if user is not None else None)


def client_credentials(ctx: CoreContext, server: AuthorizationServerConfig, client: AuthenticatedClient,
                       form: dict[str, str], audit: Audit) -> dict[str, object]:
    """Spec §3.5: evaluated at /token with no user; an access token only.

    Decided inside the minting transaction, on the server and client as they are then (issue 8 item 2).
    """
    keys = ctx.store.list_signing_keys(server.id)
    now = ctx.now()
    pause("client_credentials.before_mint")
    with ctx.store.transaction() as tx:
        current = current_principal(ctx, tx, server.id, client, None, "client_credentials")
        grant = decide(ctx, current.server, replace(client, app=current.app), None, "client_credentials",
                       form.get("scope"), audit)
        minted = mint(ctx, tx, keys, grant, audit, now, new_refresh=False)
    return minted.body


def password(ctx: CoreContext, server: AuthorizationServerConfig, client: AuthenticatedClient,
             form: dict[str, str], audit: Audit) -> dict[str, object]:
    """Spec §3.5: evaluated at /token; a refresh token when offline_access is granted."""
    resolve_scopes(server, form.get("scope"), "password")  # step 7 comes before the credentials (step 8)
    username, secret = form.get("username", ""), form.get("password", "")
    # Throttled with the sign-in form's per-username and per-source counts (issue 8 item 5).
    user = check_user_password(ctx, username, secret, audit)
    if user is None:
        raise OAuthError("invalid_grant", BAD_CREDENTIALS, reason="invalid_credentials")
    audit.user = user
    if not user.is_active:
        # Spec §9 D5: a suspended (or otherwise inactive) user gets no new grant.
        raise OAuthError("invalid_grant", BAD_CREDENTIALS, reason="user_not_active")
    keys = ctx.store.list_signing_keys(server.id)
    now = ctx.now()
    pause("password.before_mint")
    with ctx.store.transaction() as tx:
        # The password was checked (scrypt, tens of ms) outside the transaction; the user, the client and
        # the policy are decided again inside it, so that a deactivation in that window is seen (issue 8).
        current = current_principal(ctx, tx, server.id, client, user.id, "password")
        fresh = current.user
        if fresh is None or not fresh.is_active:
            raise OAuthError("invalid_grant", BAD_CREDENTIALS, reason="user_not_active")
        if fresh.secret_hash != user.secret_hash or fresh.login != user.login:
            raise OAuthError("invalid_grant", BAD_CREDENTIALS, reason="invalid_credentials")
        audit.user = fresh
        grant = decide(ctx, current.server, replace(client, app=current.app), fresh, "password", form.get("scope"),
                       audit)
        minted = mint(ctx, tx, keys, grant, audit, now)
    return minted.body


def s256(verifier: str) -> str:
    """RFC 7636 §4.2: BASE64URL(SHA256(ASCII(code_verifier)))."""
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode("ascii", "replace")).digest()).rstrip(b"=").decode()


def authorization_code(ctx: CoreContext, server: AuthorizationServerConfig, client: AuthenticatedClient,
                       form: dict[str, str], audit: Audit) -> dict[str, object]:
    """Spec §3.4: /token only validates the code (300 s, client, redirect_uri, PKCE); the policy was
    evaluated at /authorize and is not evaluated again (spec §3.1 point 8)."""
    value = form.get("code", "")
    keys = ctx.store.list_signing_keys(server.id)
    now = ctx.now()
    error: OAuthError | None = None
    body: dict[str, object] = {}
    pause("authorization_code.before_mint")
    with ctx.store.transaction() as tx:
        tx.hold_objects()  # the user, client and server read below stay as read until commit (issue 8)
        # Consumed before it is checked, and committed even when the exchange fails: a code is good
        # for one attempt (RFC 6749 §4.1.2: "The client MUST NOT use the authorization code more than once").
        code = tx.consume_code(token_hash(value), now) if value else None
        if code is not None and code.used_at is not None:
            # RFC 9700 §4.2.1 / RFC 6749 §4.1.2: a second use "SHOULD revoke (when possible) all tokens
            # previously issued based on that authorization code".
            revoke_jtis(ctx, tx, code.issued_jtis, now)
            for refresh_id in code.issued_refresh_ids:
                rt = ctx.store.get_refresh_token(refresh_id)
                if rt is not None:
                    revoke_refresh_chain(ctx, tx, rt.chain_id, now)
            audit.revoked = True
            audit.extra["revoked_token_ids"] = " ".join((*code.issued_jtis, *code.issued_refresh_ids))
            error = RecordedOAuthError("invalid_grant", INVALID_CODE, reason="authorization_code_reused")
            ctx.syslog.record(tx, audit.failure(error, now))
        else:
            error = _check_code(ctx, code, server, client, form, now)
            if error is None:
                assert code is not None
                current, error = _code_principal(ctx, tx, server, client, code, audit)
                if current is not None and current.user is not None:
                    grant = Grant(server=current.server, app=current.app, user=current.user, scopes=code.scopes,
                                  grant_type="authorization_code", access_lifetime=code.access_lifetime_seconds,
                                  refresh_lifetime=code.refresh_lifetime_seconds,
                                  refresh_window=code.refresh_window_seconds, policy_id=code.policy_id,
                                  rule_id=code.rule_id, auth_time=int(code.auth_time), nonce=code.nonce)
                    audit.extra.update({"policy": code.policy_id, "rule": code.rule_id,
                                        "granted_scopes": " ".join(code.scopes)})
                    minted = mint(ctx, tx, keys, grant, audit, now, new_refresh=wants_refresh(grant))
                    tx.put_code(replace(code, used_at=now, issued_jtis=tuple(minted.jtis),
                                        issued_refresh_ids=(minted.refresh.id,) if minted.refresh else ()))
                    body = minted.body
            if error is not None:
                ctx.syslog.record(tx, audit.failure(error, now))
                error = RecordedOAuthError(error.error, error.description, status_code=error.status_code,
                                           reason=error.reason)
    if error is not None:
        raise error
    return body


def _code_principal(ctx: CoreContext, tx: StoreTx, server: AuthorizationServerConfig, client: AuthenticatedClient,
                    code: AuthorizationCode, audit: Audit) -> tuple[CurrentState | None, OAuthError | None]:
    """The code's user and server as committed now (``current_principal``): a user deactivated or unassigned
    since /authorize gets no tokens, since the watermark of that change only covers tokens minted before it."""
    try:
        current = current_principal(ctx, tx, server.id, client, code.user_id, "authorization_code")
    except OAuthError as exc:
        return None, exc
    user = current.user
    audit.user = user
    if user is None or not user.is_active:
        return None, OAuthError("invalid_grant", INVALID_CODE, reason="user_not_active")
    if not is_assigned(current.app, user):
        return None, OAuthError("invalid_grant", INVALID_CODE, reason="user_not_assigned")
    return current, None


def _check_code(ctx: CoreContext, code: AuthorizationCode | None, server: AuthorizationServerConfig,
                client: AuthenticatedClient, form: dict[str, str], now: float) -> OAuthError | None:
    if code is None or code.expires_at <= now:
        return OAuthError("invalid_grant", INVALID_CODE, reason="invalid_authorization_code")
    if code.as_id != server.id:
        return OAuthError("invalid_request", MISMATCHED_AS, reason="mismatched_authorization_server")
    if code.client_id != client.client_id:
        return OAuthError("invalid_grant", MISMATCHED_CLIENT, reason="mismatched_client")
    if form.get("redirect_uri") != code.redirect_uri:
        return OAuthError("invalid_grant", MISMATCHED_REDIRECT, reason="mismatched_redirect_uri")
    verifier = form.get("code_verifier")
    if code.code_challenge is not None:
        if not verifier:
            return OAuthError("invalid_request", PKCE_VERIFIER_REQUIRED, reason="pkce_verifier_required")
        if not VERIFIER_ABNF.fullmatch(verifier):
            # A short verifier is guessable: @node-oauth/oauth2-server accepted 1-char verifiers (security.md §4.1).
            return OAuthError("invalid_grant", PKCE_FAILED, reason="pkce_verifier_malformed")
        if not hmac.compare_digest(s256(verifier), code.code_challenge):
            return OAuthError("invalid_grant", PKCE_FAILED, reason="pkce_failed")
    elif verifier:
        # RFC 9700 §2.1.1: a verifier without a challenge is a downgrade attempt.
        return OAuthError("invalid_grant", PKCE_FAILED, reason="pkce_failed")
    return None


__all__ = ["authorization_code", "client_credentials", "decide", "lifetimes", "password", "s256"]
