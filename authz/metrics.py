"""The core's Prometheus metrics: tokens the token endpoint issued and denied (DESIGN §7).

Labels are bounded: the authorization server is one the store holds (``unknown`` when the request named
none that loaded), the grant type one of the grant types the config knows (``unsupported`` otherwise,
including a missing one), the outcome ``issued``, ``denied`` (a 4xx answer) or ``error`` (a 5xx).
Nothing from the request is ever used as a label value as it came.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter

from authz.errors import ScopegateError
from config.schema import GRANT_TYPES, AuthorizationServerConfig

ISSUED, DENIED, ERROR = "issued", "denied", "error"
UNKNOWN_SERVER, UNSUPPORTED_GRANT = "unknown", "unsupported"


class TokenMetrics:
    def __init__(self, registry: CollectorRegistry, server_ids: Iterable[str] = ()) -> None:
        self.tokens = Counter("scopegate_tokens", "Token endpoint answers, by authorization server, grant type "
                              "and outcome (issued, denied, error).", ["authorization_server", "grant_type", "outcome"],
                              registry=registry)
        # Every series a configured server can produce exists from the start, so rate() and the
        # dashboard see zeros rather than nothing before the first token.
        for server_id in server_ids:
            for grant_type in (*GRANT_TYPES, UNSUPPORTED_GRANT):
                for outcome in (ISSUED, DENIED, ERROR):
                    self.tokens.labels(server_id, grant_type, outcome)

    def record(self, server: AuthorizationServerConfig | None, grant_type: str | None,
               error: ScopegateError | None) -> None:
        outcome = ISSUED if error is None else ERROR if error.status_code >= 500 else DENIED
        self.tokens.labels(server.id if server is not None else UNKNOWN_SERVER,
                           grant_type if grant_type in GRANT_TYPES else UNSUPPORTED_GRANT, outcome).inc()


__all__ = ["TokenMetrics"]
