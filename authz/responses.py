"""The one place where an error of the family in ``authz/errors.py`` becomes an HTTP response."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from authz.errors import ScopegateError


def error_response(exc: ScopegateError) -> Response:
    return Response(exc.body_bytes(), status_code=exc.status_code, headers=exc.get_headers())


async def handle_scopegate_error(request: Request, exc: Exception) -> Response:
    """Starlette exception handler for the core and ops listeners."""
    assert isinstance(exc, ScopegateError)
    return error_response(exc)
