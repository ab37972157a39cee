"""Keeps a process's revocation state in step with the store's change feed (DESIGN §4).

SQLite: poll every ``revocation.pollInterval``. PostgreSQL: the store may offer
``wait_for_change(timeout)`` (LISTEN/NOTIFY), which wakes the poller as soon as another process commits a
change; polling stays the fallback. A revoking endpoint of this process awaits ``poll_now()`` after its
commit, so the proxy in the same process refuses the token before the revoking request returns (issue 4).

A failing read leaves the state as it was; it goes stale after ``revocation.maxStaleness`` and the proxy
then fails closed or open as configured. The loop never dies of a store error.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TextIO

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from authz.revocation import RevocationState
from authz.store.base import Change, Store

PAGE_SIZE = 10_000


class FeedPoller:
    """Reads the change feed from ``state.last_seq`` and applies it; hands config changes to a hook."""

    def __init__(self, store: Store, state: RevocationState, interval: float,
                 on_config_change: Callable[[Change], None] | None = None, *,
                 now: Callable[[], float] | None = None, page_size: int = PAGE_SIZE,
                 log_stream: TextIO | None = sys.stderr) -> None:
        self.store = store
        self.state = state
        self.interval = interval
        self.on_config_change = on_config_change
        self._now = now or state.clock
        self.page_size = page_size
        self._log_stream = log_stream
        self._lock = threading.Lock()
        """One reader at a time: the loop's poll and a revoking request's ``poll_now`` may overlap."""
        self._failing = False
        self.failures = 0
        """Failed reads since start (``FeedMetrics``)."""
        self.applied = 0
        """Feed entries applied since start, each once (an entry at or below ``state.last_seq`` is skipped)."""
        self._wake = asyncio.Event()
        self._stopped = False
        # Issue 8 item 5: the feed never waits behind request work. The default executor (asyncio.to_thread)
        # carries every store call of the core; a burst of wrong sign-in passwords (then hashed there too)
        # queued the poller behind them until the state went stale (503 stale_revocation). Two threads of its
        # own: one may block in wait_for_change (LISTEN) while the other applies a revoking request's poll_now.
        self._executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="scopegate-feed")

    def poll_once(self) -> int:
        """Read and apply every change after ``state.last_seq``; returns how many were read.

        Blocking (call it in a worker thread). Raises the store's error when the feed cannot be read;
        whatever pages were applied before the failure stay applied (a prefix of the feed is a valid
        state), but the state is not marked fresh.
        """
        with self._lock:
            started = self._now()
            total = 0
            while True:
                before = self.state.last_seq
                changes = self.store.changes_since(before, self.page_size)
                self.state.apply(changes)
                self.applied += sum(1 for change in changes if change.seq > before)
                total += len(changes)
                if self.on_config_change is not None:
                    for change in changes:
                        if change.kind == "config":
                            self._notify(change)
                if len(changes) < self.page_size:
                    break
            # Fresh as of when the read started: changes committed after that may not be in it.
            self.state.mark_fresh(started)
            return total

    def _notify(self, change: Change) -> None:
        assert self.on_config_change is not None
        try:
            self.on_config_change(change)
        except Exception as exc:  # a reload bug must not stop revocations from being applied
            self._log(f"config change hook failed for {change.data}: {exc!r}")

    def _log(self, line: str) -> None:
        if self._log_stream is not None:
            print(f"scopegate: revocation feed: {line}", file=self._log_stream, flush=True)

    def _poll_logged(self) -> int | None:
        """``poll_once``, logging one line when reads start failing and one when they recover."""
        try:
            count = self.poll_once()
        except Exception as exc:
            self.failures += 1
            if not self._failing:
                self._failing = True
                self._log(f"cannot read the change feed, keeping the last state (stale after "
                          f"{self.state.max_staleness:g}s): {exc}")
            return None
        if self._failing:
            self._failing = False
            self._log(f"change feed readable again after {self.failures} failed reads")
        return count

    async def _in_feed_thread(self, func: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, func, *args)

    async def poll_now(self) -> None:
        """Apply the feed now (after a revoking commit); never raises."""
        await self._in_feed_thread(self._poll_logged)

    def stop(self) -> None:
        self._stopped = True
        self._wake.set()

    def close(self) -> None:
        """Release the feed's threads (after ``stop``; a blocked ``wait_for_change`` ends within its timeout)."""
        self._executor.shutdown(wait=False)

    async def run(self) -> None:
        """Poll until ``stop()`` or cancellation; wakes early on ``wait_for_change`` when the store has it."""
        self._stopped = False
        self._wake = asyncio.Event()
        while not self._stopped:
            await self._in_feed_thread(self._poll_logged)
            if self._stopped:
                break
            await self._wait()

    async def _wait(self) -> None:
        waiter: Callable[[float], Any] | None = getattr(self.store, "wait_for_change", None)
        if waiter is not None and not self._failing:
            try:
                await self._in_feed_thread(waiter, self.interval)
                return
            except Exception as exc:  # fall back to plain polling for this round
                self._log(f"wait_for_change failed, polling instead: {exc}")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), self.interval)
        self._wake.clear()


class FeedMetrics(Collector):
    """The feed as Prometheus sees it (issue 12 item 2): where it is, what it applied, why it is behind.

    With ``scopegate_revocation_state_age_seconds`` (the proxy's), an outage reads as a failure count that
    climbs and a position that stands still; after it, the position meets the store's last seq and the
    applied count grew by exactly the entries written meanwhile (no gap, nothing applied twice)."""

    def __init__(self, poller: FeedPoller) -> None:
        self.poller = poller

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("scopegate_revocation_feed_position",
                                "Seq of the last change-feed entry this process applied.",
                                value=self.poller.state.last_seq)
        yield CounterMetricFamily("scopegate_revocation_feed_applied",
                                  "Change-feed entries applied, each once.", value=self.poller.applied)
        yield CounterMetricFamily("scopegate_revocation_feed_read_failures",
                                  "Reads of the change feed that failed (store unreachable, or past storeTimeout).",
                                  value=self.poller.failures)


__all__ = ["PAGE_SIZE", "FeedMetrics", "FeedPoller"]
