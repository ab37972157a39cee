"""The management API (``/api/v1``, Okta-compatible; issue 4), mounted under the core listener.

Okta's paths and JSON shapes (spec §1) onto the config schema's models: the file and the API share
one set of invariants. Every change is one store transaction with its system-log event, its change-feed
entries and the implicit revocations it implies (spec §5.2).
"""

from __future__ import annotations

from starlette.routing import BaseRoute

from authz.context import CoreContext
from authz.management.apps import management_app_routes
from authz.management.servers import management_server_routes
from authz.management.tokens import management_token_routes
from authz.management.users import management_user_routes


def management_routes(ctx: CoreContext) -> list[BaseRoute]:
    """Every ``/api/v1`` route except the system log's ``/api/v1/logs`` (``authz/logs_api.py``)."""
    return [
        *management_server_routes(ctx),
        *management_token_routes(ctx),
        *management_app_routes(ctx),
        *management_user_routes(ctx),
    ]


__all__ = ["management_routes"]
