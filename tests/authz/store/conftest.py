"""Store fixtures: every contract test runs once on SQLite and once on PostgreSQL.

PostgreSQL is the server CI provides (``SCOPEGATE_TEST_POSTGRES``, default
``postgresql://postgres@127.0.0.1:5432/test``). Each test gets a schema of its own, dropped afterwards.
If the server is unreachable the PostgreSQL tests fail (they do not skip): a green run must mean that
both implementations passed.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from authz.store.base import Store, open_store

POSTGRES_URL = os.environ.get("SCOPEGATE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")

StoreFactory = Callable[[], Store]
"""Opens another store on the same database (a second process's view, or a reopen after close)."""


def _postgres_schema() -> Iterator[str]:
    import psycopg

    schema = f"test_{uuid.uuid4().hex[:16]}"
    try:
        admin = psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=5)
    except psycopg.Error as exc:
        pytest.fail(f"PostgreSQL at {POSTGRES_URL} is unreachable ({str(exc).strip()}); "
                    "start it or set SCOPEGATE_TEST_POSTGRES", pytrace=False)
    try:
        yield f"{POSTGRES_URL}?schema={schema}"
    finally:
        admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        admin.close()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A PostgreSQL store URL with a fresh schema of its own."""
    yield from _postgres_schema()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'state.db'}"
    else:
        yield from _postgres_schema()


@pytest.fixture
def open_more(store_url: str) -> Iterator[StoreFactory]:
    opened: list[Store] = []

    def factory() -> Store:
        store = open_store(store_url)
        opened.append(store)
        return store

    yield factory
    for store in opened:
        store.close()


@pytest.fixture
def store(open_more: StoreFactory) -> Store:
    return open_more()
