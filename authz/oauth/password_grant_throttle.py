"""The sign-in throttle of ``authz/lockout.py`` for the password grant (ROPC) at /token.

Okta's lockout counts failed password checks wherever they happen, so the /authorize form and the password
grant share one count per username and per source address: a guesser cannot move to /token once the form
refuses it. A refused attempt is spec §2.6's per-user rate limit: 429 ``invalid_grant`` "API call exceeded
rate limit due to too many requests." with Retry-After, and costs no scrypt.
"""

from __future__ import annotations

from authz.context import CoreContext
from authz.errors import OAuthError
from authz.lockout import Refusal
from authz.model import User, find_user_by_login
from authz.oauth.audit import Audit
from authz.passwords import verify_secret
from authz.syslog import make_event

RATE_LIMITED = "API call exceeded rate limit due to too many requests."


def check_user_password(ctx: CoreContext, username: str, secret: str, audit: Audit) -> User | None:
    """The user whose password ``secret`` is, or None; 429 while the username or source is throttled.

    Blocking (a store read and a scrypt on the hashing pool): call it from a worker thread.
    """
    throttle = ctx.sign_in_throttle
    assert throttle is not None  # CoreContext.__post_init__
    source = audit.client.get("ipAddress")
    attempt = throttle.begin(username, source if isinstance(source, str) else None, ctx.now())
    if isinstance(attempt, Refusal):
        raise OAuthError("invalid_grant", RATE_LIMITED, status_code=429, reason="sign_in_rate_limited",
                         headers={"Retry-After": str(attempt.retry_after)})
    failed = False
    try:
        user = find_user_by_login(ctx.store, username) if username else None
        valid = verify_secret(secret, user.secret_hash if user is not None else None)
        failed = user is None or not valid
    finally:
        locked = throttle.finish(attempt, failed=failed, now=ctx.now())
    if locked and user is not None:
        with ctx.store.transaction() as tx:
            ctx.syslog.record(tx, make_event(
                "user.account.lock", now=ctx.now(), severity="WARN", display_message="Max sign in attempts exceeded",
                actor={"id": user.id, "type": "User", "alternateId": user.login, "displayName": user.login},
                client=audit.client_part(),
                targets=[{"id": user.id, "type": "User", "alternateId": user.login, "displayName": user.login}],
                debug_data={"failures": throttle.limit, "window_seconds": throttle.window, "grant_type": "password"}))
    return user if not failed else None


__all__ = ["RATE_LIMITED", "check_user_password"]
