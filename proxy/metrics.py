"""The proxy's Prometheus metrics, against an injected registry (served by the ops listener).

Labels are bounded (DESIGN §7): route name, decision and reason from ``proxy/reasons.py``, cache result;
never a path, user or token. Children are built at start-up for every route and reason, so a request
only looks one up in a dict.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from proxy import reasons
from proxy.decision import Decision
from proxy.routes import NONE, UNROUTED

_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_FORWARD_REASONS = (reasons.UPSTREAM_UNAVAILABLE, reasons.UPSTREAM_TIMEOUT, reasons.TOO_LARGE, reasons.READ_TIMEOUT)


_Child = TypeVar("_Child", Counter, Histogram)


class LoopValue:
    """A metric value without a lock, for series only the event loop's thread changes (issue 11 item 3).

    prometheus_client guards every value with a ``threading.Lock`` (``MutexValue``): a lock acquired and released
    per increment, five per request here (the request counter, two per histogram, the token-cache counter).
    Measured (2026-12-03, 2 CPUs shared with other jobs, load 10-12): recording one request's metrics took 4.75 µs
    with the locks and 2.26 µs without (the best of 9 x 50,000 in each of 3 alternating runs), about 2 % of the
    gate's CPU per request; an end-to-end A/B of CPU per request under wrk could not resolve 2 % on that machine
    (90-199 µs per request either way). Every series of ``ProxyMetrics`` is changed by the proxy's requests on the
    loop's thread only, so no two threads ever add at once; a scrape (on the loop, or a worker's snapshot thread)
    reads a float, which the interpreter reads whole."""

    __slots__ = ("_value",)

    def __init__(self, value: float = 0.0) -> None:
        self._value = value

    def inc(self, amount: float) -> None:
        self._value += amount

    def set(self, value: float, timestamp: float | None = None) -> None:
        self._value = value

    def set_exemplar(self, exemplar: object) -> None:
        pass

    def get(self) -> float:
        return self._value

    def get_exemplar(self) -> None:
        return None


def unlock(child: _Child) -> _Child:
    """Give a counter's or histogram's child (no labels, or one ``labels()`` result) lock-free values; a
    prometheus_client whose internals differ is left as it is (tests/proxy/test_workers.py notices)."""
    value = getattr(child, "_value", None)
    if value is not None and type(value).__name__ == "MutexValue":
        child._value = LoopValue(value.get())  # type: ignore[attr-defined]
    total = getattr(child, "_sum", None)
    buckets = getattr(child, "_buckets", None)
    if total is not None and type(total).__name__ == "MutexValue" and isinstance(buckets, list):
        child._sum = LoopValue(total.get())  # type: ignore[attr-defined]
        child._buckets = [LoopValue(b.get()) for b in buckets]  # type: ignore[attr-defined]
    return child


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
        unlock(self.upstream)
        self.cache_hit = unlock(self.token_cache.labels("hit"))
        self.cache_miss = unlock(self.token_cache.labels("miss"))
        self._requests: dict[tuple[str, str, str], Counter] = {}
        self._durations: dict[str, Histogram] = {}

    def prebuild(self, route_names: Iterable[str]) -> None:
        """Build the children of every (route, decision, reason) a request can produce."""
        for route in (*route_names, UNROUTED, NONE):
            self._durations[route] = unlock(self.duration.labels(route))
            for reason in (*reasons.ALLOW_REASONS, *_FORWARD_REASONS):
                self._requests[(route, reasons.ALLOW, reason)] = unlock(self.requests.labels(route, reasons.ALLOW, reason))
            for reason in reasons.DENY_REASONS:
                self._requests[(route, reasons.DENY, reason)] = unlock(self.requests.labels(route, reasons.DENY, reason))

    def watch_revocation_age(self, age: Callable[[], float]) -> None:
        """Read the revocation state's age at scrape time."""
        self.revocation_age.set_function(age)

    def record(self, decision: Decision) -> None:
        key = (decision.route, decision.decision, decision.reason)
        child = self._requests.get(key)
        if child is None:
            child = self._requests[key] = unlock(self.requests.labels(*key))
        child.inc()
        duration = self._durations.get(decision.route)
        if duration is None:
            duration = self._durations[decision.route] = unlock(self.duration.labels(decision.route))
        duration.observe(decision.duration)
        if decision.upstream_duration is not None:
            self.upstream.observe(decision.upstream_duration)


# ------------------------------------------------------------------------------------------ workers

SNAPSHOT_INTERVAL = 1.0
"""Seconds between two snapshots of a worker's metrics: how far behind another worker's figures may be."""

GAUGE_MERGE: dict[str, Callable[[Iterable[float]], float]] = {
    "scopegate_requests_in_flight": sum,
    "scopegate_revocation_state_age_seconds": max,  # the stalest worker is what an alert must see
    "scopegate_ready": min,  # ready only if every worker is
    "scopegate_readiness_check": min,
}
"""How a gauge of every live worker becomes one value. A gauge not named here is reported per worker, with a
``worker`` label (its index); counters and histograms are summed over every worker that ever ran."""


class WorkerMetrics:
    """Metrics of ``scopegate run --workers N`` as one (issue 11 item 2), without a cost per increment.

    Each worker keeps its own registry, exactly as a single process does (no shared memory, no file write per
    increment, as prometheus_client's multiprocess mode would pay: ~6 locked mmap writes per request), and writes
    a snapshot of it to ``directory`` every ``SNAPSHOT_INTERVAL`` seconds and when it stops. A scrape reaches one
    worker (the ops port is shared too); it answers its own live figures merged with the others' last snapshots.
    The supervisor renames the snapshot of a worker that exited to ``dead-*``: its counters still count (a sum
    over workers never goes backwards when a worker is replaced), its gauges no longer do. A worker killed by
    SIGKILL loses what it counted since its last snapshot (at most ``SNAPSHOT_INTERVAL``).
    """

    def __init__(self, registry: CollectorRegistry, directory: str, index: int, pid: int | None = None) -> None:
        self.registry = registry
        self.directory = directory
        self.index = index
        self.pid = os.getpid() if pid is None else pid
        self.path = os.path.join(directory, f"live-{index}-{self.pid}.json")

    def snapshot(self) -> list[dict[str, Any]]:
        return [{"name": m.name, "type": m.type, "help": m.documentation, "unit": m.unit,
                 "samples": [[s.name, s.labels, s.value] for s in m.samples if not s.name.endswith("_created")]}
                for m in self.registry.collect()]

    def write(self) -> None:
        """Replace this worker's snapshot file (atomically: a reader sees the old one or the new one)."""
        text = json.dumps({"worker": self.index, "pid": self.pid, "metrics": self.snapshot()}, separators=(",", ":"))
        temporary = f"{self.path}.tmp"
        with open(temporary, "w", encoding="utf-8") as file:
            file.write(text)
        os.replace(temporary, self.path)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(SNAPSHOT_INTERVAL)
            try:
                await asyncio.to_thread(self.write)
            except OSError as exc:  # a full or removed directory: the next round tries again
                print(f"scopegate: cannot write the worker's metrics snapshot: {exc}", file=sys.stderr, flush=True)

    def _others(self) -> list[tuple[bool, dict[str, Any]]]:
        found: list[tuple[bool, dict[str, Any]]] = []
        try:
            names = os.listdir(self.directory)
        except OSError:
            return found
        for name in names:
            if not name.endswith(".json") or name == os.path.basename(self.path):
                continue
            live = name.startswith("live-")
            path = os.path.join(self.directory, name)
            try:
                with open(path, encoding="utf-8") as file:
                    found.append((live, json.load(file)))
            except FileNotFoundError:
                if live:  # renamed dead-* between the listing and the read: its counters still count
                    try:
                        with open(os.path.join(self.directory, "dead-" + name[5:]), encoding="utf-8") as file:
                            found.append((False, json.load(file)))
                    except (OSError, ValueError):
                        pass
            except (OSError, ValueError):  # a snapshot being written is replaced atomically, so this is rare
                continue
        return found

    def merged(self) -> list[Metric]:
        snapshots = [(True, {"worker": self.index, "metrics": self.snapshot()}), *self._others()]
        families: dict[str, Metric] = {}
        sums: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
        gauges: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], list[float]]] = {}
        live_workers = 0
        for live, snapshot in snapshots:
            live_workers += live
            worker = str(snapshot.get("worker", "?"))
            for family in snapshot.get("metrics", []):
                name, kind = family["name"], family["type"]
                if name not in families:
                    families[name] = Metric(name, family["help"], kind, family.get("unit", ""))
                additive = kind in ("counter", "histogram", "gaugehistogram")
                if not additive and not live:
                    continue
                for sample_name, labels, value in family["samples"]:
                    if additive:
                        key = (sample_name, tuple(sorted(labels.items())))
                        per_name = sums.setdefault(name, {})
                        per_name[key] = per_name.get(key, 0.0) + value
                    elif name in GAUGE_MERGE:
                        gauges.setdefault(name, {}).setdefault((sample_name, tuple(sorted(labels.items()))),
                                                               []).append(value)
                    else:
                        families[name].add_sample(sample_name, {**labels, "worker": worker}, value)
        for name, values in sums.items():
            for (sample_name, labels), total in values.items():
                families[name].add_sample(sample_name, dict(labels), total)
        for name, groups in gauges.items():
            for (sample_name, labels), values_ in groups.items():
                families[name].add_sample(sample_name, dict(labels), GAUGE_MERGE[name](values_))
        workers = Metric("scopegate_workers", "Worker processes serving now (scopegate run --workers).", "gauge")
        workers.add_sample("scopegate_workers", {}, live_workers)
        return [*families.values(), workers]

    def render(self) -> bytes:
        """The Prometheus text of every worker as one."""
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Fixed(self.merged()))
        return generate_latest(registry)


class _Fixed(Collector):
    def __init__(self, metrics: list[Metric]) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[Metric]:
        return self.metrics
