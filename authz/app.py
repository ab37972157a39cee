"""The core listener's Starlette app: OAuth/OIDC endpoints, management API and system log (DESIGN §1)."""

from __future__ import annotations

from collections.abc import Mapping

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from authz.context import CoreContext
from authz.errors import OAuthError, OktaApiError, ScopegateError
from authz.management.routing import MAX_JSON_BODY_BYTES, not_well_formed
from authz.responses import error_response, handle_scopegate_error
from authz.store.errors import StoreError


def body_too_large(path: str, limit: int) -> ScopegateError:
    """413 in the shape of the endpoint: Okta's error object on the management API, RFC 6749 §5.2 elsewhere."""
    if path.startswith("/api/"):
        return not_well_formed(f"The request body exceeds {limit} bytes.", status_code=413)
    return OAuthError("invalid_request", f"The request body exceeds {limit} bytes.", status_code=413,
                      reason="request_too_large")


class BodyLimit:
    """Issue 8 item 4: the core reads at most ``form_limit`` body bytes on a protocol endpoint (forms) and
    ``json_limit`` on the management API, whatever the framing: a declared Content-Length over the limit is
    answered before the app runs, and a chunked body is counted as it arrives and refused at the limit
    (the error raised from ``receive`` reaches the app's one exception handler)."""

    def __init__(self, app: ASGIApp, form_limit: int, json_limit: int = MAX_JSON_BODY_BYTES) -> None:
        self.app = app
        self.form_limit = form_limit
        self.json_limit = json_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = str(scope.get("path", ""))
        limit = self.json_limit if path.startswith("/api/") else self.form_limit
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                await error_response(body_too_large(path, limit))(scope, receive, send)
                return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise body_too_large(path, limit)
            return message

        await self.app(scope, limited, send)


NOT_FOUND = "The requested resource was not found."
METHOD_NOT_ALLOWED = "The endpoint does not support the provided HTTP method."


def routing_error(path: str, method: str, status_code: int, headers: Mapping[str, str] | None = None) -> ScopegateError:
    """Issue 10 item 1: a path or method the core does not serve answers JSON, never Starlette's text/plain,
    in the shape of the family asked: Okta's error object under ``/api/`` (E0000007 / E0000022), RFC 6749 §5.2's
    elsewhere (``/oauth2/*``, ``/.well-known/*``). The path is not echoed: it is the client's text."""
    if path.startswith("/api/"):
        if status_code == 405:
            return OktaApiError.method_not_allowed(method if method.isalpha() and len(method) <= 16 else "?")
        return OktaApiError(404, "E0000007", "Not found: Resource not found", reason="not_found")
    if status_code == 405:
        return OAuthError("invalid_request", METHOD_NOT_ALLOWED, status_code=405, reason="method_not_allowed",
                          headers={k: v for k, v in (headers or {}).items() if k.lower() == "allow"})
    return OAuthError("not_found", NOT_FOUND, status_code=404, reason="not_found")


def core_routes(ctx: CoreContext) -> list[BaseRoute]:
    """Every route of the core; each part is optional while the tree is being built up."""
    routes: list[BaseRoute] = []
    from authz.oauth import oauth_routes

    routes += oauth_routes(ctx)
    from authz.logs_api import logs_routes

    routes += logs_routes(ctx)
    try:
        from authz.management import management_routes
    except ImportError:  # pragma: no cover - the management API lands with issue 4
        pass
    else:
        routes += management_routes(ctx)
    return routes


def build_core_app(ctx: CoreContext) -> Starlette:
    async def unexpected(request: Request, exc: Exception) -> Response:
        # Never leak internals: a bug answers like Okta's server_error, and the traceback goes to stderr.
        import traceback

        traceback.print_exception(exc)
        return error_response(OAuthError("server_error", "An unexpected error occurred.", status_code=500))

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code in (404, 405):
            return error_response(routing_error(request.url.path, request.method, exc.status_code, exc.headers))
        return error_response(OAuthError("invalid_request", str(exc.detail), status_code=exc.status_code,
                                         reason="http_error"))

    async def store_error(request: Request, exc: Exception) -> Response:
        # Issue 12: 503 in the endpoint family's shape; the body never names the store or the driver's message.
        assert isinstance(exc, StoreError)
        return error_response(exc.for_path(request.url.path))

    return Starlette(
        routes=core_routes(ctx),
        middleware=[Middleware(BodyLimit, form_limit=ctx.config.core.max_form_bytes)],
        exception_handlers={ScopegateError: handle_scopegate_error, StoreError: store_error, HTTPException: http_error,
                            Exception: unexpected},
    )
