"""Client authentication as /token, /introspect and /revoke run it: with the back-off of security.md §4.1
("Rate-limit per client_id and per source. Lock out or delay after N failures.") around
``authz.clientauth.authenticate_client``."""

from __future__ import annotations

import math

from starlette.requests import Request

from authz.clientauth import VERIFIED, AuthenticatedClient, authenticate_client, named_client_id, presented_secret
from authz.context import CoreContext
from authz.errors import OAuthError
from authz.oauth.common import in_thread

RATE_LIMITED = "API call exceeded rate limit due to too many requests."
"""Spec §2.6 (Okta's 429 at /token, ``user_rate_limited``)."""


def rate_limited(retry_after: float, limit: int, now: float) -> OAuthError:
    """429 with Okta's rate-limit headers (spec §7: X-Rate-Limit-Limit/-Remaining/-Reset in epoch seconds)
    and RFC 9110 §10.2.3 Retry-After."""
    wait = max(1, math.ceil(retry_after))
    return OAuthError("invalid_grant", RATE_LIMITED, status_code=429, reason="client_auth_rate_limited",
                      headers={"Retry-After": str(wait), "X-Rate-Limit-Limit": str(limit),
                               "X-Rate-Limit-Remaining": "0", "X-Rate-Limit-Reset": str(math.ceil(now + wait))})


async def authenticate(ctx: CoreContext, request: Request, form: dict[str, str], query: dict[str, str],
                       endpoint_url: str) -> AuthenticatedClient:
    """Authenticate the caller, unless its client_id or source address has failed too often lately (then
    429 without looking at the credentials, so a locked-out guess costs nothing and reveals nothing)."""
    failures = ctx.auth_failures
    assert failures is not None  # CoreContext.__post_init__
    authorization = request.headers.get("authorization")
    client_id = named_client_id(authorization, form)
    source = request.client.host if request.client else None
    now = ctx.now()
    # The slot is reserved before the credentials are looked at (on the event loop, under the failures'
    # lock), so that concurrent guesses cannot all pass the check before the first failure is counted. A
    # secret that passed lately is no guess: it takes no slot, so a service with more calls in flight than the
    # limit is not refused 429 with the right secret (the soak benchmark's finding). Recorded failures still
    # lock it out, as they lock out everyone from that client and address (issue 8: "lock out after N").
    presented = presented_secret(authorization, form)
    known = presented is not None and VERIFIED.recently_verified(*presented)
    wait = failures.locked_out(client_id, source, now) if known else failures.reserve(client_id, source, now)
    if wait is not None:
        raise rate_limited(wait, failures.limit, now)
    as_id = request.path_params.get("as_id")
    issuer = ctx.issuer_for(as_id) if isinstance(as_id, str) else None
    failed = False
    try:
        return await in_thread(lambda: authenticate_client(ctx.store, authorization=authorization, form=form,
                                                           query=query, endpoint_url=endpoint_url, now=now,
                                                           issuer=issuer))
    except OAuthError as exc:
        failed = exc.error == "invalid_client"
        raise
    finally:
        if known:
            if failed:  # the secret was rotated since: from now on this caller guesses like any other
                assert presented is not None
                VERIFIED.forget(*presented)
                failures.fail(client_id, source, ctx.now())
        else:
            failures.settle(client_id, source, ctx.now(), failed=failed)


__all__ = ["RATE_LIMITED", "authenticate", "rate_limited"]
