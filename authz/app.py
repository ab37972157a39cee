"""The core listener's Starlette app: OAuth/OIDC endpoints, management API and system log (DESIGN §1)."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute

from authz.context import CoreContext
from authz.errors import OAuthError, ScopegateError
from authz.responses import error_response, handle_scopegate_error


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
        exception_handlers={ScopegateError: handle_scopegate_error, Exception: unexpected},
    )
