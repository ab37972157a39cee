"""What only the PostgreSQL store does: schema isolation, NOTIFY wake-ups, feed commit order, reconnects."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import psycopg
import pytest

from authz.store.base import Store, open_store
from authz.store.errors import StoreConflict, StoreError
from authz.store.postgres import PostgresStore, split_schema
from tests.authz.store.conftest import POSTGRES_URL

pytestmark = pytest.mark.postgres


@pytest.fixture
def stores(postgres_url: str) -> Iterator[list[PostgresStore]]:
    opened = [PostgresStore(postgres_url), PostgresStore(postgres_url)]
    yield opened
    for store in opened:
        store.close()


class TestUrl:
    def test_schema_option_is_split_off(self) -> None:
        """?schema= is the store's option; other query parameters go to libpq untouched."""
        assert split_schema("postgresql://u@h:5432/db?schema=s1&sslmode=disable") == (
            "postgresql://u@h:5432/db?sslmode=disable", "s1")
        assert split_schema("postgresql://u@h/db") == ("postgresql://u@h/db", None)

    def test_schema_must_be_an_identifier(self) -> None:
        """A schema name that is not a plain identifier is refused (it is put into SQL)."""
        with pytest.raises(StoreError, match="schema must be a plain identifier"):
            open_store('postgresql://u@127.0.0.1/db?schema=x";drop')

    def test_schemas_isolate_stores(self, postgres_url: str) -> None:
        """Two schemas in one database are two independent stores."""
        other_url = postgres_url.replace("?schema=", "?schema=other_")
        a, b = open_store(postgres_url), open_store(other_url)
        try:
            a.put_object("group", "g", {}, "config")
            assert b.get_object("group", "g") is None
            assert a.allocate_token_seq() == 1 and b.allocate_token_seq() == 1
        finally:
            a.close()
            b.close()
            with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
                admin.execute(f'DROP SCHEMA IF EXISTS "{split_schema(other_url)[1]}" CASCADE')

    def test_unreachable_server_is_one_clear_line_without_password(self) -> None:
        """A server that refuses connections is a StoreError in one line that does not show the password."""
        with pytest.raises(StoreError) as info:
            open_store("postgresql://scopegate:hunter2@127.0.0.1:1/db")
        message = str(info.value)
        assert message.startswith("cannot open store postgresql://scopegate:***@127.0.0.1:1/db: ")
        assert "\n" not in message and "hunter2" not in message

    def test_unknown_database(self) -> None:
        """A database that does not exist is named in the error."""
        url = POSTGRES_URL.rsplit("/", 1)[0] + "/scopegate_no_such_db"
        with pytest.raises(StoreError, match="scopegate_no_such_db"):
            open_store(url)


class TestSchema:
    def test_concurrent_first_opens_migrate_once(self, postgres_url: str) -> None:
        """Several processes opening a fresh database at once all succeed and apply each migration once."""
        errors: list[BaseException] = []
        opened: list[Store] = []
        barrier = threading.Barrier(4)

        def start() -> None:
            barrier.wait()
            try:
                opened.append(open_store(postgres_url))
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=start) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        schema = split_schema(postgres_url)[1]
        with psycopg.connect(POSTGRES_URL) as admin:
            versions = admin.execute(f'SELECT version FROM "{schema}".schema_version ORDER BY version').fetchall()
        assert versions == [(1,), (2,)]
        for s in opened:
            s.close()

    def test_newer_schema_is_refused(self, postgres_url: str) -> None:
        """A database written by a newer scopegate is refused with a message that says so."""
        open_store(postgres_url).close()
        with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
            admin.execute(f'INSERT INTO "{split_schema(postgres_url)[1]}".schema_version VALUES (99, 0)')
        with pytest.raises(StoreConflict, match="schema version 99, written by a newer scopegate"):
            open_store(postgres_url)


class TestChangeFeed:
    def test_notify_wakes_another_process(self, stores: list[PostgresStore]) -> None:
        """A change committed through one store wakes wait_for_change on another (LISTEN/NOTIFY)."""
        listener, writer = stores
        assert listener.wait_for_change(0) is False  # starts listening
        writer.append_change("config", {"kind": "app", "id": "web"})
        assert listener.wait_for_change(30) is True

    def test_no_notification_before_commit(self, stores: list[PostgresStore]) -> None:
        """Listeners hear of an entry only once its transaction has committed, never of a rolled-back one."""
        listener, writer = stores
        assert listener.wait_for_change(0) is False

        def append_then_fail() -> None:
            with writer.transaction() as tx:
                tx.append_change("config", {"kind": "app", "id": "web"})
                assert listener.wait_for_change(0) is False
                raise RuntimeError

        with pytest.raises(RuntimeError):
            append_then_fail()
        assert listener.wait_for_change(0) is False

    def test_appends_become_visible_in_seq_order(self, stores: list[PostgresStore]) -> None:
        """While one transaction holds an unfinished append, another append waits for it, so a reader that
        has seen seq N never finds a smaller seq committed later."""
        first, second = stores
        result: list[int] = []
        with first.transaction() as tx:
            held = tx.append_change("revoke_jti", {"jti": "a"})
            thread = threading.Thread(target=lambda: result.append(second.append_change("revoke_jti", {"jti": "b"})))
            thread.start()
            thread.join(0.3)
            assert thread.is_alive(), "the second append must wait for the first to commit"
            assert [c.seq for c in second.changes_since(0)] == []
        thread.join(30)
        assert result and result[0] > held
        assert [c.seq for c in second.changes_since(0)] == [held, result[0]]


class TestConnections:
    def test_broken_connection_is_replaced(self, stores: list[PostgresStore]) -> None:
        """After the server drops an idle connection (a restart, a failover, pg_terminate_backend), the next call
        finds it closed before using it and reconnects: no call fails (issue 12 item 2, de47f16)."""
        store = stores[0]
        store.put_object("group", "g", {}, "config")
        pid = store._connection().info.backend_pid
        with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        store.ping()
        assert store.get_object("group", "g") is not None
        assert store._connection().info.backend_pid != pid

    def test_threads_use_their_own_connections(self, stores: list[PostgresStore]) -> None:
        """A transaction open in one thread does not block or leak into another thread's reads."""
        store = stores[0]
        seen: list[object] = []
        with store.transaction() as tx:
            tx.put_object("group", "pending", {}, "api")
            thread = threading.Thread(target=lambda: seen.append(store.get_object("group", "pending")))
            thread.start()
            thread.join(30)
        assert seen == [None]
        assert store.get_object("group", "pending") is not None
