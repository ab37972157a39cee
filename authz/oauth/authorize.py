"""``GET|POST /oauth2/{asId}/v1/authorize`` (spec §2.3, §3.4): the code flow with a sign-in form.

GET validates the request and shows the form; POST (the form) checks the credentials, the user's
assignment and the policy, then redirects with a code. The policy is evaluated here, once: the code
carries the granted scopes and the matched rule's lifetimes, and /token does not evaluate again
(spec §3.1 point 8). Until ``redirect_uri`` is known to belong to the client, errors are an HTML page,
never a redirect; after that they travel on the redirect with ``state``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from authz.context import CoreContext
from authz.errors import OAuthError
from authz.lockout import Refusal
from authz.model import App, User, find_user_by_login, get_app, get_server, is_assigned
from authz.oauth.audit import Audit, record_failure
from authz.oauth.common import DUPLICATE_PARAMS, INVALID_AS, Endpoint, client_info, in_thread, single_values
from authz.oauth.grants import lifetimes
from authz.oauth.login_form import (
    COOKIE_NAME,
    FORM_LIFETIME,
    check_form_token,
    form_key,
    form_token_id,
    make_form_token,
    new_browser_nonce,
    render_error_page,
    render_login,
)
from authz.passwords import HashingBusy, averify_secret, token_hash
from authz.policy import Principal, evaluate, format_list, require_match, resolve_scopes, user_not_assigned
from authz.store.base import AuthorizationCode
from authz.syslog import make_event
from authz.tokens import CODE_LIFETIME, new_opaque
from config.schema import AuthorizationServerConfig

PARAMS = ("client_id", "redirect_uri", "response_type", "scope", "state", "nonce", "code_challenge",
          "code_challenge_method", "response_mode", "prompt", "login_hint")
UNKNOWN_CLIENT = "Invalid value for 'client_id' parameter."
BAD_REDIRECT = "The 'redirect_uri' parameter must be a Login redirect URI in the client app settings."
SIGN_IN_FAILED = "Sign in failed. Check your username and password."
S256_CHALLENGE = re.compile(r"[A-Za-z0-9_-]{43}")
"""RFC 7636 §4.2: code_challenge = BASE64URL-ENCODE(SHA256(ASCII(code_verifier))): 43 unpadded characters."""
MALFORMED_CHALLENGE = "The 'code_challenge' parameter must be the BASE64URL-encoded SHA-256 of the code verifier."
FORM_EXPIRED = "The sign-in form expired or was not loaded from this server. Please sign in again."
FORM_USED = "This sign-in form was already submitted. Please sign in again."
TOO_MANY_ATTEMPTS = "Too many failed sign-in attempts. Please try again later."
BUSY_PAGE = "The server is busy. Please try again in a moment."


class ErrorPage(Exception):
    def __init__(self, error: str, description: str, reason: str) -> None:
        super().__init__(description)
        self.oauth = OAuthError(error, description, reason=reason)


@dataclass(frozen=True)
class AuthorizeRequest:
    server: AuthorizationServerConfig
    app: App
    params: dict[str, str]
    redirect_uri: str
    issuer: str
    """RFC 9207 §2: the ``iss`` every authorization response carries."""

    @property
    def state(self) -> str | None:
        return self.params.get("state")

    @property
    def fragment(self) -> bool:
        return self.params.get("response_mode") == "fragment"


def redirect_with(req: AuthorizeRequest, values: dict[str, str]) -> Response:
    """The authorization response (code or error), with ``state`` and RFC 9207's ``iss``: a client talking to
    several servers checks it against the issuer it sent the request to (mix-up attacks, RFC 9700 §4.4)."""
    if req.state is not None:
        values = {**values, "state": req.state}
    values = {**values, "iss": req.issuer}
    parts = urlsplit(req.redirect_uri)
    if req.fragment:
        target = urlunsplit((parts.scheme, parts.netloc, parts.path, parts.query, urlencode(values)))
    else:
        query = f"{parts.query}&{urlencode(values)}" if parts.query else urlencode(values)
        target = urlunsplit((parts.scheme, parts.netloc, parts.path, query, ""))
    return RedirectResponse(target, status_code=302, headers={"Cache-Control": "no-store"})


def validate_client(ctx: CoreContext, as_id: str, params: dict[str, str], audit: Audit) -> AuthorizeRequest:
    """Spec §3.2 steps 2-5; failures here are shown as a page (there is no safe place to redirect to)."""
    server = get_server(ctx.store, as_id)
    if server is None or server.status != "ACTIVE":
        raise ErrorPage("invalid_request", INVALID_AS, "invalid_authorization_server")
    audit.server = server
    app = get_app(ctx.store, params.get("client_id", "")) if params.get("client_id") else None
    if app is None or not app.is_active:
        raise ErrorPage("invalid_client", UNKNOWN_CLIENT, "invalid_client_id")
    audit.app = app
    redirect_uri = params.get("redirect_uri", "")
    audit.redirect_uri = redirect_uri or None
    # RFC 9700 §2.1: "exact string matching" of redirect URIs.
    if redirect_uri not in app.config.redirect_uris:
        raise ErrorPage("invalid_request", BAD_REDIRECT, "illegal_redirect_uri")
    return AuthorizeRequest(server, app, params, redirect_uri, ctx.issuer_for(as_id))


def validate_request(req: AuthorizeRequest) -> None:
    """Spec §3.2 steps 4, 6 and 7; failures travel on the redirect."""
    params = req.params
    response_type = params.get("response_type")
    if response_type != "code":
        raise OAuthError("unsupported_response_type", "The response type is not supported by the authorization "
                         f"server. Configured response types: {format_list(['code'])}.",
                         reason="unsupported_response_type")
    if "authorization_code" not in req.app.config.grant_types:
        raise OAuthError("unauthorized_client", "The client is not authorized to use the provided grant type. "
                         f"Configured grant types: {format_list(req.app.config.grant_types)}.",
                         reason="unauthorized_client")
    if not params.get("state"):
        # Spec §2.3: "Okta requires the OAuth 2.0 state parameter on all requests" (CSRF protection, RFC 9700 §4.7).
        raise OAuthError("invalid_request", "The authorization request must include the 'state' parameter.",
                         reason="missing_state")
    if params.get("response_mode") not in (None, "query", "fragment"):
        raise OAuthError("invalid_request", "The 'response_mode' parameter is not supported. Valid values: "
                         "[query, fragment]", reason="unsupported_response_mode")
    challenge, method = params.get("code_challenge"), params.get("code_challenge_method")
    if challenge is not None or method is not None:
        if method != "S256":
            raise OAuthError("invalid_request", "PKCE code challenge method is not supported. Valid values: [S256]",
                             reason="pkce_method_not_supported")
        if not challenge:
            raise OAuthError("invalid_request", "PKCE code challenge is required by the application.",
                             reason="pkce_challenge_required")
        if not S256_CHALLENGE.fullmatch(challenge):
            # A challenge no S256 verifier can meet would only make a code that can never be redeemed.
            raise OAuthError("invalid_request", MALFORMED_CHALLENGE, reason="pkce_challenge_malformed")
    elif req.app.config.requires_pkce:
        # Spec §2.5: a public client "requires PKCE for the code flow".
        raise OAuthError("invalid_request", "PKCE code challenge is required by the application.",
                         reason="pkce_challenge_required")
    resolve_scopes(req.server, params.get("scope"), "authorization_code")
    if params.get("prompt") == "none":
        # There is no session to reuse: every authorization signs in through the form.
        raise OAuthError("login_required", "The client specified not to prompt, but the user is not logged in.",
                         reason="login_required")


def grant_code(ctx: CoreContext, req: AuthorizeRequest, user: User, audit: Audit) -> str:
    """Steps 9-10 and 14: assignment, policy, then the code and its event in one transaction."""
    audit.user = user
    if not user.is_active:
        # Spec §9 D5: "Reject new grants (... access_denied at authorize)".
        raise OAuthError("access_denied", "The user is not active.", reason="user_not_active")
    request = resolve_scopes(req.server, req.params.get("scope"), "authorization_code")
    if not is_assigned(req.app, user):
        raise user_not_assigned()
    evaluation = evaluate(req.server, req.app.client_id, Principal(user.id, user.groups), "authorization_code",
                          request)
    audit.evaluation = evaluation
    policy, rule = require_match(evaluation)
    access, refresh, window = lifetimes(rule)
    now = ctx.now()
    value = new_opaque()
    code = AuthorizationCode(
        code_hash=token_hash(value), as_id=req.server.id, client_id=req.app.client_id, user_id=user.id,
        redirect_uri=req.redirect_uri, scopes=evaluation.granted, issued_at=now, expires_at=now + CODE_LIFETIME,
        auth_time=now, nonce=req.params.get("nonce"), code_challenge=req.params.get("code_challenge"),
        code_challenge_method=req.params.get("code_challenge_method"), policy_id=policy.id, rule_id=rule.id,
        access_lifetime_seconds=access, refresh_lifetime_seconds=refresh, refresh_window_seconds=window)
    with ctx.store.transaction() as tx:
        tx.put_code(code)
        ctx.syslog.record(tx, audit.event("app.oauth2.as.authorize.code", now,
                                          message="OAuth2 authorization code request",
                                          extra={"code_expires": code.expires_at}))
    return value


def authorize_endpoint(ctx: CoreContext) -> Endpoint:
    async def authorize(request: Request) -> Response:
        as_id = request.path_params["as_id"]
        audit = Audit(as_id, "app.oauth2.as.authorize", client=client_info(request))
        try:
            query_items = list(request.query_params.multi_items())
            form_items: list[tuple[str, Any]] = list((await request.form()).multi_items()) \
                if request.method == "POST" else []
            try:
                raw = single_values(query_items + form_items)
            except OAuthError:
                raise ErrorPage("invalid_request", DUPLICATE_PARAMS, "duplicate_parameters") from None
            params = {k: raw[k] for k in PARAMS if k in raw}
            audit.client["id"] = params.get("client_id")
            audit.response_type = params.get("response_type")
            audit.requested_scopes = params.get("scope")
            req = await in_thread(validate_client, ctx, as_id, params, audit)
        except ErrorPage as page:
            await in_thread(record_failure, ctx, audit, page.oauth)
            return HTMLResponse(render_error_page(page.oauth.error, page.oauth.description), status_code=400,
                                headers={"Cache-Control": "no-store"})
        try:
            validate_request(req)
            if request.method == "GET":
                return await show_form(ctx, request, req)
            return await sign_in(ctx, request, req, raw, audit)
        except OAuthError as exc:
            await in_thread(record_failure, ctx, audit, exc)
            return redirect_with(req, {"error": exc.error, "error_description": exc.description})

    return authorize


async def show_form(ctx: CoreContext, request: Request, req: AuthorizeRequest, error: str | None = None,
                    status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    keys = await in_thread(ctx.store.list_signing_keys, req.server.id)
    nonce = request.cookies.get(COOKIE_NAME) or new_browser_nonce()
    token = make_form_token(form_key(keys), req.params, nonce, ctx.now())
    html = render_login(action=str(request.url.path), server_name=req.server.name, client_name=req.app.config.name,
                        params=req.params, form_token=token, error=error,
                        login_hint=req.params.get("login_hint", ""))
    response = HTMLResponse(html, status_code=status_code, headers={
        "Cache-Control": "no-store", "X-Frame-Options": "DENY",
        "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
                                   "frame-ancestors 'none'", **(headers or {})})
    response.set_cookie(COOKIE_NAME, nonce, max_age=FORM_LIFETIME, path=request.url.path, httponly=True,
                        samesite="lax", secure=ctx.config.issuer.startswith("https://"))
    return response


def spend_form_token(ctx: CoreContext, req: AuthorizeRequest, token: str) -> bool:
    """False if this form token was already posted (issue 8 item 5: a sign-in form token is single-use)."""
    token_id, expires_at = form_token_id(token)
    return ctx.store.use_assertion_jti(req.app.client_id, token_id, expires_at)


def sign_in_actor(username: str, user: User | None) -> dict[str, Any]:
    if user is not None:
        return {"id": user.id, "type": "User", "alternateId": user.login, "displayName": user.login}
    # Okta names an unknown user by what was typed; the system log bounds its length.
    return {"id": "unknown", "type": "User", "alternateId": username, "displayName": "Unknown"}


def record_sign_in_failure(ctx: CoreContext, audit: Audit, username: str, user: User | None, locked: bool) -> None:
    """A wrong username or password: the authorize FAILURE, Okta's ``user.session.start`` FAILURE
    (INVALID_CREDENTIALS) and, when this failure reached the limit, ``user.account.lock``."""
    throttle = ctx.sign_in_throttle
    assert throttle is not None
    now = ctx.now()
    with ctx.store.transaction() as tx:
        ctx.syslog.record(tx, audit.failure(OAuthError("access_denied", SIGN_IN_FAILED, reason="invalid_credentials"),
                                            now))
        ctx.syslog.record(tx, make_event(
            "user.session.start", now=now, result="FAILURE", reason="INVALID_CREDENTIALS", severity="WARN",
            display_message="User login to Okta", actor=sign_in_actor(username, user), client=audit.client_part(),
            debug_data={"requestUri": f"/oauth2/{audit.as_id}/v1/authorize"}))
        if locked and user is not None:
            ctx.syslog.record(tx, make_event(
                "user.account.lock", now=now, severity="WARN", display_message="Max sign in attempts exceeded",
                actor=sign_in_actor(username, user), client=audit.client_part(),
                targets=[{"id": user.id, "type": "User", "alternateId": user.login, "displayName": user.login}],
                debug_data={"failures": throttle.limit, "window_seconds": throttle.window,
                            "unlock": "automatic, when the oldest failure leaves the window"}))


def record_sign_in_refused(ctx: CoreContext, audit: Audit, username: str, refusal: Refusal) -> None:
    """An attempt refused without a password check: ``user.session.start`` FAILURE, LOCKED_OUT (the username)
    or RATE_LIMITED (the source address)."""
    now = ctx.now()
    user = find_user_by_login(ctx.store, username) if username else None
    reason = "LOCKED_OUT" if refusal.scope == "user" else "RATE_LIMITED"
    with ctx.store.transaction() as tx:
        ctx.syslog.record(tx, make_event(
            "user.session.start", now=now, result="FAILURE", reason=reason, severity="WARN",
            display_message="User login to Okta", actor=sign_in_actor(username, user), client=audit.client_part(),
            debug_data={"requestUri": f"/oauth2/{audit.as_id}/v1/authorize", "throttled_by": refusal.scope,
                        "retry_after_seconds": refusal.retry_after}))


async def sign_in(ctx: CoreContext, request: Request, req: AuthorizeRequest, raw: dict[str, str],
                  audit: Audit) -> Response:
    keys = await in_thread(ctx.store.list_signing_keys, req.server.id)
    form_token = raw.get("form_token", "")
    if not check_form_token(form_key(keys), form_token, req.params, request.cookies.get(COOKIE_NAME), ctx.now()):
        return await show_form(ctx, request, req, FORM_EXPIRED, status_code=400)
    if not await in_thread(spend_form_token, ctx, req, form_token):
        return await show_form(ctx, request, req, FORM_USED, status_code=400)
    username, secret = raw.get("username", ""), raw.get("password", "")
    throttle = ctx.sign_in_throttle
    assert throttle is not None  # CoreContext.__post_init__
    source = request.client.host if request.client else None
    attempt = throttle.begin(username, source, ctx.now())
    if isinstance(attempt, Refusal):
        await in_thread(record_sign_in_refused, ctx, audit, username, attempt)
        return await show_form(ctx, request, req, TOO_MANY_ATTEMPTS, status_code=429,
                               headers={"Retry-After": str(attempt.retry_after)})
    failed = False
    try:
        user = await in_thread(find_user_by_login, ctx.store, username) if username else None
        # On the hashing pool, from the event loop: no other thread waits while scrypt runs.
        valid = await averify_secret(secret, user.secret_hash if user is not None else None)
        failed = user is None or not valid
    except HashingBusy as busy:
        return await show_form(ctx, request, req, BUSY_PAGE, status_code=429, headers=busy.extra_headers)
    finally:
        locked = throttle.finish(attempt, failed=failed, now=ctx.now())
    if user is None or not valid:
        await in_thread(record_sign_in_failure, ctx, audit, username, user, locked)
        return await show_form(ctx, request, req, SIGN_IN_FAILED, status_code=401)
    code = await in_thread(grant_code, ctx, req, user, audit)
    return redirect_with(req, {"code": code})


__all__ = ["PARAMS", "authorize_endpoint", "grant_code", "validate_client", "validate_request"]


