"""The proxy's Prometheus metrics, against an injected registry (served by the ops listener).

Labels are bounded (DESIGN §7): route name, decision and reason from ``proxy/reasons.py``, cache result;
never a path, user or token. Children are built at start-up for every route and reason, so a request
only looks one up in a dict.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from proxy import reasons
from proxy.decision import Decision
from proxy.routes import NONE, UNROUTED

_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_FORWARD_REASONS = (reasons.UPSTREAM_UNAVAILABLE, reasons.UPSTREAM_TIMEOUT, reasons.TOO_LARGE, reasons.READ_TIMEOUT)


class ProxyMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter("scopegate_requests", "Requests through the gate, by route, decision and reason.",
                                ["route", "decision", "reason"], registry=registry)
        self.duration = Histogram("scopegate_request_duration_seconds", "Time from request to the end of the response.",
                                  ["route"], buckets=_BUCKETS, registry=registry)
        self.upstream = Histogram("scopegate_upstream_duration_seconds", "Time the upstream took to answer and stream.",
                                  buckets=_BUCKETS, registry=registry)
        self.token_cache = Counter("scopegate_token_cache", "Verified-token cache lookups.", ["result"], registry=registry)
        self.revocation_age = Gauge("scopegate_revocation_state_age_seconds",
                                    "Seconds since the revocation state last applied the change feed.", registry=registry)
        self.in_flight = Gauge("scopegate_requests_in_flight", "Requests being handled by the proxy.", registry=registry)
        self.active = 0
        """Requests being handled now: a plain int on the hot path, read by the gauge at scrape time (no lock)."""
        self.in_flight.set_function(lambda: self.active)
        self.cache_hit = self.token_cache.labels("hit")
        self.cache_miss = self.token_cache.labels("miss")
        self._requests: dict[tuple[str, str, str], Counter] = {}
        self._durations: dict[str, Histogram] = {}

    def prebuild(self, route_names: Iterable[str]) -> None:
        """Build the children of every (route, decision, reason) a request can produce."""
        for route in (*route_names, UNROUTED, NONE):
            self._durations[route] = self.duration.labels(route)
            for reason in (*reasons.ALLOW_REASONS, *_FORWARD_REASONS):
                self._requests[(route, reasons.ALLOW, reason)] = self.requests.labels(route, reasons.ALLOW, reason)
            for reason in reasons.DENY_REASONS:
                self._requests[(route, reasons.DENY, reason)] = self.requests.labels(route, reasons.DENY, reason)

    def watch_revocation_age(self, age: Callable[[], float]) -> None:
        """Read the revocation state's age at scrape time."""
        self.revocation_age.set_function(age)

    def record(self, decision: Decision) -> None:
        key = (decision.route, decision.decision, decision.reason)
        child = self._requests.get(key)
        if child is None:
            child = self._requests[key] = self.requests.labels(*key)
        child.inc()
        duration = self._durations.get(decision.route)
        if duration is None:
            duration = self._durations[decision.route] = self.duration.labels(decision.route)
        duration.observe(decision.duration)
        if decision.upstream_duration is not None:
            self.upstream.observe(decision.upstream_duration)
