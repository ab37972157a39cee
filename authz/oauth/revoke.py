"""``POST /oauth2/{asId}/v1/revoke`` (RFC 7009, spec §2.8).

200 with an empty body whether or not the token was known, "to not leak information". "A client may
only revoke its own tokens": another client's token is left alone (and the attempt is logged).
Revoking an access token leaves its refresh token; revoking a refresh token revokes its chain and the
access tokens minted from it.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from authz.context import CoreContext
from authz.errors import ScopegateError
from authz.oauth.audit import Audit, record_failure, token_target
from authz.oauth.authenticate import authenticate
from authz.oauth.common import Endpoint, client_info, in_thread, load_protocol_server, no_store_headers, read_form
from authz.oauth.issue import revoke_refresh_chain
from authz.passwords import token_hash
from authz.tokens import read_own_jwt, token_scopes
from config.schema import AuthorizationServerConfig


def revoke_token(ctx: CoreContext, server: AuthorizationServerConfig, client_id: str, token: str, audit: Audit) -> bool:
    """Revoke ``token`` if it is a live token of this AS issued to ``client_id``; True if anything was revoked."""
    now = ctx.now()
    if token.count(".") == 2:
        claims = read_own_jwt(token, ctx.store.list_signing_keys(server.id), ctx.issuer_for(server.id), now)
        jti = str(claims.get("jti", "")) if claims else ""
        if claims is None or not jti.startswith("AT."):
            return False
        if claims.get("cid") != client_id:
            _not_owned(ctx, audit, jti, now)
            return False
        with ctx.store.transaction() as tx:
            tx.append_change("revoke_jti", {"as_id": server.id, "jti": jti, "exp": claims["exp"]})
            ctx.syslog.record(tx, audit.event(
                "app.oauth2.as.token.revoke", now, message="OAuth2 access token revoked",
                targets=[token_target("access_token", jti, expires=claims["exp"], scopes=tuple(token_scopes(claims)),
                                      subject=str(claims.get("sub")), audience=str(claims.get("aud")),
                                      as_id=server.id, client_id=client_id, user_id=claims.get("uid"))],
                extra={"token_type": "access_token"}))
        return True
    rt = ctx.store.get_refresh_token_by_hash(token_hash(token))
    if rt is None or rt.as_id != server.id or rt.status == "REVOKED":
        return False
    if rt.client_id != client_id:
        _not_owned(ctx, audit, rt.id, now)
        return False
    with ctx.store.transaction() as tx:
        revoked = revoke_refresh_chain(ctx, tx, rt.chain_id, now)
        ctx.syslog.record(tx, audit.event(
            "app.oauth2.as.token.revoke", now, message="OAuth2 refresh token revoked with its access tokens",
            targets=[token_target("refresh_token", rt.id, expires=rt.expires_at, scopes=rt.scopes,
                                  subject=rt.user_id or rt.client_id, audience=server.resource, as_id=server.id,
                                  client_id=client_id, user_id=rt.user_id)],
            extra={"token_type": "refresh_token", "revoked_refresh_token_ids": " ".join(revoked)}))
    return True


def _not_owned(ctx: CoreContext, audit: Audit, token_id: str, now: float) -> None:
    with ctx.store.transaction() as tx:
        ctx.syslog.record(tx, audit.event(
            "app.oauth2.as.token.revoke", now, result="FAILURE", reason="token_not_owned", severity="WARN",
            message="A client may only revoke its own tokens; the token was left unchanged",
            extra={"token_id": token_id}))


def revoke_endpoint(ctx: CoreContext) -> Endpoint:
    async def revoke(request: Request) -> Response:
        as_id = request.path_params["as_id"]
        audit = Audit(as_id, "app.oauth2.as.token.revoke", client=client_info(request))
        try:
            form, query = await read_form(request)
            audit.client["id"] = form.get("client_id")
            server = await load_protocol_server(ctx, as_id)
            audit.server = server
            endpoint = f"{ctx.issuer_for(as_id)}/v1/revoke"
            client = await authenticate(ctx, request, form, query, endpoint)
            audit.app, audit.client_auth_type = client.app, client.method
        except ScopegateError as exc:
            await in_thread(record_failure, ctx, audit, exc)
            raise
        token = form.get("token", "")
        revoked = bool(token) and await in_thread(revoke_token, ctx, server, client.client_id, token, audit)
        if revoked:
            # Visible to the proxy in this process before the response (CoreContext.refresh_revocations).
            await ctx.refresh_revocations()
        return Response(b"", status_code=200, headers=no_store_headers())

    return revoke


__all__ = ["revoke_endpoint", "revoke_token"]
