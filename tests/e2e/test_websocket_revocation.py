"""Issue 8 item 11 through the real ``scopegate run`` process: a relayed WebSocket session lives no longer
than its token. Revoked at the core (RFC 7009 ``/revoke``, or implicitly by deactivating the user) or past its
``exp``, the session is closed with 1008 on both sides (the client and the recording upstream) within the
revocation feed's bound, while another session keeps relaying."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import aiohttp
import httpx
import jwt
import pytest

from tests.e2e.conftest import RunningScopegate
from tests.e2e.recording_upstream import RecordingUpstream
from tests.security.attack_bench import public_jwk, rsa_key

pytestmark = pytest.mark.e2e

RESOURCE = "https://api.example.com/api"
SECRETS = {"service": "service-secret-0123456789abc", "webapp": "webapp-secret-0123456789abc"}
PASSWORD = "correct-horse-battery-staple"
MAX_STALENESS = 2.0


def config(upstream_url: str) -> dict[str, Any]:
    return {
        "upstream": {"url": upstream_url, "timeout": "2s", "connectTimeout": "1s"},
        "revocation": {"maxStaleness": f"{MAX_STALENESS:g}s", "pollInterval": "100ms"},
        "routes": [{"name": "feed", "path": "/api/feed", "methods": ["GET"], "scopes": {"anyOf": ["feed:read"]}}],
        "authorizationServers": [{
            "id": "feed", "name": "Feed", "audiences": [RESOURCE], "scopes": [{"name": "feed:read"}],
            "policies": [{"name": "Everyone", "priority": 1, "conditions": {"clients": {"include": ["ALL_CLIENTS"]}},
                          "rules": [{"name": "All", "priority": 1,
                                     "conditions": {"grantTypes": {"include": ["client_credentials", "password"]},
                                                    "scopes": {"include": ["*"]}},
                                     "actions": {"token": {"accessTokenLifetimeMinutes": 60}}}]}],
        }],
        "apps": [{"clientId": "service", "clientSecret": SECRETS["service"], "name": "Service"},
                 {"clientId": "webapp", "clientSecret": SECRETS["webapp"], "name": "Web",
                  "grantTypes": ["password"], "assignments": {"users": ["alice"]}}],
        "users": [{"id": "alice", "login": "alice@example.com", "password": PASSWORD}],
    }


def service_token(gate: RunningScopegate) -> str:
    response = httpx.post(f"{gate.core}/oauth2/feed/v1/token", auth=("service", SECRETS["service"]),
                          data={"grant_type": "client_credentials", "scope": "feed:read"})
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


def user_token(gate: RunningScopegate) -> str:
    response = httpx.post(f"{gate.core}/oauth2/feed/v1/token", auth=("webapp", SECRETS["webapp"]),
                          data={"grant_type": "password", "username": "alice@example.com", "password": PASSWORD,
                                "scope": "feed:read"})
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


async def session_outcome(proxy: str, token: str, act: Callable[[], None], *, other: str | None = None,
                          within: float = MAX_STALENESS + 2) -> tuple[int | None, str, float, list[str]]:
    """Open a session (and optionally a second one with ``other``), run ``act`` (blocking, in a thread), then
    wait for the proxy to close the first: (close code, reason, seconds after ``act``, the second's replies)."""
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession() as client:
        ws = await client.ws_connect(f"{proxy}/api/feed/ws", headers=headers)
        await ws.send_str("one")
        assert (await ws.receive(timeout=5)).data == "echo:one"
        second = None
        if other is not None:
            second = await client.ws_connect(f"{proxy}/api/feed/ws", headers={"Authorization": f"Bearer {other}"})
        await asyncio.to_thread(act)
        acted = time.monotonic()
        message = await ws.receive(timeout=within)
        elapsed = time.monotonic() - acted
        assert message.type == aiohttp.WSMsgType.CLOSE, message
        replies: list[str] = []
        if second is not None:
            await second.send_str("still")
            replies.append((await second.receive(timeout=5)).data)
            await second.close()
        return ws.close_code, str(message.extra or ""), elapsed, replies


def wait_for(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_websocket_revocation_by_revoke_closes_the_open_session(scopegate: Callable[..., RunningScopegate],
                                                               upstream: RecordingUpstream) -> None:
    """RFC 7009 /revoke of the token behind an open session closes it with 1008 'token revoked', on the client
    and on the upstream, well within maxStaleness; a session of another token keeps relaying."""
    gate = scopegate(config(upstream.url))
    access, other = service_token(gate), service_token(gate)

    def revoke() -> None:
        response = httpx.post(f"{gate.core}/oauth2/feed/v1/revoke", auth=("service", SECRETS["service"]),
                              data={"token": access, "token_type_hint": "access_token"})
        assert response.status_code == 200

    code, reason, elapsed, replies = asyncio.run(session_outcome(gate.proxy, access, revoke, other=other))
    assert (code, reason) == (1008, "token revoked")
    assert elapsed < MAX_STALENESS
    assert replies == ["echo:still"]
    wait_for(lambda: 1008 in upstream.ws_closes)


def test_websocket_revocation_by_user_deactivation_closes_the_open_session(
        scopegate: Callable[..., RunningScopegate], upstream: RecordingUpstream) -> None:
    """Deactivating the user revokes their tokens implicitly (a watermark): their open session is closed with
    1008 within maxStaleness."""
    gate = scopegate(config(upstream.url))
    access = user_token(gate)

    def deactivate() -> None:
        response = httpx.post(f"{gate.core}/api/v1/users/alice/lifecycle/deactivate",
                              headers={"Authorization": f"SSWS {gate.admin_token}"})
        assert response.status_code == 200, response.text

    code, reason, elapsed, _ = asyncio.run(session_outcome(gate.proxy, access, deactivate))
    assert (code, reason) == (1008, "token revoked")
    assert elapsed < MAX_STALENESS
    wait_for(lambda: 1008 in upstream.ws_closes)


# ---------------------------------------------------------------------------------------------- expiry


ISSUER_PATH = "/oauth2/short"
AUDIENCE = "https://api.example.com/short"


class StaticIssuer:
    """A remote issuer that serves only its metadata and keys: the test signs short-lived tokens itself (the
    core's own tokens live at least five minutes, as Okta's)."""

    def __init__(self) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                documents = {f"{ISSUER_PATH}/.well-known/oauth-authorization-server":
                             {"issuer": outer.issuer, "jwks_uri": f"{outer.issuer}/v1/keys"},
                             f"{ISSUER_PATH}/v1/keys": {"keys": [public_jwk("short-1", 2048)]}}
                document = documents.get(self.path)
                body = json.dumps(document).encode()
                self.send_response(200 if document is not None else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.issuer = f"http://127.0.0.1:{self.server.server_address[1]}{ISSUER_PATH}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def token(self, lifetime: float) -> str:
        now = int(time.time())
        claims = {"ver": 1, "jti": f"AT.short.{now}", "iss": self.issuer, "aud": AUDIENCE, "iat": now,
                  "exp": now + int(lifetime), "cid": "svc", "client_id": "svc", "sub": "svc", "scp": ["feed:read"]}
        return jwt.encode(claims, rsa_key("short-1", 2048), algorithm="RS256", headers={"kid": "short-1", "typ": "at+jwt"})

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_websocket_revocation_short_lived_token_closes_the_session_at_exp(
        scopegate: Callable[..., RunningScopegate], upstream: RecordingUpstream) -> None:
    """A session opened with a token that expires in three seconds is closed with 1008 'token expired' when
    ``exp`` passes (not at the proxy's clock-skew leeway, not when the client leaves)."""
    issuer = StaticIssuer()
    try:
        gate = scopegate({
            "listen": {"core": "off"},
            "upstream": {"url": upstream.url, "timeout": "2s", "connectTimeout": "1s"},
            "routes": [{"name": "feed", "path": "/short/feed", "methods": ["GET"], "scopes": {"anyOf": ["feed:read"]}}],
            "authorizationServers": [{"id": "short", "name": "Short-lived (remote)",
                                      "remote": {"issuer": issuer.issuer, "audience": AUDIENCE}}],
        })
        token = issuer.token(lifetime=3)
        exp = float(jwt.decode(token, options={"verify_signature": False})["exp"])

        async def run() -> tuple[int | None, str, float]:
            async with aiohttp.ClientSession() as client:
                ws = await client.ws_connect(f"{gate.proxy}/short/feed/ws", headers={"Authorization": f"Bearer {token}"})
                await ws.send_str("one")
                assert (await ws.receive(timeout=5)).data == "echo:one"
                message = await ws.receive(timeout=10)
                assert message.type == aiohttp.WSMsgType.CLOSE, message
                return ws.close_code, str(message.extra or ""), time.time()

        code, reason, closed_at = asyncio.run(run())
        assert (code, reason) == (1008, "token expired")
        assert exp <= closed_at < exp + 1.5
        wait_for(lambda: 1008 in upstream.ws_closes)
    finally:
        issuer.stop()
