"""``GET|POST /oauth2/{asId}/v1/userinfo`` (OIDC Core §5.3, spec §2.6): claims by granted scopes."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from authz.context import CoreContext
from authz.errors import BearerError
from authz.model import get_user
from authz.oauth.common import Endpoint, in_thread, json_response, load_protocol_server, no_store_headers
from authz.tokens import custom_claims, read_own_jwt, token_scopes, user_claims
from config.schema import AuthorizationServerConfig

INVALID_TOKEN = "The access token is invalid"
INSUFFICIENT = ("The access token must provide access to at least one of these scopes - profile, email, address "
                "or phone")


def userinfo_claims(ctx: CoreContext, server: AuthorizationServerConfig, token: str) -> dict[str, Any]:
    claims = read_own_jwt(token, ctx.store.list_signing_keys(server.id), ctx.issuer_for(server.id), ctx.now(),
                          audience=server.resource)
    if claims is None or not str(claims.get("jti", "")).startswith("AT.") or ctx.revocation.is_revoked(claims, server.id):
        raise BearerError("invalid_token", INVALID_TOKEN, realm="IdentityProvider", reason="invalid_token")
    scopes = token_scopes(claims)
    if "openid" not in scopes or "uid" not in claims:
        raise BearerError("insufficient_scope", INSUFFICIENT, realm="IdentityProvider", reason="insufficient_scope")
    user = get_user(ctx.store, str(claims["uid"]))
    if user is None or not user.is_active:
        raise BearerError("invalid_token", INVALID_TOKEN, realm="IdentityProvider", reason="user_not_active")
    body: dict[str, Any] = {"sub": user.id}
    body.update(user_claims(user.config, scopes))
    for name, value in custom_claims(server.claims, "IDENTITY", scopes, user.config, str(claims.get("cid"))).items():
        body.setdefault(name, value)
    return body


def bearer_token(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise BearerError(None, realm="IdentityProvider")
    return value.strip()


def userinfo_endpoint(ctx: CoreContext) -> Endpoint:
    async def userinfo(request: Request) -> Response:
        server = await load_protocol_server(ctx, request.path_params["as_id"])
        token = bearer_token(request)
        body = await in_thread(userinfo_claims, ctx, server, token)
        return json_response(body, headers=no_store_headers())

    return userinfo


__all__ = ["userinfo_claims", "userinfo_endpoint"]
