"""Issue 8 item 7: system-log events are bounded in size, and failure events are rate-limited per source.

One token request to an unknown authorization server with a 1 MB ``scope`` stored a 1 MB event (kept 90
days) and wrote 1 MB to stdout; nothing limited how many such events one source could write.
"""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from authz.app import build_core_app
from authz.store.sqlite import SqliteStore
from authz.syslog import FIELD_MAX, LIST_MAX, REDACTED, SystemLog, bound_strings, make_event
from tests.authz.oauth_kit import ISSUER, Core, build_core
from tests.clock import Clock

JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"
UNKNOWN_AS_TOKEN = "/oauth2/no-such-server/v1/token"


@pytest.fixture
async def core_app(tmp_path: Path) -> AsyncIterator[tuple[Core, httpx.AsyncClient, io.StringIO]]:
    """The in-process core served by ``build_core_app``, its system log writing to a buffer."""
    async for core in build_core(tmp_path):
        stdout = io.StringIO()
        core.ctx.syslog = SystemLog(stdout)
        transport = httpx.ASGITransport(app=build_core_app(core.ctx))
        async with httpx.AsyncClient(transport=transport, base_url=ISSUER) as client:
            yield core, client, stdout


def size_of(event: dict[str, Any]) -> int:
    return len(json.dumps(event, ensure_ascii=False))


class TestEventSize:
    async def test_oversized_system_log_event_scope_is_truncated(
            self, core_app: tuple[Core, httpx.AsyncClient, io.StringIO]) -> None:
        """A 48 KB ``scope`` to an unknown server stores and prints an event of a few KiB, its scope cut to
        ``FIELD_MAX`` characters and marked with how much was cut."""
        core, client, stdout = core_app
        scope = "orders.read " * 4000
        response = await client.post(UNKNOWN_AS_TOKEN, data={"grant_type": "client_credentials", "scope": scope})
        assert response.status_code == 400
        [event] = core.events("app.oauth2.as.token.grant")
        requested = event["debugContext"]["debugData"]["requested_scopes"]
        assert requested.startswith(scope[:FIELD_MAX])
        assert requested.endswith(f"…[truncated {len(scope) - FIELD_MAX} chars]")
        assert size_of(event) < 8 * 1024
        [line] = stdout.getvalue().splitlines()
        assert len(line) < 8 * 1024
        assert json.loads(line)["uuid"] == event["uuid"]

    async def test_oversized_system_log_event_user_agent_is_truncated(
            self, core_app: tuple[Core, httpx.AsyncClient, io.StringIO]) -> None:
        """A 60 KiB User-Agent is cut the same way."""
        core, client, _ = core_app
        agent = "Mozilla/5.0 " + "x" * 60_000
        await client.post(UNKNOWN_AS_TOKEN, data={"grant_type": "client_credentials"}, headers={"User-Agent": agent})
        [event] = core.events("app.oauth2.as.token.grant")
        raw = event["client"]["userAgent"]["rawUserAgent"]
        assert raw.startswith(agent[:FIELD_MAX]) and "…[truncated" in raw
        assert size_of(event) < 8 * 1024

    def test_oversized_system_log_event_every_string_and_list_is_bounded(self) -> None:
        """Wherever a caller put a long string or list, the recorded event is bounded."""
        event = make_event("x", now=0, client={"id": "c" * 5000, "ipAddress": "10.0.0.1"},
                           targets=[{"id": "t", "displayName": "d" * 3000}],
                           debug_data={"nested": {"deep": ["s" * 2000] * 500}})
        bounded = bound_strings(event)
        assert len(bounded["client"]["id"]) < FIELD_MAX + 40
        assert bounded["target"][0]["displayName"].endswith("…[truncated 1976 chars]")
        deep = bounded["debugContext"]["debugData"]["nested"]["deep"]
        assert len(deep) == LIST_MAX + 1 and deep[-1] == f"…[truncated {500 - LIST_MAX} items]"
        assert size_of(bounded) < 200 * 1024

    def test_oversized_system_log_event_cut_never_keeps_a_token_head(self) -> None:
        """A token cut in half by the truncation (no longer JWT-shaped) is removed, not kept in part."""
        value = "x " * ((FIELD_MAX - 20) // 2) + JWT * 3
        bounded = bound_strings({"v": value})["v"]
        assert "eyJhbGciOiJSUzI1NiJ9" not in bounded
        assert REDACTED in bounded


class TestFailureEventRate:
    def test_failure_event_flood_is_rate_limited_per_source(self, tmp_path: Path) -> None:
        """Past the burst, a source's FAILURE events are not written; another source's are; the next event
        of the first source after the bucket refills says how many were suppressed; none is lost silently."""
        clock = Clock()
        log = SystemLog(None, failure_rate=1.0, failure_burst=10, clock=clock)
        store = SqliteStore(f"sqlite:///{tmp_path / 'log.db'}")

        def failure(ip: str) -> dict[str, Any]:
            return make_event("app.oauth2.as.token.grant", now=clock(), result="FAILURE", reason="x",
                              client={"ipAddress": ip})

        try:
            with store.transaction() as tx:
                for _ in range(25):
                    log.record(tx, failure("203.0.113.7"))
                log.record(tx, failure("198.51.100.1"))
                # A SUCCESS is never suppressed, and carries the pending count.
                log.record(tx, make_event("app.oauth2.as.token.grant", now=clock(), client={"ipAddress": "203.0.113.7"}))
                log.record(tx, failure("203.0.113.7"))
                clock.advance(2)
                log.record(tx, failure("203.0.113.7"))
            events = [r.event for r in store.iter_logs()]
        finally:
            store.close()
        by_source = [e for e in events if e["client"]["ipAddress"] == "203.0.113.7"]
        assert len(by_source) == 10 + 1 + 1  # the burst, the success, one after the refill
        assert by_source[10]["outcome"]["result"] == "SUCCESS"
        assert by_source[10]["debugContext"]["debugData"]["suppressedEvents"] == 15
        assert by_source[11]["debugContext"]["debugData"]["suppressedEvents"] == 1
        assert len([e for e in events if e["client"]["ipAddress"] == "198.51.100.1"]) == 1
        assert log.suppressed == 16

    async def test_failure_event_flood_through_the_core(self, core_app: tuple[Core, httpx.AsyncClient, io.StringIO]) -> None:
        """100 failed token requests from one address write at most the burst (plus the refill); every
        event not written is counted."""
        core, client, _ = core_app
        for _ in range(100):
            await client.post(UNKNOWN_AS_TOKEN, data={"grant_type": "client_credentials"})
        written = len(core.events("app.oauth2.as.token.grant"))
        burst = core.config.core.failure_event_burst
        assert burst <= written < 100
        assert written + core.ctx.syslog.suppressed == 100
