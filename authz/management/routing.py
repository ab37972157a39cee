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
MAX_JSON_BODY_BYTES = 1 << 20
"""Management request bodies: the largest Okta object (an authorization server with its policies) is a few
KiB; a MiB leaves room and keeps one request from holding the core's memory."""
MAX_JSON_DEPTH = 32
"""Nesting of objects and arrays in a management request body; Okta's deepest documented shape (a rule's
``conditions.people.groups.include``) is five levels."""
NOT_WELL_FORMED = "The request body was not well-formed."


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


def not_well_formed(*causes: str, status_code: int = 400) -> OktaApiError:
    """Okta's E0000003 (Reader exception): "The request body was not well-formed." (HTTP 400)."""
    return OktaApiError(status_code, "E0000003", NOT_WELL_FORMED, causes)


async def read_body(request: Request, limit: int = MAX_JSON_BODY_BYTES) -> bytes:
    """The body, read in chunks and refused (413 E0000003) as soon as it passes ``limit`` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise not_well_formed(f"The request body exceeds {limit} bytes.", status_code=413)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise not_well_formed(f"The request body exceeds {limit} bytes.", status_code=413)
        chunks.append(chunk)
    return b"".join(chunks)


def json_depth_exceeds(value: Any, limit: int) -> bool:
    """True if ``value`` nests arrays/objects deeper than ``limit``; iterative, so it cannot recurse too deep."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


async def read_json(request: Request) -> dict[str, Any]:
    """The request body as a JSON object; E0000003 (Okta's 'not well-formed') otherwise.

    Issue 8 item 14: bounded in size (``MAX_JSON_BODY_BYTES``, 413) and nesting (``MAX_JSON_DEPTH``, 400).
    ``json.loads`` itself raises RecursionError at about the interpreter's recursion limit, and whatever
    handles the parsed document afterwards (validation, the system log's change details) recurses too,
    so a document deeper than the limit is refused here rather than half-way through a handler.
    """
    raw = await read_body(request)
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise not_well_formed() from None
    if not isinstance(body, dict):
        raise not_well_formed()
    if json_depth_exceeds(body, MAX_JSON_DEPTH):
        raise not_well_formed(f"The request body nests objects or arrays deeper than {MAX_JSON_DEPTH} levels.")
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
