"""Issue 12 item 2, the database goes away and comes back (PostgreSQL), as replica A sees it while replica B
keeps the database: A's connections dropped by the server (a restart, as ``pg_terminate_backend`` does it to
A's backends only: the shared server is never stopped), A's LISTEN connection alone black-holed, and A cut off
altogether while B revokes.

Each time: the feed catches up from its last position with nothing missed and nothing applied twice (A's
``scopegate_revocation_feed_position`` meets the store's last seq and ``..._applied`` equals the entries in
the feed, every one written after A's start); the staleness gauge never says fresh while nothing arrives; the
metrics, ``/readyz`` and the decision log say why the proxy refuses; A's connections are rebuilt without a
restart. Every HTTP call has a client timeout.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

import httpx
import psycopg
import pytest

from tests.e2e.conftest import RunningScopegate, decision_lines, free_port
from tests.e2e.fault_proxy import FaultProxy
from tests.e2e.recording_upstream import RecordingUpstream
from tests.e2e.test_proxy_gate import SECRET, config, sample, wait_for
from tests.e2e.test_store_outage import (
    BASE,
    BOUND,
    MAX_STALENESS,
    orders,
    readyz,
    relay,
    schema,
    timed,
)

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]
__all__ = ["relay", "schema"]  # fixtures

POLL = 0.2
"""revocation.pollInterval: polling is what must take over when LISTEN cannot wake the feed."""
PATIENT = 20.0
"""Client timeout of the calls whose answer, not its speed, is checked (CI machines get busy)."""


def mint(gate: RunningScopegate) -> httpx.Response:
    return httpx.post(f"{gate.core}/oauth2/orders/v1/token", auth=("service", SECRET),
                      data={"grant_type": "client_credentials", "scope": "orders:read"}, timeout=PATIENT)


def create_group(gate: RunningScopegate) -> httpx.Response:
    return create_named_group(gate, f"recovery-{uuid.uuid4().hex[:8]}", PATIENT)


def store_url(schema: str, port: int | None = None, application: str | None = None) -> str:
    parts = urlsplit(BASE)
    user = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    host = f"127.0.0.1:{port}" if port is not None else parts.netloc.rsplit("@", 1)[-1]
    query = f"schema={schema}" + (f"&application_name={application}" if application else "")
    return f"{parts.scheme}://{user}{host}{parts.path}?{query}"


def replicas(scopegate: Callable[..., RunningScopegate], upstream: RecordingUpstream, a_store: str,
             b_store: str) -> tuple[RunningScopegate, RunningScopegate]:
    """A and B: one public issuer, one database; B always reaches it directly."""
    issuer = f"http://127.0.0.1:{free_port()}"
    revocation = {"maxStaleness": f"{MAX_STALENESS:g}s", "pollInterval": f"{int(POLL * 1000)}ms", "onStale": "deny"}
    gates = [scopegate(config(upstream.url, store=store, issuer=issuer, storeTimeout="1s", revocation=revocation),
                       name=name) for name, store in (("a", a_store), ("b", b_store))]
    return gates[0], gates[1]


def token(gate: RunningScopegate) -> str:
    response = mint(gate)
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


def revoke(gate: RunningScopegate, access: str) -> None:
    response = httpx.post(f"{gate.core}/oauth2/orders/v1/revoke", auth=("service", SECRET),
                          data={"token": access, "token_type_hint": "access_token"}, timeout=PATIENT)
    assert response.status_code == 200, response.text


def feed_in_store(schema: str) -> tuple[int, int]:
    """(last seq, number of entries) of the change feed, read directly."""
    with psycopg.connect(BASE, autocommit=True) as conn:
        row: Any = conn.execute(f'SELECT COALESCE(MAX(seq), 0), COUNT(*) FROM "{schema}".changes').fetchone()
    return int(row[0]), int(row[1])


def assert_caught_up(gate: RunningScopegate, schema: str) -> None:
    """A's feed position meets the store's last seq, and every entry was applied exactly once (no gap, no
    double apply: the feed is never pruned during these tests, and A started before its first entry)."""
    def caught_up() -> bool:
        return sample(gate, "scopegate_revocation_feed_position") == feed_in_store(schema)[0]

    wait_for(caught_up, BOUND)
    last, count = feed_in_store(schema)
    assert sample(gate, "scopegate_revocation_feed_applied_total") == count, (count, last)


def age(gate: RunningScopegate) -> float:
    return sample(gate, "scopegate_revocation_state_age_seconds")


def backends(application: str, listening: bool = False) -> list[int]:
    with psycopg.connect(BASE, autocommit=True) as conn:
        rows = conn.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s"
                            + (" AND query LIKE 'LISTEN %%'" if listening else ""), (application,)).fetchall()
    return [int(pid) for (pid,) in rows]


def test_postgres_restart_as_seen_by_a_replica(scopegate: Callable[..., RunningScopegate],
                                               upstream: RecordingUpstream, schema: str) -> None:
    """Every connection of A dropped by the server at once (what a restart or failover does to a client):
    no request of A fails for it (each connection the server closed is found before use and reopened),
    the revocation B makes next reaches A's proxy by polling and then by a LISTEN that is back."""
    application = f"scopegate-{uuid.uuid4().hex[:10]}"
    a, b = replicas(scopegate, upstream, store_url(schema, application=application), store_url(schema))
    first, second = token(b), token(b)
    # Several core threads of A with a connection each.
    with ThreadPoolExecutor(6) as pool:
        assert all(r.status_code == 200 for r in pool.map(lambda _: mint(a), range(12)))
    wait_for(lambda: len(backends(application, listening=True)) == 1, BOUND)
    assert orders(a, first).status_code == 200

    with psycopg.connect(BASE, autocommit=True) as admin:
        dropped = admin.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                "WHERE application_name = %s", (application,)).fetchone()
    assert dropped is not None and dropped[0] >= 3, dropped  # the feed's, the listener, the core's threads
    time.sleep(0.2)  # the server has closed them all

    # The core's threads each meet a connection the server closed: none of them answers 503 for it.
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda _: mint(a), range(12)))
    assert [r.status_code for r in answers] == [200] * 12, [(r.status_code, r.text[:80]) for r in answers]
    assert create_group(a).status_code in (200, 201)

    revoke(b, first)
    wait_for(lambda: orders(a, first).status_code == 401, BOUND)
    assert_caught_up(a, schema)
    assert age(a) < 1.0
    wait_for(lambda: readyz(a).status_code == 200, BOUND)  # a health check cut by the restart is retried
    # LISTEN is back: the next revocation wakes A at once again.
    wait_for(lambda: len(backends(application, listening=True)) == 1, BOUND)
    revoke(b, second)
    wait_for(lambda: orders(a, second).status_code == 401, BOUND)
    assert_caught_up(a, schema)
    assert "store unavailable" not in a.output()  # a restart the store recovered from at once is not an outage


def test_outage_listen_blackhole_then_partition_then_recovery(scopegate: Callable[..., RunningScopegate],
                                                              upstream: RecordingUpstream, relay: FaultProxy,
                                                              schema: str) -> None:
    """A reaches PostgreSQL through the relay. (1) Only its LISTEN connection is black-holed: polling takes
    over, revocations through B still reach A within the poll interval, and the state is honestly fresh
    (polls succeed). (2) Everything is black-holed: the staleness gauge climbs, the feed's failure count
    with it, /readyz and its gauges say store and feed, the decision log says stale_revocation; B revokes
    meanwhile. (3) The network returns: A applies exactly what B wrote, from where it stopped, and its
    connections are rebuilt with no restart."""
    a, b = replicas(scopegate, upstream, store_url(schema, port=relay.port), store_url(schema))
    tokens = [token(b) for _ in range(4)]
    assert all(orders(a, t).status_code == 200 for t in tokens)
    assert_caught_up(a, schema)

    # (1) LISTEN alone black-holed.
    relay.hold_matching(b"LISTEN ")
    assert relay.held == 1
    revoke(b, tokens[0])
    wait_for(lambda: orders(a, tokens[0]).status_code == 401, BOUND)  # by polling: LISTEN wakes nothing
    ages = []
    for _ in range(6):
        ages.append(age(a))
        time.sleep(0.25)
    assert max(ages) < 1.0, ages
    assert readyz(a).status_code == 200 and mint(a).status_code == 200
    relay.hold_matching(None)
    assert_caught_up(a, schema)

    # (2) A cut off: B goes on revoking.
    failures = sample(a, "scopegate_revocation_feed_read_failures_total")
    position = sample(a, "scopegate_revocation_feed_position")
    relay.set_mode("blackhole")
    outage = time.monotonic()
    revoke(b, tokens[1])
    revoke(b, tokens[2])
    assert create_group(b).status_code in (200, 201)
    # Until maxStaleness A still lets the revoked tokens through (it cannot know): the bound it promises.
    time.sleep(max(0.0, outage + MAX_STALENESS + 0.5 - time.monotonic()))
    response = orders(a, tokens[3])
    assert (response.status_code, response.json()["error"]) == (503, "stale_revocation")
    assert age(a) > MAX_STALENESS
    assert sample(a, "scopegate_revocation_feed_read_failures_total") > failures
    assert sample(a, "scopegate_revocation_feed_position") == position
    assert sample(a, "scopegate_readiness_check", check="revocation_feed") == 0.0
    assert sample(a, "scopegate_readiness_check", check="store") == 0.0
    body = readyz(a).json()
    assert body["checks"]["revocation_feed"] == "stale" and body["checks"]["store"] != "ok", body
    assert sample(a, "scopegate_requests_total", route="orders-read", decision="deny", reason="stale_revocation") >= 1
    wait_for(lambda: any(line.get("reason") == "stale_revocation" for line in decision_lines(a)), BOUND)

    # (3) Back: A applies B's revocations, each once, and serves again.
    relay.set_mode("pass")
    wait_for(lambda: orders(a, tokens[1]).status_code == 401, 10)
    assert orders(a, tokens[2]).status_code == 401
    assert orders(a, tokens[3]).status_code == 200
    assert_caught_up(a, schema)
    assert age(a) < 1.0
    wait_for(lambda: readyz(a).status_code == 200, BOUND)
    assert mint(a).status_code == 200 and create_group(a).status_code in (200, 201)
    revoke(a, tokens[3])
    assert orders(a, tokens[3]).status_code == 401
    wait_for(lambda: orders(b, tokens[3]).status_code == 401, BOUND)
    assert_caught_up(a, schema)

    # (4) A management write whose COMMIT is held up in the network past storeTimeout: answered 503 at its
    # deadline, and never applied when the COMMIT arrives (the measured defect of issue 12).
    late = f"late-{uuid.uuid4().hex[:8]}"
    relay.set_latency(LATE, match=b"COMMIT")
    response, took = timed(lambda: create_named_group(a, late))
    assert (response.status_code, took < BOUND) == (503, True), (response.text, took, relay.delayed)
    assert response.json()["errorCode"] == "E0000009"
    time.sleep(LATE + 0.5 - took)  # the COMMIT has reached the server
    relay.set_latency(0)
    assert (groups(b, late), events(b, late)) == ([], [])
    # Its COMMIT on time but the answer lost: applied although the client was answered 503; its system-log
    # event says so once A can ask the server what became of it.
    lost = f"lost-{uuid.uuid4().hex[:8]}"
    relay.set_latency(LATE, match=b"COMMIT", upstream=False)
    response, took = timed(lambda: create_named_group(a, lost))
    assert (response.status_code, took < BOUND) == (503, True)
    relay.set_latency(0)
    wait_for(lambda: [e["debugContext"]["debugData"].get("storeCommit") is not None for e in events(b, lost)] == [True],
             BOUND + LATE)
    assert len(groups(b, lost)) == 1
    assert a.stop() == 0


LATE = 2.5
"""Seconds the relay holds a COMMIT (or its answer): past storeTimeout (1 s)."""


def create_named_group(gate: RunningScopegate, name: str, timeout: float = BOUND) -> httpx.Response:
    return httpx.post(f"{gate.core}/api/v1/groups", headers={"Authorization": f"SSWS {gate.admin_token}"},
                      json={"profile": {"name": name}}, timeout=timeout)


def groups(gate: RunningScopegate, name: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{gate.core}/api/v1/groups", params={"q": name},
                         headers={"Authorization": f"SSWS {gate.admin_token}"}, timeout=PATIENT)
    assert response.status_code == 200, response.text
    return [g for g in response.json() if g["profile"]["name"] == name]


def events(gate: RunningScopegate, name: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{gate.core}/api/v1/logs", params={"q": name},
                         headers={"Authorization": f"SSWS {gate.admin_token}"}, timeout=PATIENT)
    assert response.status_code == 200, response.text
    return [e for e in response.json() if e["eventType"] == "group.lifecycle.create"]
