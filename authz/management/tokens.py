"""Refresh tokens, the admin view (spec §1.8): list and revoke per server+client and per user+client.

"Revoking a refresh token also revokes access tokens minted from it. Access tokens minted without a
refresh token are not affected." (spec §1.8)
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute

from authz.context import CoreContext
from authz.documents import Doc
from authz.errors import OktaApiError
from authz.management.audit import Caller
from authz.management.routing import admin_route, json_response, no_content, paginate
from authz.management.shapes import iso
from authz.oauth.issue import revoke_refresh_chain
from authz.store.base import RefreshToken
from authz.syslog import make_event


def management_token_routes(ctx: CoreContext) -> list[BaseRoute]:
    api = _TokenApi(ctx)
    by_server = "/api/v1/authorizationServers/{as_id}/clients"
    by_user = "/api/v1/users/{user_id}/clients"
    return [
        admin_route(ctx, by_server, {"GET": api.list_clients}),
        admin_route(ctx, by_server + "/{client_id}/tokens", {"GET": api.list_tokens, "DELETE": api.revoke_tokens}),
        admin_route(ctx, by_server + "/{client_id}/tokens/{token_id}", {"GET": api.get_token,
                                                                         "DELETE": api.revoke_token}),
        admin_route(ctx, by_user, {"GET": api.list_clients}),
        admin_route(ctx, by_user + "/{client_id}/tokens", {"GET": api.list_tokens, "DELETE": api.revoke_tokens}),
        admin_route(ctx, by_user + "/{client_id}/tokens/{token_id}", {"GET": api.get_token,
                                                                       "DELETE": api.revoke_token}),
    ]


class _TokenApi:
    def __init__(self, ctx: CoreContext) -> None:
        self.ctx = ctx
        self.base = ctx.config.issuer

    def _live(self, request: Request, client_id: str | None) -> list[RefreshToken]:
        """The live refresh tokens the path selects (blocking). The parent objects must exist."""
        params = request.path_params
        as_id, user_id = params.get("as_id"), params.get("user_id")
        store = self.ctx.store
        if as_id is not None and store.get_object("authorization_server", as_id) is None:
            raise OktaApiError.not_found(as_id, "AuthorizationServer")
        if user_id is not None and store.get_object("user", user_id) is None:
            raise OktaApiError.not_found(user_id, "User")
        if client_id is not None and store.get_object("app", client_id) is None:
            raise OktaApiError.not_found(client_id, "Application")
        now = self.ctx.now()
        tokens = store.list_refresh_tokens(as_id=as_id, client_id=client_id, user_id=user_id)
        return sorted((t for t in tokens if t.status == "ACTIVE" and (t.expires_at is None or t.expires_at > now)),
                      key=lambda t: (t.issued_at, t.id))

    def _out(self, token: RefreshToken) -> Doc:
        href = f"{self.base}/api/v1/authorizationServers/{token.as_id}/clients/{token.client_id}/tokens/{token.id}"
        return {
            "id": token.id,
            "status": token.status,
            "created": iso(token.issued_at),
            "lastUpdated": iso(token.last_used_at),
            "expiresAt": iso(token.expires_at) if token.expires_at is not None else None,
            "issuer": self.ctx.issuer_for(token.as_id),
            "clientId": token.client_id,
            "userId": token.user_id,
            "scopes": list(token.scopes),
            "_links": {"self": {"href": href}, "revoke": {"href": href, "hints": {"allow": ["DELETE"]}},
                       "client": {"href": f"{self.base}/api/v1/apps/{token.client_id}"},
                       **({"user": {"href": f"{self.base}/api/v1/users/{token.user_id}"}} if token.user_id else {})},
        }

    async def list_clients(self, request: Request) -> Response:
        tokens = await asyncio.to_thread(self._live, request, None)
        clients = sorted({t.client_id for t in tokens})
        apps = await asyncio.to_thread(lambda: {c: self.ctx.store.get_object("app", c) for c in clients})
        names = {c: str(obj.document.get("name", c)) if obj is not None else c for c, obj in apps.items()}
        return paginate(request, [
            {"id": c, "client_id": c, "client_name": names[c],
             "client_uri": None, "logo_uri": None,
             "_links": {"app": {"href": f"{self.base}/api/v1/apps/{c}"}}} for c in clients], default_limit=20)

    async def list_tokens(self, request: Request) -> Response:
        tokens = await asyncio.to_thread(self._live, request, request.path_params["client_id"])
        return paginate(request, [self._out(t) for t in tokens], default_limit=20)

    async def get_token(self, request: Request) -> Response:
        token_id = request.path_params["token_id"]
        tokens = await asyncio.to_thread(self._live, request, request.path_params["client_id"])
        for token in tokens:
            if token.id == token_id:
                return json_response(self._out(token))
        raise OktaApiError.not_found(token_id, "OAuth2RefreshToken")

    async def revoke_tokens(self, request: Request) -> Response:
        await self._revoke(request, lambda tokens: tokens)
        return no_content()

    async def revoke_token(self, request: Request) -> Response:
        token_id = request.path_params["token_id"]

        def pick(tokens: list[RefreshToken]) -> list[RefreshToken]:
            chosen = [t for t in tokens if t.id == token_id]
            if not chosen:
                raise OktaApiError.not_found(token_id, "OAuth2RefreshToken")
            return chosen

        await self._revoke(request, pick)
        return no_content()

    async def _revoke(self, request: Request, pick: Callable[[list[RefreshToken]], list[RefreshToken]]) -> None:
        caller = Caller.of(request)
        client_id = request.path_params["client_id"]

        def revoke() -> None:
            store = self.ctx.store
            chosen = pick(self._live(request, client_id))
            now = self.ctx.now()
            with store.transaction() as tx:
                # The whole rotation chain goes, and every access token minted from any of its members. Read
                # inside the transaction under the chain's lock (revoke_refresh_chain), not before it: a
                # refresh committed in between would otherwise leave a live token in a revoked chain (issue 8).
                for chain_id in dict.fromkeys(t.chain_id for t in chosen):
                    revoke_refresh_chain(self.ctx, tx, chain_id, now)
                for t in chosen:
                    self.ctx.syslog.record(tx, make_event(
                        "app.oauth2.as.token.revoke", now=now, display_message="Revoke refresh token (admin API)",
                        actor=caller.actor(), client={"ipAddress": caller.ip, "userAgent": caller.user_agent},
                        targets=[{"id": t.id, "type": "RefreshToken", "alternateId": t.id, "displayName": "refresh token",
                                  "detailEntry": {"AuthorizationServer": t.as_id, "PublicClientApp": t.client_id,
                                                  "User": t.user_id}}],
                        debug_data={"source": "management-api", "authorization_server": t.as_id,
                                    "client_id": t.client_id}))

        await asyncio.to_thread(revoke)
        await self.ctx.refresh_revocations()
