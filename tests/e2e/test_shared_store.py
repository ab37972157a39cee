"""Several sidecars sharing one store (DESIGN §5): a token minted by one passes the others, and a
revocation through one is refused by every proxy within the feed's bound."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from tests.e2e.conftest import RunningScopegate, free_port
from tests.e2e.test_process import DEMO_SECRET, demo_config

pytestmark = pytest.mark.e2e

POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"


@pytest.fixture
def pg_schema() -> Iterator[str]:
    schema = f"e2e_{secrets.token_hex(6)}"
    yield schema
    with psycopg.connect(POSTGRES, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def sidecars(scopegate: Callable[..., RunningScopegate], tmp_path: Path, store: str) -> tuple[RunningScopegate, ...]:
    """Two processes with the same store and the same public issuer, as replicas behind one name."""
    issuer = f"http://127.0.0.1:{free_port()}"
    gates = []
    for name in ("a", "b"):
        cfg: dict[str, Any] = {**demo_config(tmp_path), "store": store, "issuer": issuer,
                               "revocation": {"maxStaleness": "5s", "pollInterval": "200ms"}}
        gates.append(scopegate(cfg, name=name))
    return tuple(gates)


def mint(gate: RunningScopegate) -> str:
    response = httpx.post(f"{gate.core}/oauth2/demo/v1/token", auth=("demo-service", DEMO_SECRET),
                          data={"grant_type": "client_credentials", "scope": "demo:read"})
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


def wait_for_status(url: str, token: str, status: int, within: float) -> float:
    started = time.monotonic()
    while True:
        got = httpx.get(url, headers={"Authorization": f"Bearer {token}"}).status_code
        if got == status:
            return time.monotonic() - started
        if time.monotonic() - started > within:
            raise AssertionError(f"still {got} after {within}s, expected {status}")
        time.sleep(0.02)


def check_revocation_crosses_processes(a: RunningScopegate, b: RunningScopegate) -> float:
    token = mint(a)
    assert httpx.get(f"{b.proxy}/api/x", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    revoked = httpx.post(f"{a.core}/oauth2/demo/v1/revoke", auth=("demo-service", DEMO_SECRET),
                         data={"token": token, "token_type_hint": "access_token"})
    assert revoked.status_code == 200
    # The revoking process refuses it at once (issue 4); the other within its poll interval.
    assert httpx.get(f"{a.proxy}/api/x", headers={"Authorization": f"Bearer {token}"}).status_code == 401
    latency = wait_for_status(f"{b.proxy}/api/x", token, 401, within=3.0)
    fresh = mint(b)
    assert httpx.get(f"{a.proxy}/api/x", headers={"Authorization": f"Bearer {fresh}"}).status_code == 200
    return latency


@pytest.mark.postgres
def test_sidecars_sharing_postgresql_see_each_others_revocations(
        scopegate: Callable[..., RunningScopegate], tmp_path: Path, pg_schema: str) -> None:
    """On PostgreSQL, a revocation through one sidecar is refused by the other (LISTEN/NOTIFY wakes it)."""
    a, b = sidecars(scopegate, tmp_path, f"{POSTGRES}?schema={pg_schema}")
    assert check_revocation_crosses_processes(a, b) < 3.0
    keys_a = httpx.get(f"{a.core}/oauth2/demo/v1/keys").json()
    assert keys_a == httpx.get(f"{b.core}/oauth2/demo/v1/keys").json()


def test_sidecars_sharing_one_sqlite_file_see_each_others_revocations(
        scopegate: Callable[..., RunningScopegate], tmp_path: Path) -> None:
    """On one SQLite file, the other process learns the revocation by polling the feed."""
    a, b = sidecars(scopegate, tmp_path, f"sqlite:///{tmp_path / 'shared.db'}")
    assert check_revocation_crosses_processes(a, b) < 3.0
