"""The OAuth 2.0 / OIDC protocol endpoints of every local authorization server (spec §2).

``oauth_routes(ctx)`` serves ``/oauth2/{asId}/v1/{authorize,token,introspect,revoke,keys,userinfo}`` and
``/oauth2/{asId}/.well-known/{openid-configuration,oauth-authorization-server}`` and, in the RFC 8414 §3.1
form (the well-known segment between the host and the issuer's path), ``/.well-known/{oauth-authorization-server,
openid-configuration}/oauth2/{asId}`` (issue 10 item 1). Errors are raised as
``authz.errors`` exceptions and turned into responses by the core app's one handler.
"""

from __future__ import annotations

from starlette.routing import BaseRoute, Route

from authz.context import CoreContext


def oauth_routes(ctx: CoreContext) -> list[BaseRoute]:
    from authz.oauth.authorize import authorize_endpoint
    from authz.oauth.introspect import introspect_endpoint
    from authz.oauth.metadata import keys_endpoint, metadata_endpoint
    from authz.oauth.revoke import revoke_endpoint
    from authz.oauth.token import token_endpoint
    from authz.oauth.userinfo import userinfo_endpoint

    base = "/oauth2/{as_id}"
    return [
        Route(f"{base}/v1/token", token_endpoint(ctx), methods=["POST"]),
        Route(f"{base}/v1/authorize", authorize_endpoint(ctx), methods=["GET", "POST"]),
        Route(f"{base}/v1/introspect", introspect_endpoint(ctx), methods=["POST"]),
        Route(f"{base}/v1/revoke", revoke_endpoint(ctx), methods=["POST"]),
        Route(f"{base}/v1/userinfo", userinfo_endpoint(ctx), methods=["GET", "POST"]),
        Route(f"{base}/v1/keys", keys_endpoint(ctx), methods=["GET"]),
        Route(f"{base}/.well-known/openid-configuration", metadata_endpoint(ctx, oidc=True), methods=["GET"]),
        Route(f"{base}/.well-known/oauth-authorization-server", metadata_endpoint(ctx, oidc=False), methods=["GET"]),
        # RFC 8414 §3.1: for an issuer with a path, "the well-known URI suffix ... is inserted between the host
        # component and the path component". Strict clients (oauth4webapi, requests-oauth2client) ask only here.
        Route("/.well-known/oauth-authorization-server/oauth2/{as_id}", metadata_endpoint(ctx, oidc=False),
              methods=["GET"]),
        # RFC 8414 §5 applies the same rule to openid-configuration; OIDC Discovery's suffix form stays above.
        Route("/.well-known/openid-configuration/oauth2/{as_id}", metadata_endpoint(ctx, oidc=True), methods=["GET"]),
    ]


__all__ = ["oauth_routes"]
