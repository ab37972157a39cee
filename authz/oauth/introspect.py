"""``POST /oauth2/{asId}/v1/introspect`` (RFC 7662, spec §2.7, §5.3, §9 D11).

Callers authenticate as at /token. Any token that is not an active token of *this* authorization
server (unknown, malformed, expired, revoked, or issued by another AS) is exactly ``{"active": false}``.
Other clients of the same AS may introspect a token (the resource server is often its own client).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from authz.context import CoreContext
from authz.model import get_user
from authz.oauth.authenticate import authenticate
from authz.oauth.common import Endpoint, in_thread, json_response, load_protocol_server, no_store_headers, read_form
from authz.oauth.refresh import is_usable
from authz.passwords import token_hash
from authz.tokens import read_own_jwt, token_scopes
from config.schema import AuthorizationServerConfig

INACTIVE: dict[str, Any] = {"active": False}


def introspect_token(ctx: CoreContext, server: AuthorizationServerConfig, token: str,
                     caller: str | None = None) -> dict[str, Any]:
    """The RFC 7662 answer for ``token`` as seen by the client ``caller``."""
    body = _introspect(ctx, server, token)
    if body.get("active") and caller is not None and not server.introspect_other_clients \
            and body.get("client_id") != caller:
        return INACTIVE
    return body


def _introspect(ctx: CoreContext, server: AuthorizationServerConfig, token: str) -> dict[str, Any]:
    now = ctx.now()
    issuer = ctx.issuer_for(server.id)
    if token.count(".") == 2:
        claims = read_own_jwt(token, ctx.store.list_signing_keys(server.id), issuer, now)
        if claims is None or ctx.revocation.is_revoked(claims, server.id):
            return INACTIVE
        jti = str(claims.get("jti", ""))
        if jti.startswith("AT."):
            if claims.get("aud") != server.resource:
                return INACTIVE
            body = {"active": True, "token_type": "Bearer", "scope": " ".join(token_scopes(claims)),
                    "client_id": claims.get("cid"), "exp": claims["exp"], "iat": claims["iat"],
                    "sub": claims.get("sub"), "aud": claims.get("aud"), "iss": claims.get("iss"), "jti": jti}
            if "uid" in claims:
                body["username"] = claims["sub"]
                body["uid"] = claims["uid"]
            return body
        if jti.startswith("ID."):
            return {"active": True, "token_type": "id_token", "client_id": claims.get("aud"), "exp": claims["exp"],
                    "iat": claims["iat"], "sub": claims.get("sub"), "aud": claims.get("aud"),
                    "iss": claims.get("iss"), "jti": jti}
        return INACTIVE
    rt = ctx.store.get_refresh_token_by_hash(token_hash(token))
    if rt is None or rt.as_id != server.id or not is_usable(ctx, rt, now) or rt.status != "ACTIVE":
        return INACTIVE
    user = get_user(ctx.store, rt.user_id) if rt.user_id else None
    if rt.user_id is not None and (user is None or not user.is_active):
        return INACTIVE
    body = {"active": True, "token_type": "refresh_token", "scope": " ".join(rt.scopes), "client_id": rt.client_id,
            "iat": int(rt.issued_at), "iss": issuer, "sub": user.login if user else rt.client_id}
    if rt.expires_at is not None:
        body["exp"] = int(rt.expires_at)
    if user is not None:
        body["username"] = user.login
        body["uid"] = user.id
    return body


def introspect_endpoint(ctx: CoreContext) -> Endpoint:
    async def introspect(request: Request) -> Response:
        as_id = request.path_params["as_id"]
        form, query = await read_form(request)
        server = await load_protocol_server(ctx, as_id)
        endpoint = f"{ctx.issuer_for(as_id)}/v1/introspect"
        client = await authenticate(ctx, request, form, query, endpoint)
        token = form.get("token", "")
        body = await in_thread(introspect_token, ctx, server, token, client.client_id) if token else INACTIVE
        return json_response(body, headers=no_store_headers())

    return introspect


__all__ = ["introspect_endpoint", "introspect_token"]
