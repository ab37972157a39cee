"""Management-API changes from two processes sharing one store serialize: no update is lost."""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from authz.context import CoreContext
from authz.management.changes import Change, Snapshot, commit_change
from authz.revocation import RevocationState
from authz.store.base import Store, open_store
from authz.syslog import SystemLog
from config.schema import ScopegateConfig
from tests.authz.management.kit import ADMIN_TOKEN, ISSUER, seed
from tests.clock import Clock

POSTGRES_URL = os.environ.get("SCOPEGATE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'shared.db'}"
        return
    import psycopg

    schema = f"test_{uuid.uuid4().hex[:16]}"
    admin = psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=5)
    try:
        yield f"{POSTGRES_URL}?schema={schema}"
    finally:
        admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        admin.close()


def context(store: Store) -> CoreContext:
    clock = Clock()
    cfg = ScopegateConfig.model_validate({"issuer": ISSUER, "adminTokens": [ADMIN_TOKEN]})

    async def refresh() -> None:
        return None

    return CoreContext(config=cfg, store=store, syslog=SystemLog(stream=None),
                       revocation=RevocationState({}, now=clock), now=clock, refresh_revocations=refresh)


def test_two_processes_adding_scopes_to_one_server_both_survive(url: str) -> None:
    """Two stores on one database (two processes) each read the server, add a scope and write it back at
    the same moment: the second waits for the first and builds on it, so both scopes are kept."""
    first, second = open_store(url), open_store(url)
    try:
        seed(first)
        read = {"a": threading.Event(), "b": threading.Event()}
        errors: list[BaseException] = []

        def add_scope(ctx: CoreContext, name: str, me: str, other: str) -> None:
            def build(snapshot: Snapshot, now: float) -> tuple[Change, None]:
                document = snapshot.server_document("orders")
                document["scopes"] = [*document["scopes"], {"name": name}]
                read[me].set()
                # Without a cross-process guard both builds run on the same snapshot and the later write
                # silently drops the earlier scope; with it, the other build cannot start until this commits.
                read[other].wait(0.5)
                change = Change()
                change.put("authorization_server", "orders", document)
                return change, None

            try:
                commit_change(ctx, build)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=add_scope, args=(context(first), "orders:a", "a", "b")),
                   threading.Thread(target=add_scope, args=(context(second), "orders:b", "b", "a"))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert errors == []
        stored = first.get_object("authorization_server", "orders")
        assert stored is not None
        assert {"orders:a", "orders:b"} <= {s["name"] for s in stored.document["scopes"]}
    finally:
        first.close()
        second.close()
