"""The core listener's Starlette app: OAuth/OIDC endpoints, management API and system log (DESIGN §1)."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from authz.context import CoreContext
from authz.errors import OAuthError, ScopegateError
from authz.management.routing import MAX_JSON_BODY_BYTES, not_well_formed
from authz.responses import error_response, handle_scopegate_error


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

    return Starlette(
        routes=core_routes(ctx),
        middleware=[Middleware(BodyLimit, form_limit=ctx.config.core.max_form_bytes)],
        exception_handlers={ScopegateError: handle_scopegate_error, Exception: unexpected},
    )
