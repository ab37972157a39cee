"""Issue 12 item 2: every PostgreSQL store call has a deadline, even when the network black-holes traffic
(accepts and reads, never answers, no RST), where neither TCP keepalives nor a server-side statement
timeout can end the wait. Through ``tests/e2e/fault_proxy.FaultProxy`` between the store and PostgreSQL."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest

from authz.store.errors import UNAVAILABLE, StoreError
from authz.store.postgres import RETRY_INTERVAL_SECONDS, PostgresStore
from tests.e2e.fault_proxy import FaultProxy

pytestmark = pytest.mark.postgres

TIMEOUT = 0.5


@pytest.fixture
def relay(postgres_url: str) -> Iterator[FaultProxy]:
    parts = urlsplit(postgres_url)
    proxy = FaultProxy(parts.hostname or "127.0.0.1", parts.port or 5432).start()
    yield proxy
    proxy.stop()


@pytest.fixture
def store(postgres_url: str, relay: FaultProxy) -> Iterator[PostgresStore]:
    parts = urlsplit(postgres_url)
    user = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    opened = PostgresStore(urlunsplit(parts._replace(netloc=f"{user}127.0.0.1:{relay.port}")), timeout=TIMEOUT)
    yield opened
    opened.close()


def timed_failure(call: object) -> tuple[StoreError, float]:
    started = time.monotonic()
    with pytest.raises(StoreError) as info:
        call()  # type: ignore[operator]
    return info.value, time.monotonic() - started


def test_store_partition_blackhole_every_call_has_a_deadline(store: PostgresStore, relay: FaultProxy) -> None:
    """A read, a write and a fresh connection each give up within the timeout; then the store fails fast
    until the network passes again, and the next call after that succeeds on a rebuilt connection."""
    store.put_object("group", "before", {}, "api")
    relay.set_mode("blackhole")
    error, took = timed_failure(store.ping)
    assert took < TIMEOUT + 0.4, took
    assert store.down
    # Redacted for clients, the operator's line for stderr.
    assert error.description == UNAVAILABLE and "127.0.0.1" not in error.description
    assert f"127.0.0.1:{relay.port}" in str(error) and "no answer within 0.5s" in str(error)
    # Another thread, whose own connection is healthy on paper: fails at once, no waiting in line.
    results: list[float] = []

    def other() -> None:
        results.append(timed_failure(lambda: store.put_object("group", "during", {}, "api"))[1])

    thread = threading.Thread(target=other)
    thread.start()
    thread.join(5)
    assert results and results[0] < 0.2, results
    # The trial after the retry interval opens a new connection into the black hole: bounded too.
    time.sleep(RETRY_INTERVAL_SECONDS + 0.05)
    _, took = timed_failure(lambda: store.get_object("group", "before"))
    assert took < TIMEOUT + 0.4, took
    relay.set_mode("pass")
    deadline = time.monotonic() + 5
    while True:
        try:
            found = store.get_object("group", "before")
            break
        except StoreError:
            assert time.monotonic() < deadline, "the store did not recover"
            time.sleep(0.05)
    assert found is not None and not store.down
    assert store.get_object("group", "during") is None  # the failed write left nothing behind
    store.put_object("group", "after", {}, "api")
    assert store.get_object("group", "after") is not None


def test_store_refused_connection_fails_fast_and_recovers(store: PostgresStore, relay: FaultProxy) -> None:
    store.ping()
    relay.set_mode("refuse")
    _, took = timed_failure(store.ping)  # the open connection is reset
    assert took < TIMEOUT
    time.sleep(RETRY_INTERVAL_SECONDS + 0.05)
    _, took = timed_failure(store.ping)  # a new connection is refused
    assert took < TIMEOUT and store.down
    relay.set_mode("pass")
    time.sleep(RETRY_INTERVAL_SECONDS + 0.05)
    store.ping()
    assert not store.down


def test_store_lock_wait_is_cancelled_by_the_server(store: PostgresStore, postgres_url: str) -> None:
    """A statement waiting on a lock past the timeout is cancelled server-side (statement_timeout): the
    connection stays usable and the store is not marked down, since the server answered."""
    import psycopg

    from authz.store.postgres import split_schema

    conninfo, schema = split_schema(postgres_url)
    store.ping()
    with psycopg.connect(conninfo) as locker:
        locker.execute(f'LOCK TABLE "{schema}".changes IN ACCESS EXCLUSIVE MODE')
        error, took = timed_failure(lambda: store.changes_since(0))
        assert took < TIMEOUT + 0.4 and "statement timeout" in str(error)
        locker.rollback()
    assert not store.down
    assert store.changes_since(0) == []


def test_store_error_never_shows_a_password_query_parameter() -> None:
    """libpq also takes the password as ``?password=``: stderr's line masks it like the userinfo's."""
    from authz.store import open_store

    with pytest.raises(StoreError) as info:
        open_store("postgresql://scopegate@127.0.0.1:1/db?password=hunter2&sslmode=disable", timeout=TIMEOUT)
    assert "hunter2" not in str(info.value) and "password=***" in str(info.value)
    assert info.value.description == UNAVAILABLE


def test_store_commit_delayed_past_the_deadline_is_never_applied(store: PostgresStore, relay: FaultProxy,
                                                                 postgres_url: str) -> None:
    """Issue 12 item 2: a write whose COMMIT is held up in the network until after the client gave up (and its
    caller answered 503) must not commit when the COMMIT arrives. The relay delivers the COMMIT late, then the
    client's FIN, as a slow link does: the server rolls the transaction back."""
    import psycopg

    from authz.store.postgres import split_schema

    conninfo, schema = split_schema(postgres_url)
    store.ping()
    late = 4 * TIMEOUT
    relay.set_latency(late, match=b"COMMIT")
    started = time.monotonic()

    def write() -> None:
        with store.transaction() as tx:
            tx.put_object("group", "late", {}, "api")
            tx.append_log({"eventType": "group.lifecycle.create", "target": [{"id": "late"}]}, time.time())

    with pytest.raises(StoreError):
        write()
    assert time.monotonic() - started < TIMEOUT + 0.4
    assert relay.delayed >= 1
    time.sleep(late + 0.5)  # the COMMIT has reached the server by now
    relay.set_latency(0)
    with psycopg.connect(conninfo) as direct:
        rows = direct.execute(f'SELECT count(*) FROM "{schema}".objects WHERE id = %s', ("late",)).fetchone()
        logs = direct.execute(f'SELECT count(*) FROM "{schema}".logs WHERE event LIKE %s', ('%"late"%',)).fetchone()
    assert (rows, logs) == ((0,), (0,)), "a write committed after its client's deadline"
    # The store is usable again at once: a deadline is not an outage of the server.
    time.sleep(RETRY_INTERVAL_SECONDS + 0.05)
    store.put_object("group", "after", {}, "api")
    assert store.get_object("group", "after") is not None


def test_store_commit_whose_answer_is_lost_says_so_in_its_events(store: PostgresStore, relay: FaultProxy,
                                                                 postgres_url: str) -> None:
    """The other side of the same race: the COMMIT reaches the server in time and commits, but its answer is
    held up past the deadline, so the caller is told the write failed. Once the store can be asked again, the
    transaction's system-log events say that the change was made although its caller was told otherwise."""
    import json

    import psycopg

    from authz.store.postgres import LATE_COMMIT, split_schema

    conninfo, schema = split_schema(postgres_url)
    store.ping()
    relay.set_latency(4 * TIMEOUT, match=b"COMMIT", upstream=False)

    def write() -> None:
        with store.transaction() as tx:
            tx.put_object("group", "acked-late", {}, "api")
            tx.append_log({"eventType": "group.lifecycle.create", "target": [{"id": "acked-late"}]}, time.time())

    with pytest.raises(StoreError):
        write()
    relay.set_latency(0)
    time.sleep(RETRY_INTERVAL_SECONDS + 0.05)
    store.ping()  # the next call that reaches the server settles the lost COMMIT first
    assert store.get_object("group", "acked-late") is not None  # it did commit
    with psycopg.connect(conninfo) as direct:
        (text,) = direct.execute(f'SELECT event FROM "{schema}".logs WHERE event LIKE %s',  # type: ignore[misc]
                                 ('%"acked-late"%',)).fetchone()
    assert json.loads(text)["debugContext"]["debugData"]["storeCommit"] == LATE_COMMIT


def test_store_session_ended_under_a_statement_is_reopened_and_the_statement_rerun(
        postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A restart can beat the idle check: the server's goodbye ("terminating connection due to administrator
    command") is then the answer to the next statement. A read, or the BEGIN of a write, ran nothing on the
    server: it runs again on a new connection, and the write's transaction carries on there."""
    import psycopg

    from authz.store import postgres
    from authz.store.postgres import split_schema

    conninfo, _ = split_schema(postgres_url)
    store = PostgresStore(postgres_url, timeout=TIMEOUT)
    try:
        monkeypatch.setattr(postgres, "_ended_by_server", lambda conn: False)  # the race lost, every time

        def terminate() -> None:
            pid = store._connection().info.backend_pid
            with psycopg.connect(conninfo, autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
                deadline = time.monotonic() + 5
                while admin.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone():
                    assert time.monotonic() < deadline
                    time.sleep(0.01)

        terminate()
        store.ping()  # a read
        terminate()
        store.put_object("group", "after-restart", {}, "api")  # BEGIN, then the transaction on the new connection
        assert store.get_object("group", "after-restart") is not None
        assert not store.down
    finally:
        store.close()
