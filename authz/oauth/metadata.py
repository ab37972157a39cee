"""Discovery (spec §2.2, RFC 8414, OIDC Discovery) and the JWKS (spec §2.1)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from authz.clientauth import ASSERTION_ALGORITHMS
from authz.context import CoreContext
from authz.keys import jwks_document
from authz.oauth.common import Endpoint, in_thread, json_response, load_public_server
from config.schema import OIDC_SCOPES, AuthorizationServerConfig

JWKS_MAX_AGE = 900
"""Spec §2.1: '/keys ... Cache-Control: max-age=…, must-revalidate'. Short enough that a rotation's new
key is seen soon; verifiers also refetch on an unknown kid (spec §5.4)."""

AUTH_METHODS = ["client_secret_basic", "client_secret_post", "private_key_jwt", "none"]


def access_token_claim_names(server: AuthorizationServerConfig) -> list[str]:
    """The access-token claims the AS emits (spec §4.1, RFC 9068), with its ``accessTokenClaims`` setting."""
    scope_claims = {"okta": ["scp"], "rfc9068": ["scope"], "both": ["scp", "scope"]}[server.access_token_claims]
    return ["ver", "jti", "iss", "aud", "iat", "exp", "cid", "client_id", "uid", *scope_claims, "sub"]


def metadata_document(issuer: str, server: AuthorizationServerConfig, *, oidc: bool) -> dict[str, Any]:
    """RFC 8414 §2 (and OIDC Discovery 1.0 §3 with ``oidc``): every REQUIRED and RECOMMENDED member that
    applies; ``tests/e2e/test_interop_standards.py`` holds the list and checks it."""
    published = [s.name for s in server.scopes if s.metadata_publish == "ALL_CLIENTS"]
    doc: dict[str, Any] = {
        "issuer": issuer,
        "authorization_endpoint": f"{issuer}/v1/authorize",
        "token_endpoint": f"{issuer}/v1/token",
        "jwks_uri": f"{issuer}/v1/keys",
        "introspection_endpoint": f"{issuer}/v1/introspect",
        "revocation_endpoint": f"{issuer}/v1/revoke",
        "response_types_supported": ["code"],
        "response_modes_supported": ["query", "fragment"],
        "grant_types_supported": ["authorization_code", "refresh_token", "password", "client_credentials"],
        "subject_types_supported": ["public"],
        "scopes_supported": [*OIDC_SCOPES, *published],
        "token_endpoint_auth_methods_supported": AUTH_METHODS,
        "introspection_endpoint_auth_methods_supported": AUTH_METHODS,
        "revocation_endpoint_auth_methods_supported": AUTH_METHODS,
        # RFC 8414 §2: with private_key_jwt listed, the signing algorithms "MUST be present" for each endpoint.
        "token_endpoint_auth_signing_alg_values_supported": ASSERTION_ALGORITHMS,
        "introspection_endpoint_auth_signing_alg_values_supported": ASSERTION_ALGORITHMS,
        "revocation_endpoint_auth_signing_alg_values_supported": ASSERTION_ALGORITHMS,
        "code_challenge_methods_supported": ["S256"],
        "claims_supported": access_token_claim_names(server),
        "request_parameter_supported": False,
        # RFC 9207 §3: every authorization response (success and error) carries ``iss`` (the mix-up defence).
        "authorization_response_iss_parameter_supported": True,
    }
    if oidc:
        doc["userinfo_endpoint"] = f"{issuer}/v1/userinfo"
        doc["id_token_signing_alg_values_supported"] = ["RS256"]
        doc["claims_supported"] = [*doc["claims_supported"], "auth_time", "amr", "idp", "nonce", "name",
                                   "given_name", "family_name", "preferred_username", "locale", "email",
                                   "email_verified", "phone_number", "at_hash"]
    return doc


def metadata_endpoint(ctx: CoreContext, *, oidc: bool) -> Endpoint:
    async def metadata(request: Request) -> Response:
        as_id = request.path_params["as_id"]
        server = await load_public_server(ctx, as_id)
        return json_response(metadata_document(ctx.issuer_for(as_id), server, oidc=oidc),
                             headers={"Cache-Control": "max-age=300"})

    return metadata


def keys_endpoint(ctx: CoreContext) -> Endpoint:
    async def keys(request: Request) -> Response:
        as_id = request.path_params["as_id"]
        await load_public_server(ctx, as_id)
        stored = await in_thread(ctx.store.list_signing_keys, as_id)
        # [OIDC]: "Any of the two or three keys listed are used to sign tokens": ACTIVE, NEXT and the
        # EXPIRED key that may still verify tokens signed before a rotation (spec §5.2).
        body = jwks_document(stored)
        return json_response(body, headers={"Cache-Control": f"max-age={JWKS_MAX_AGE}, must-revalidate"})

    return keys


__all__ = ["access_token_claim_names", "keys_endpoint", "metadata_document", "metadata_endpoint"]
