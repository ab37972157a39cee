"""The configs the overlays put in the ConfigMap, run by the real process with the environment the pods give it.

No cluster here: the sidecar's config is what kubectl kustomize renders, its ${...} values come from the
environment as the Deployment's env and Secret would set them, and two processes on one PostgreSQL
database stand for two replicas of the overlay "shared".
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import yaml

from tests.deploy.test_manifests import config_text
from tests.e2e.conftest import RunningScopegate, free_port

pytestmark = pytest.mark.e2e

POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"
CLIENT_SECRET = secrets.token_hex(16)
ADMIN_TOKEN = secrets.token_hex(32)


@pytest.fixture
def pg_schema() -> Iterator[str]:
    schema = f"deploy_{secrets.token_hex(6)}"
    yield schema
    with psycopg.connect(POSTGRES, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def overlay_config(name: str, issuer: str) -> dict[str, Any]:
    """The overlay's config; the listeners are the test's free loopback ports instead of the pod's 0.0.0.0."""
    doc: dict[str, Any] = yaml.safe_load(config_text(name))
    del doc["listen"]
    doc["issuer"] = issuer
    return doc


def token(gate: RunningScopegate) -> str:
    response = httpx.post(f"{gate.core}/oauth2/orders/v1/token", auth=("orders-service", CLIENT_SECRET),
                          data={"grant_type": "client_credentials", "scope": "orders:read"})
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


@pytest.mark.postgres
def test_shared_overlay_replicas_on_postgresql_accept_each_others_tokens(
        scopegate: Callable[..., RunningScopegate], pg_schema: str) -> None:
    """Two replicas of the shared overlay's config: a token from one passes the other; the admin token from the
    Secret opens the management API; no token, no entry."""
    env = {"SCOPEGATE_DSN": f"{POSTGRES}?schema={pg_schema}", "SCOPEGATE_ADMIN_TOKEN": ADMIN_TOKEN,
           "SCOPEGATE_ORDERS_SERVICE_SECRET": CLIENT_SECRET, "SCOPEGATE_UPSTREAM": "builtin:echo"}
    issuer = f"http://127.0.0.1:{free_port()}"
    a, b = (scopegate(overlay_config("shared", issuer), env=env, name=name) for name in ("a", "b"))
    assert a.config["store"] == "${SCOPEGATE_DSN}"  # the DSN is never in the config: the Secret gives it
    access = token(a)
    assert httpx.get(f"{b.proxy}/orders/7", headers={"Authorization": f"Bearer {access}"}).status_code == 200
    assert httpx.get(f"{b.proxy}/orders/7").status_code == 401
    assert httpx.post(f"{a.proxy}/orders", headers={"Authorization": f"Bearer {access}"}).status_code == 403
    servers = httpx.get(f"{b.core}/api/v1/authorizationServers", headers={"Authorization": f"SSWS {ADMIN_TOKEN}"})
    assert servers.status_code == 200 and [s["id"] for s in servers.json()] == ["orders"]


def test_single_overlay_config_serves_with_the_pods_environment(
        scopegate: Callable[..., RunningScopegate], tmp_path: Path) -> None:
    """The single overlay's config (the store moved from the pod's emptyDir to the test's directory)."""
    doc = overlay_config("single", f"http://127.0.0.1:{free_port()}")
    assert doc.pop("store") == "sqlite:////var/lib/scopegate/state.db"
    gate = scopegate(doc, env={"SCOPEGATE_ORDERS_SERVICE_SECRET": CLIENT_SECRET, "SCOPEGATE_UPSTREAM": "builtin:echo"})
    assert httpx.get(f"{gate.proxy}/orders", headers={"Authorization": f"Bearer {token(gate)}"}).status_code == 200
    assert httpx.get(f"{gate.proxy}/orders").status_code == 401
    assert httpx.get(f"{gate.ops}/readyz").status_code == 200
