"""The per-request decision: what the gate learned and decided, recorded by the metrics and the log.

One mutable object per request (like oauth2-proxy's request scope, STYLE.md): each stage fills in what it
knows; ``proxy/metrics.py`` and ``proxy/decisionlog.py`` read it once, at the end.
"""

from __future__ import annotations

from dataclasses import dataclass

from proxy import reasons
from proxy.routes import NONE


@dataclass(slots=True)
class Decision:
    request_id: str
    method: str
    started: float
    """perf_counter() at the start of the request."""
    time: float
    """Wall-clock time at the start (the injected clock)."""
    path: str = ""
    """The normalized path (empty when normalization refused the request)."""
    route: str = NONE
    as_id: str = ""
    client_id: str = ""
    subject: str = ""
    scopes: str = ""
    decision: str = reasons.DENY
    reason: str = reasons.INTERNAL_ERROR
    status: int = 500
    token_cache: str = ""
    """``hit`` or ``miss`` when a token was looked up."""
    duration: float = 0.0
    upstream_duration: float | None = None
    response_started: bool = False

    def allow(self, reason: str) -> None:
        self.decision = reasons.ALLOW
        self.reason = reason

    def deny(self, reason: str, status: int) -> None:
        self.decision = reasons.DENY
        self.reason = reason
        self.status = status
