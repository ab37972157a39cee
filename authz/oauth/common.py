"""What every protocol endpoint shares: reading the form, finding the AS, JSON answers."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import Response

from authz.context import CoreContext
from authz.errors import OAuthError, OktaApiError
from authz.model import get_server
from config.schema import AuthorizationServerConfig

T = TypeVar("T")
Endpoint = Callable[[Request], Awaitable[Response]]

DUPLICATE_PARAMS = "The request contained multiple parameters with the same name."
FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"
NOT_A_FORM = f"The request body must be sent with Content-Type: {FORM_CONTENT_TYPE}."
INVALID_AS = "The authorization server id is invalid."


def no_store_headers() -> dict[str, str]:
    """RFC 6749 §5.1: token responses carry 'Cache-Control: no-store' and 'Pragma: no-cache'."""
    return {"Cache-Control": "no-store", "Pragma": "no-cache"}


def json_response(body: Mapping[str, Any], status_code: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return Response(json.dumps(body, separators=(",", ":")), status_code=status_code,
                    media_type="application/json;charset=UTF-8", headers=dict(headers or {}))


def single_values(items: list[tuple[str, Any]]) -> dict[str, str]:
    """Spec §2.6: 'The request contained multiple parameters with the same name.' (RFC 6749 §3.1)."""
    out: dict[str, str] = {}
    for key, value in items:
        if key in out:
            raise OAuthError("invalid_request", DUPLICATE_PARAMS, reason="duplicate_parameters")
        if not isinstance(value, str):
            raise OAuthError("invalid_request", f"The '{key}' parameter must be a string.", reason="malformed_request")
        out[key] = value
    return out


def without_empty(values: dict[str, str]) -> dict[str, str]:
    """RFC 6749 §3.1: "Parameters sent without a value MUST be treated as if they were omitted from the
    request." (checked for repeats first: ``scope=&scope=x`` is still a repeated parameter)."""
    return {key: value for key, value in values.items() if value != ""}


async def read_form(request: Request) -> tuple[dict[str, str], dict[str, str]]:
    """The POST form and the query string, each without repeated names or empty values.

    RFC 6749 §3.2: the client "MUST use the HTTP POST method" with "the application/x-www-form-urlencoded
    format" (likewise RFC 7009 §2.1, RFC 7662 §2.1). A JSON or multipart body is refused rather than read
    as an empty form: otherwise a revocation sent as JSON would answer 200 and revoke nothing.
    """
    query = without_empty(single_values(list(request.query_params.multi_items())))
    if request.method != "POST":
        return {}, query
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type != FORM_CONTENT_TYPE:
        if media_type or await request.body():
            raise OAuthError("invalid_request", NOT_A_FORM, reason="unsupported_content_type")
        return {}, query  # an empty POST: the endpoint answers for the missing parameters
    form = await request.form()
    return without_empty(single_values(list(form.multi_items()))), query


def protocol_server(store_server: AuthorizationServerConfig | None) -> AuthorizationServerConfig:
    """Spec §2.6 invalid_authorization_server: an unknown or inactive AS on a protocol endpoint."""
    if store_server is None or store_server.status != "ACTIVE":
        raise OAuthError("invalid_request", INVALID_AS, reason="invalid_authorization_server")
    return store_server


async def load_protocol_server(ctx: CoreContext, as_id: str) -> AuthorizationServerConfig:
    return protocol_server(await asyncio.to_thread(get_server, ctx.store, as_id))


async def load_public_server(ctx: CoreContext, as_id: str) -> AuthorizationServerConfig:
    """Spec §2.1: 'An unknown AS id returns 404 E0000007 Not found: Resource not found: {id}
    (AuthorizationServer)'; an inactive AS is 'unavailable to clients' and answers the same."""
    server = await asyncio.to_thread(get_server, ctx.store, as_id)
    if server is None or server.status != "ACTIVE":
        raise OktaApiError.not_found(as_id, "AuthorizationServer")
    return server


async def in_thread(func: Callable[..., T], *args: Any) -> T:
    """Store calls block; the event loop also carries the proxy (authz/store/base.py)."""
    return await asyncio.to_thread(func, *args)


def client_info(request: Request, client_id: str | None = None) -> dict[str, Any]:
    """The LogEvent ``client`` part (spec §6.1)."""
    return {"id": client_id, "ipAddress": request.client.host if request.client else None,
            "userAgent": request.headers.get("user-agent")}
