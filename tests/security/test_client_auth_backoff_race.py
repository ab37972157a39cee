"""Client-authentication back-off under concurrency (issue 8 item 10).

The back-off checked the failure count, then checked the secret, then recorded the failure: 40 concurrent
wrong secrets against a limit of 10 all passed the first step and got 32-40 secret checks. Attempts in
flight now hold a slot reserved under the lock, so at most the limit's checks run.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

import authz.clientauth
import authz.passwords
from authz.authfailures import ClientAuthFailures
from tests.authz.oauth_kit import BASE_CONFIG, SECRET
from tests.security.as_kit import core_with

CONCURRENT = 40
LIMIT = 10


def _config(**core: Any) -> dict[str, Any]:
    return {**BASE_CONFIG, "core": core}


@pytest.fixture
def secret_checks(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Every secret comparison client authentication runs (scrypt), as it happens."""
    checks: list[bool] = []
    real: Callable[[str, str | None], bool] = authz.passwords.verify_secret

    def counting(secret: str, stored: str | None) -> bool:
        checks.append(True)
        return real(secret, stored)

    monkeypatch.setattr(authz.clientauth, "verify_secret", counting)
    return checks


async def test_client_auth_backoff_concurrent_wrong_secrets_check_at_most_limit(tmp_path: Path,
                                                                               secret_checks: list[bool]) -> None:
    """40 concurrent wrong secrets for one client from one address, limit 10: at most 10 secret checks,
    each a 401; every other request is refused with 429 before its secret is looked at; and the client
    is then locked out from that address even with the right secret."""
    async for core in core_with(tmp_path, _config(clientAuthFailureLimit=LIMIT)):
        responses = await asyncio.gather(*(core.cc(client=("svc", f"wrong-secret-{n:04}")) for n in range(CONCURRENT)))
        statuses = [r.status_code for r in responses]
        assert len(secret_checks) <= LIMIT, f"{len(secret_checks)} secret checks for a limit of {LIMIT}"
        assert statuses.count(401) == len(secret_checks)
        assert statuses.count(429) == CONCURRENT - len(secret_checks)
        assert all(r.headers["retry-after"] for r in responses if r.status_code == 429)
        assert (await core.cc(client=("svc", SECRET))).status_code == 429


async def test_client_auth_backoff_concurrent_client_id_spray_checks_at_most_source_limit(
        tmp_path: Path, secret_checks: list[bool]) -> None:
    """The per-source limit holds under concurrency too: 40 different unknown client ids at once from one
    address cost at most clientAuthFailureSourceLimit checks (an unknown client costs a check as well)."""
    async for core in core_with(tmp_path, _config(clientAuthFailureSourceLimit=LIMIT)):
        responses = await asyncio.gather(*(core.cc(client=(f"ghost-{n}", "wrong-secret-0000"))
                                           for n in range(CONCURRENT)))
        assert len(secret_checks) <= LIMIT, f"{len(secret_checks)} secret checks for a limit of {LIMIT}"
        assert [r.status_code for r in responses].count(429) >= CONCURRENT - LIMIT


async def test_client_auth_backoff_slots_are_given_back_after_success(tmp_path: Path) -> None:
    """Slots held by successful attempts are returned: concurrent bursts of right secrets below the limit,
    many times over, never run into the back-off."""
    async for core in core_with(tmp_path, _config(clientAuthFailureLimit=LIMIT)):
        for _ in range(4):
            responses = await asyncio.gather(*(core.cc() for _ in range(LIMIT)))
            assert [r.status_code for r in responses] == [200] * LIMIT, [r.text for r in responses]


def test_client_auth_backoff_reservations_from_threads_stay_within_limit() -> None:
    """The component itself, from real threads released at once: of 40 reservations for one key, exactly
    the limit's are granted while none is settled; settling them as failures keeps the key locked."""
    failures = ClientAuthFailures(limit=LIMIT, source_limit=0, window=60.0)
    start = threading.Barrier(CONCURRENT)
    granted: list[bool] = []
    lock = threading.Lock()

    def attempt() -> None:
        start.wait()
        wait = failures.reserve("svc", "192.0.2.1", 1000.0)
        with lock:
            granted.append(wait is None)

    threads = [threading.Thread(target=attempt) for _ in range(CONCURRENT)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert granted.count(True) == LIMIT
    for _ in range(LIMIT):
        failures.settle("svc", "192.0.2.1", 1001.0, failed=True)
    wait = failures.reserve("svc", "192.0.2.1", 1002.0)
    assert wait == pytest.approx(59.0)
    assert failures.reserve("svc", "192.0.2.1", 1061.0) is None


async def test_client_auth_backoff_slot_released_when_request_is_cancelled(tmp_path: Path) -> None:
    """A request cancelled while its secret is being checked (client gone) gives its slot back."""
    async for core in core_with(tmp_path, _config(clientAuthFailureLimit=1)):
        task = asyncio.ensure_future(core.cc())
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises((asyncio.CancelledError, httpx.HTTPError)):
            await task
        await asyncio.sleep(0.2)  # the worker thread finishes its check; the slot is settled then
        assert (await core.cc()).status_code == 200


async def test_client_auth_backoff_does_not_refuse_a_known_secret_with_many_calls_in_flight(tmp_path: Path) -> None:
    """A service whose secret passed lately, with more token calls in flight than the limit (a pool of 30
    workers behind one address), is never refused 429: the in-flight slots bound guessing, and a secret that
    has passed is no guess (the soak benchmark got 429 on mint, introspect and revoke with the right secret)."""
    async for core in core_with(tmp_path, _config(clientAuthFailureLimit=LIMIT, clientAuthFailureSourceLimit=LIMIT)):
        assert (await core.cc()).status_code == 200
        responses = await asyncio.gather(*(core.cc() for _ in range(3 * LIMIT)))
        assert [r.status_code for r in responses] == [200] * (3 * LIMIT), [r.text for r in responses][:3]


async def test_client_auth_backoff_counts_a_rotated_secret_as_a_failure(tmp_path: Path,
                                                                          secret_checks: list[bool]) -> None:
    """A secret that passed before a rotation takes no slot, but failing now it counts as a failure, so its
    caller is bounded like any other once it has failed up to the limit."""
    async for core in core_with(tmp_path, _config(clientAuthFailureLimit=LIMIT)):
        assert (await core.cc()).status_code == 200
        obj = core.store.get_object("app", "svc")
        assert obj is not None
        with core.store.transaction() as tx:
            tx.put_object("app", "svc", obj.document, obj.origin, secret_hash=authz.passwords.hash_secret("rotated-0123456789"))
        statuses = [(await core.cc()).status_code for _ in range(LIMIT + 3)]
        assert statuses[:LIMIT] == [401] * LIMIT and statuses[LIMIT:] == [429] * 3, statuses
