"""Issue 8 item 5 through the real process: a flood of wrong passwords at the /authorize sign-in form does
not starve the revocation feed.

Before: each wrong password cost a scrypt in asyncio's default thread pool, where the feed's poller also
waited; a burst of POSTs made the proxy answer 503 stale_revocation to valid tokens and /readyz fail.
Here the sign-in throttle is switched off so that every POST reaches the hashing pool (the worst case),
and revocation.maxStaleness is short (1 s) so that a feed held up for longer shows.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest

from tests.authz.oauth_kit import read_form
from tests.e2e.conftest import RunningScopegate
from tests.e2e.recording_upstream import RecordingUpstream
from tests.e2e.test_proxy_gate import SECRET, bearer, config, token

pytestmark = pytest.mark.e2e

REDIRECT = "https://app.example.com/callback"
FLOOD_SECONDS = 3.0
BURST = 320


def flood_config(upstream_url: str) -> dict[str, Any]:
    doc = config(upstream_url, revocation={"maxStaleness": "1s", "pollInterval": "100ms", "onStale": "deny"},
                 core={"signInFailureLimit": 0, "signInFailureSourceLimit": 0})
    doc["apps"].append({"clientId": "web", "clientSecret": "web-secret-0123456789abc", "name": "Web",
                        "grantTypes": ["authorization_code"], "redirectUris": [REDIRECT],
                        "assignments": {"users": ["alice"]}})
    doc["users"] = [{"id": "alice", "login": "alice@example.com", "password": "correct-horse-battery"}]
    return doc


def burst(gate: RunningScopegate, posts: int, loaded: threading.Event, counts: dict[int, int]) -> None:
    """Load ``posts`` sign-in forms, then post a wrong password to all of them at once (the issue's burst)."""
    url = f"{gate.core}/oauth2/orders/v1/authorize?" + urlencode({
        "client_id": "web", "redirect_uri": REDIRECT, "response_type": "code", "scope": "orders:read",
        "state": "s"})

    async def run() -> None:
        # No keep-alive: loading 320 forms takes longer than the core's 5 s keep-alive timeout under load, and a
        # POST sent on a connection the server is closing fails in the client (a race of HTTP/1.1, not the flood).
        limits = httpx.Limits(max_connections=posts, max_keepalive_connections=0)
        async with httpx.AsyncClient(timeout=60, limits=limits) as browser:
            forms = [read_form((await browser.get(url)).text) for _ in range(posts)]
            loaded.set()

            async def post(action: str, fields: dict[str, str]) -> int:
                try:
                    response = await browser.post(f"{gate.core}{action}",
                                                  data={**fields, "username": "alice@example.com", "password": "x"})
                except httpx.HTTPError:
                    return 0
                return response.status_code

            for status in await asyncio.gather(*(post(action, fields) for action, fields in forms)):
                counts[status] = counts.get(status, 0) + 1

    asyncio.run(run())


def test_hashing_flood_does_not_starve_revocation_feed(scopegate: Callable[..., RunningScopegate],
                                                        upstream: RecordingUpstream) -> None:
    """While a burst of 320 wrong-password POSTs is handled: a valid token keeps passing the proxy (never
    503 stale_revocation), /readyz stays ready, and a token revoked mid-flood is refused within the feed's
    bound."""
    gate = scopegate(flood_config(upstream.url))
    valid, victim = token(gate), token(gate)
    with httpx.Client(timeout=10) as client:
        assert client.get(f"{gate.proxy}/api/orders", headers=bearer(valid)).status_code == 200
        assert client.get(f"{gate.proxy}/api/orders", headers=bearer(victim)).status_code == 200

        loaded = threading.Event()
        counts: dict[int, int] = {}
        flooder = threading.Thread(target=burst, args=(gate, BURST, loaded, counts))
        flooder.start()
        assert loaded.wait(60)
        proxy_statuses: list[tuple[int, str]] = []
        ready_statuses: list[int] = []
        revoked_at: float | None = None
        refused_after: float | None = None
        try:
            started = time.monotonic()
            while time.monotonic() - started < FLOOD_SECONDS:
                response = client.get(f"{gate.proxy}/api/orders", headers=bearer(valid))
                proxy_statuses.append((response.status_code, response.text[:200]))
                ready_statuses.append(client.get(f"{gate.ops}/readyz").status_code)
                if revoked_at is None and time.monotonic() - started > FLOOD_SECONDS / 3:
                    revoked_at = time.monotonic()
                    client.post(f"{gate.core}/oauth2/orders/v1/revoke", auth=("service", SECRET),
                                data={"token": victim, "token_type_hint": "access_token"}, timeout=30)
                if revoked_at is not None and refused_after is None and \
                        client.get(f"{gate.proxy}/api/orders", headers=bearer(victim)).status_code == 401:
                    refused_after = time.monotonic() - revoked_at
                time.sleep(0.05)
        finally:
            flooder.join(timeout=120)

    assert all(status == 200 for status, _ in proxy_statuses), [s for s in proxy_statuses if s[0] != 200][:3]
    assert all(status == 200 for status in ready_statuses), ready_statuses
    assert refused_after is not None and refused_after < 2.0, refused_after
    assert sum(n for status, n in counts.items() if status in (401, 429)) == BURST, counts  # every POST answered
