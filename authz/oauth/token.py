"""``POST /oauth2/{asId}/v1/token`` (spec §2.4): authenticate the client, dispatch the grant."""

from __future__ import annotations

from collections.abc import Callable

from starlette.requests import Request
from starlette.responses import Response

from authz.clientauth import AuthenticatedClient, parse_basic
from authz.context import CoreContext
from authz.errors import OAuthError, ScopegateError
from authz.oauth import grants, refresh
from authz.oauth.audit import Audit, RecordedOAuthError, record_failure
from authz.oauth.authenticate import authenticate
from authz.oauth.common import (
    Endpoint,
    client_info,
    in_thread,
    json_response,
    load_protocol_server,
    no_store_headers,
    read_form,
)
from authz.oauth.issue import unauthorized_client
from authz.policy import format_list
from config.schema import GRANT_TYPES, AuthorizationServerConfig

GrantHandler = Callable[[CoreContext, AuthorizationServerConfig, AuthenticatedClient, dict[str, str], Audit],
                        dict[str, object]]

HANDLERS: dict[str, GrantHandler] = {
    "client_credentials": grants.client_credentials,
    "password": grants.password,
    "authorization_code": grants.authorization_code,
    "refresh_token": refresh.refresh_token,
}
SUPPORTED = tuple(g for g in GRANT_TYPES if g in HANDLERS)


def check_grant_type(client: AuthenticatedClient, grant_type: str | None) -> str:
    """Spec §9 D6: unknown or unsupported → unsupported_grant_type; known but not the client's →
    unauthorized_client. Both name the client's configured grant types."""
    configured = format_list(client.app.config.grant_types)
    if not grant_type:
        raise OAuthError("invalid_request", f"The token request must specify a 'grant_type'. Valid values: "
                         f"{format_list(list(SUPPORTED))}", reason="missing_grant_type")
    if grant_type not in HANDLERS:
        raise OAuthError("unsupported_grant_type", "The authorization grant type is not supported by the "
                         f"authorization server. Configured grant types: {configured}.", reason="unsupported_grant_type")
    if grant_type not in client.app.config.grant_types:
        raise unauthorized_client(client.app)
    return grant_type


def _basic_client_id(authorization: str | None) -> str | None:
    """The client id a Basic header names, for the log of a failed authentication (never the secret)."""
    if not authorization or not authorization.lower().startswith("basic "):
        return None
    try:
        return parse_basic(authorization)[0]
    except OAuthError:
        return None


def token_endpoint(ctx: CoreContext) -> Endpoint:
    async def token(request: Request) -> Response:
        as_id = request.path_params["as_id"]
        audit = Audit(as_id, "app.oauth2.as.token.grant", client=client_info(request))
        try:
            form, query = await read_form(request)
            audit.grant_type = form.get("grant_type")
            audit.requested_scopes = form.get("scope")
            audit.client["id"] = form.get("client_id") or _basic_client_id(request.headers.get("authorization"))
            server = await load_protocol_server(ctx, as_id)
            audit.server = server
            endpoint = f"{ctx.issuer_for(as_id)}/v1/token"
            client = await authenticate(ctx, request, form, query, endpoint)
            audit.app, audit.client_auth_type = client.app, client.method
            grant_type = check_grant_type(client, form.get("grant_type"))
            handler = HANDLERS[grant_type]
            body = await in_thread(handler, ctx, server, client, form, audit)
        except ScopegateError as exc:
            if ctx.token_metrics is not None:
                ctx.token_metrics.record(audit.server, audit.grant_type, exc)
            if not isinstance(exc, RecordedOAuthError):
                await in_thread(record_failure, ctx, audit, exc)
            if audit.revoked:
                await ctx.refresh_revocations()
            raise
        if ctx.token_metrics is not None:
            ctx.token_metrics.record(audit.server, audit.grant_type, None)
        return json_response(body, headers=no_store_headers())

    return token


__all__ = ["HANDLERS", "check_grant_type", "token_endpoint"]
