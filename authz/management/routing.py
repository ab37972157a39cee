"""What every management route shares: admin authentication, method dispatch, JSON in and out, paging.

Errors are Okta's error object (``authz.errors.OktaApiError``), raised here and turned into a response
by the core app's one exception handler (``authz/responses.py``).
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from authz.context import CoreContext
from authz.errors import OktaApiError

Handler = Callable[[Request], Awaitable[Response]]

ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
MAX_LIMIT = 200


def check_admin_token(ctx: CoreContext, request: Request) -> int:
    """The index of the admin token the request carries; E0000011 otherwise.

    Okta's API token scheme is ``Authorization: SSWS <token>``; Okta's Python SDK sends it without the
    space (``SSWS<token>``), so both are accepted. Every configured token is compared, each in constant
    time, so the response time does not reveal which token (or which prefix) came close.
    """
    header = request.headers.get("authorization", "")
    if not header[:4].upper() == "SSWS":
        raise OktaApiError.invalid_token()
    presented = header[4:].strip().encode()
    found = -1
    for index, token in enumerate(ctx.config.admin_tokens):
        if hmac.compare_digest(presented, token.encode()) and found < 0:
            found = index
    if found < 0 or not presented:
        raise OktaApiError.invalid_token()
    return found


def admin_route(ctx: CoreContext, path: str, handlers: Mapping[str, Handler]) -> BaseRoute:
    """A route that authenticates the admin first, then answers E0000022 for a method it lacks."""

    async def endpoint(request: Request) -> Response:
        request.state.admin_token_index = check_admin_token(ctx, request)
        handler = handlers.get(request.method)
        if handler is None:
            raise OktaApiError.method_not_allowed(request.method)
        return await handler(request)

    return Route(path, endpoint, methods=ALL_METHODS)


def json_response(body: Any, status_code: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return Response(json.dumps(body, separators=(",", ":")), status_code=status_code,
                    media_type="application/json", headers=dict(headers or {}))


def no_content() -> Response:
    return Response(status_code=204)


async def read_json(request: Request) -> dict[str, Any]:
    """The request body as a JSON object; E0000003 (Okta's 'not well-formed') otherwise."""
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise OktaApiError(400, "E0000003", "The request body was not well-formed.") from None
    if not isinstance(body, dict):
        raise OktaApiError(400, "E0000003", "The request body was not well-formed.")
    return body


def query_flag(request: Request, name: str, default: bool) -> bool:
    value = request.query_params.get(name)
    if value is None:
        return default
    return value.lower() not in ("false", "0", "no")


def paginate(request: Request, items: Sequence[dict[str, Any]], default_limit: int = MAX_LIMIT) -> Response:
    """Okta's cursor pagination: ``limit`` and ``after`` (the id of the last item already seen), with
    ``Link: <…>; rel="next"`` while more items remain. Items are in a stable order (creation, then id)."""
    try:
        limit = int(request.query_params.get("limit", default_limit))
    except ValueError:
        raise OktaApiError.validation(["limit: must be an integer"]) from None
    if limit < 1:
        raise OktaApiError.validation(["limit: must be at least 1"])
    limit = min(limit, MAX_LIMIT)
    after = request.query_params.get("after")
    start = 0
    if after:
        ids = [str(item.get("id")) for item in items]
        start = ids.index(after) + 1 if after in ids else len(items)
    page = list(items[start:start + limit])
    base = str(request.url.replace(query=""))
    params = {k: v for k, v in request.query_params.items() if k not in ("after", "limit")}
    links = [f'<{base}?{urlencode({**params, "limit": limit})}>; rel="self"']
    if start + limit < len(items) and page:
        links.append(f'<{base}?{urlencode({**params, "limit": limit, "after": page[-1]["id"]})}>; rel="next"')
    return json_response(page, headers={"Link": ", ".join(links)})
