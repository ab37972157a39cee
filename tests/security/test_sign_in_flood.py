"""Issue 8 item 5: a flood of wrong passwords at the /authorize sign-in form.

Each wrong password cost a scrypt in asyncio's default thread pool, with no back-off, and the revocation
feed's poller waited in that same pool: 320 POSTs made the proxy answer 503 stale_revocation to valid
tokens. Now: hashing has a bounded pool of its own that sheds load; the feed has threads of its own;
sign-in is throttled per username and per source (Okta's lockout); a form token is single-use.
"""

from __future__ import annotations

import asyncio
import copy
import threading
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from authz import passwords
from authz.feed import FeedPoller
from authz.passwords import HashingBusy, HashingPool, configure_hashing, hashing_pool, verify_secret
from authz.revocation import RevocationState
from authz.store.sqlite import SqliteStore
from tests.authz.oauth_kit import BASE_CONFIG, ISSUER, PASSWORD, WEB_SECRET, Core, build_core, read_form
from tests.clock import Clock
from tests.security.as_kit import authorize_url, redirect_params

ALICE = "alice@example.com"
TOKEN = "/oauth2/orders/v1/token"


def document(**core: Any) -> dict[str, Any]:
    doc = copy.deepcopy(BASE_CONFIG)
    doc["core"] = core
    return doc


@pytest.fixture
async def core(tmp_path: Path) -> AsyncIterator[Core]:
    """Three failures per username, five per source, within a minute."""
    async for built in build_core(tmp_path, document(signInFailureLimit=3, signInFailureSourceLimit=5,
                                                     signInFailureWindow="60s")):
        yield built


async def load_form(core: Core, client: httpx.AsyncClient | None = None) -> tuple[str, dict[str, str]]:
    page = await (client or core.client).get(authorize_url())
    assert page.status_code == 200, page.text
    return read_form(page.text)


async def attempt(core: Core, username: str = ALICE, password: str = "wrong-password",
                  client: httpx.AsyncClient | None = None) -> httpx.Response:
    action, fields = await load_form(core, client)
    return await (client or core.client).post(action, data={**fields, "username": username, "password": password})


def session_failures(core: Core, reason: str | None = None) -> list[dict[str, Any]]:
    return [e for e in core.events("user.session.start")
            if e["outcome"]["result"] == "FAILURE" and reason in (None, e["outcome"]["reason"])]


class TestFormToken:
    async def test_sign_in_form_token_single_use(self, core: Core) -> None:
        """A replayed form POST is refused without a password check, after a failure and after a success."""
        action, fields = await load_form(core)
        wrong = {**fields, "username": ALICE, "password": "wrong-password"}
        assert (await core.client.post(action, data=wrong)).status_code == 401
        replay = await core.client.post(action, data=wrong)
        assert replay.status_code == 400
        assert "already submitted" in replay.text
        assert len(session_failures(core)) == 1

        action, fields = await load_form(core)
        right = {**fields, "username": ALICE, "password": PASSWORD}
        assert "code" in redirect_params(await core.client.post(action, data=right))
        again = await core.client.post(action, data=right)
        assert again.status_code == 400 and "location" not in again.headers

    async def test_sign_in_form_token_each_shown_form_is_distinct(self, core: Core) -> None:
        """Two forms shown in the same second carry different tokens, so spending one leaves the other usable."""
        _, first = await load_form(core)
        _, second = await load_form(core)
        assert first["form_token"] != second["form_token"]


class TestLockout:
    async def test_sign_in_lockout_per_username(self, core: Core) -> None:
        """After the limit, the right password is refused too (429, Retry-After, no code); one
        user.account.lock is written; the lock ends when the window has passed."""
        for _ in range(3):
            assert (await attempt(core)).status_code == 401
        locked = await attempt(core, password=PASSWORD)
        assert locked.status_code == 429
        assert 0 < int(locked.headers["retry-after"]) <= 60
        assert "Too many failed sign-in attempts" in locked.text
        [lock] = core.events("user.account.lock")
        assert lock["displayMessage"] == "Max sign in attempts exceeded"
        assert lock["target"][0]["id"] == "alice"
        assert len(session_failures(core, "INVALID_CREDENTIALS")) == 3
        assert len(session_failures(core, "LOCKED_OUT")) == 1
        core.clock.advance(61)
        assert "code" in redirect_params(await attempt(core, password=PASSWORD))

    async def test_sign_in_lockout_unknown_username_answers_alike(self, core: Core) -> None:
        """A username nobody has is throttled exactly like a real one: the answers do not enumerate users."""
        for _ in range(3):
            assert (await attempt(core, username="nobody@example.com")).status_code == 401
        assert (await attempt(core, username="nobody@example.com")).status_code == 429
        assert core.events("user.account.lock") == []

    async def test_sign_in_lockout_per_source(self, core: Core) -> None:
        """Spraying many usernames from one address stops at the source limit (RATE_LIMITED)."""
        for i in range(5):
            assert (await attempt(core, username=f"user{i}@example.com")).status_code == 401
        refused = await attempt(core, username="bob@example.com", password=PASSWORD)
        assert refused.status_code == 429
        assert len(session_failures(core, "RATE_LIMITED")) == 1

    async def test_sign_in_lockout_shared_with_the_password_grant(self, core: Core) -> None:
        """Wrong passwords through the password grant count toward the same lockout: the grant then answers
        spec §2.6's per-user rate limit (429 invalid_grant, Retry-After), and the form refuses the user too."""
        for _ in range(3):
            wrong = await core.token({"grant_type": "password", "scope": "openid", "username": ALICE,
                                      "password": "wrong-password"}, auth=("web", WEB_SECRET))
            assert wrong.status_code == 400 and wrong.json()["error"] == "invalid_grant"
        refused = await core.password()
        assert refused.status_code == 429
        assert refused.json() == {"error": "invalid_grant",
                                  "error_description": "API call exceeded rate limit due to too many requests."}
        assert int(refused.headers["retry-after"]) >= 1
        assert len(core.events("user.account.lock")) == 1
        assert (await attempt(core, password=PASSWORD)).status_code == 429

    async def test_sign_in_lockout_counts_attempts_in_flight(self, core: Core, monkeypatch: pytest.MonkeyPatch) -> None:
        """A concurrent burst for one username gets at most the limit's password checks, not one per request."""
        checks = 0
        real = passwords._verify_secret

        def counted(secret: str, stored: str | None) -> bool:
            nonlocal checks
            checks += 1
            time.sleep(0.05)
            return real(secret, stored)

        monkeypatch.setattr(passwords, "_verify_secret", counted)
        forms = [await load_form(core) for _ in range(20)]
        responses = await asyncio.gather(*(core.client.post(action, data={**fields, "username": ALICE,
                                                                         "password": "wrong-password"})
                                           for action, fields in forms))
        statuses = sorted(r.status_code for r in responses)
        assert checks <= 3
        assert statuses.count(401) == checks and statuses.count(429) == 20 - checks


@pytest.fixture
def tiny_hashing_pool() -> Iterator[tuple[HashingPool, threading.Event]]:
    """A pool of one thread and no queue, its thread held busy until the test releases it."""
    pool = configure_hashing(1, 0)
    release = threading.Event()
    holding = pool._executor.submit(release.wait, 10)
    pool.in_flight += 1
    holding.add_done_callback(pool._release)
    yield pool, release
    release.set()
    configure_hashing(2, 8)


class TestHashingPool:
    async def test_hashing_flood_sheds_the_token_endpoint_with_503(
            self, core: Core, tiny_hashing_pool: tuple[HashingPool, threading.Event]) -> None:
        """With the hashing pool saturated, a client-secret check is refused at once with the OAuth error
        shape: 503 temporarily_unavailable and Retry-After; the client is not counted as failing."""
        pool, _ = tiny_hashing_pool
        response = await core.client.post(TOKEN, data={"grant_type": "client_credentials", "scope": "orders:read"},
                                          auth=("svc", "not-the-secret-but-unchecked"))
        assert response.status_code == 503
        assert response.json()["error"] == "temporarily_unavailable"
        assert response.headers["retry-after"] == "1"
        assert pool.shed >= 1

    async def test_hashing_flood_sheds_the_sign_in_form_with_429(
            self, core: Core, tiny_hashing_pool: tuple[HashingPool, threading.Event]) -> None:
        """The sign-in form answers a 429 page while the pool is saturated, and counts no failure."""
        response = await attempt(core, password=PASSWORD)
        assert response.status_code == 429
        assert "busy" in response.text
        assert session_failures(core) == []

    def test_hashing_pool_releases_its_slots(self) -> None:
        """Admissions are released when each hash is done (no leak after a burst)."""
        pool = HashingPool(threads=2, queue=1)
        try:
            with ThreadPoolExecutor(max_workers=6) as callers:
                results = list(callers.map(lambda _: _try(pool), range(12)))
            assert pool.in_flight == 0
            assert results.count("busy") == pool.shed
            assert "ok" in results
        finally:
            pool.close()

    def test_verify_secret_runs_on_the_hashing_pool(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """verify_secret hashes on a 'scopegate-hash' thread, never the caller's."""
        threads: list[str] = []
        real = passwords._verify_secret

        def spy(secret: str, stored: str | None) -> bool:
            threads.append(threading.current_thread().name)
            return real(secret, stored)

        monkeypatch.setattr(passwords, "_verify_secret", spy)
        assert verify_secret("x", None) is False
        assert threads and threads[0].startswith("scopegate-hash")
        assert hashing_pool().in_flight == 0


def _try(pool: HashingPool) -> str:
    try:
        pool.run(time.sleep, 0.05)
    except HashingBusy:
        return "busy"
    return "ok"


class TestFeedHasItsOwnThreads:
    async def test_hashing_flood_does_not_starve_revocation_feed(self, tmp_path: Path) -> None:
        """With every thread of asyncio's default pool busy (as a flood of request work makes it), the feed
        still reads and applies a revocation at once."""
        clock = Clock()
        store = SqliteStore(f"sqlite:///{tmp_path / 'feed.db'}")
        state = RevocationState({f"{ISSUER}/oauth2/orders": "orders"}, now=clock)
        poller = FeedPoller(store, state, interval=0.05, log_stream=None)
        loop = asyncio.get_running_loop()
        default = ThreadPoolExecutor(max_workers=2)
        loop.set_default_executor(default)
        release = threading.Event()
        blockers = [loop.run_in_executor(None, release.wait, 10) for _ in range(4)]
        try:
            with store.transaction() as tx:
                tx.append_change("revoke_jti", {"as_id": "orders", "jti": "AT.flood-victim", "exp": clock() + 600})
            await asyncio.wait_for(poller.poll_now(), timeout=3)
            assert state.last_seq >= 1
            assert state.is_revoked({"iss": f"{ISSUER}/oauth2/orders", "jti": "AT.flood-victim",
                                     "exp": clock() + 600})
        finally:
            release.set()
            await asyncio.gather(*blockers)
            poller.close()
            store.close()
