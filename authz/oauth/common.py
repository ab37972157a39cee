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


async def read_form(request: Request) -> tuple[dict[str, str], dict[str, str]]:
    """The POST form and the query string, each without repeated names."""
    query = single_values(list(request.query_params.multi_items()))
    if request.method != "POST":
        return {}, query
    form = await request.form()
    return single_values(list(form.multi_items())), query


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
