"""The real `scopegate` process: start-up, the three listeners, start-up errors, signals, the demo."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import RunningScopegate, free_port, scopegate_command

pytestmark = pytest.mark.e2e

DEMO_SECRET = "demo-service-secret-0001"


def run_cli(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*scopegate_command(), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def demo_config(store: Path) -> dict[str, object]:
    import yaml

    from config.loader import DEFAULT_CONFIG_NAME

    text = (Path(__file__).parents[2] / "config" / DEFAULT_CONFIG_NAME).read_text()
    text = text.replace("${SCOPEGATE_DEMO_SECRET:-demo-service-secret-0001}", DEMO_SECRET)
    text = text.replace("${SCOPEGATE_DEMO_PASSWORD:-correct-horse-battery}", "correct-horse-battery")
    doc: dict[str, object] = yaml.safe_load(text)
    for key in ("listen", "issuer", "store", "adminTokens"):
        doc.pop(key)
    return doc


def test_check_accepts_default_and_rejects_bad_config(tmp_path: Path) -> None:
    """`scopegate check` exits 0 for a valid file and 1, naming path and rule, for an invalid one."""
    assert run_cli("check", cwd=tmp_path).returncode == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text("authorizationServers:\n  - {id: a, name: A, audiences: [relative]}\n")
    result = run_cli("check", "--config", str(bad), cwd=tmp_path)
    assert result.returncode == 1
    assert f"{bad}:2: authorizationServers[0].audiences: 'relative' must be an absolute URI" in result.stderr
    assert "Traceback" not in result.stderr


def test_listeners_serve_health_readiness_and_metrics(scopegate: Callable[..., RunningScopegate], tmp_path: Path) -> None:
    """The ops listener answers /healthz, /readyz and /metrics; the core serves discovery."""
    gate = scopegate(demo_config(tmp_path))
    assert httpx.get(f"{gate.ops}/healthz").status_code == 200
    ready = httpx.get(f"{gate.ops}/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    metrics = httpx.get(f"{gate.ops}/metrics")
    assert metrics.status_code == 200 and "scopegate_requests_total" in metrics.text
    meta = httpx.get(f"{gate.core}/oauth2/demo/.well-known/oauth-authorization-server").json()
    assert meta["issuer"] == gate.issuer("demo")


def test_demo_request_passes_with_token_and_fails_without(scopegate: Callable[..., RunningScopegate], tmp_path: Path) -> None:
    """The newcomer's minute: no token → 401; a client_credentials token → the echo upstream answers."""
    gate = scopegate(demo_config(tmp_path))
    denied = httpx.get(f"{gate.proxy}/api/orders")
    assert denied.status_code == 401
    assert denied.headers["www-authenticate"].startswith('Bearer realm="demo"')
    token = httpx.post(f"{gate.core}/oauth2/demo/v1/token", auth=("demo-service", DEMO_SECRET),
                       data={"grant_type": "client_credentials", "scope": "demo:read"}).json()["access_token"]
    allowed = httpx.get(f"{gate.proxy}/api/orders", headers={"Authorization": f"Bearer {token}"})
    assert allowed.status_code == 200, allowed.text
    assert "demo-service" in allowed.text  # the echo shows the identity headers the API would see
    public = httpx.get(f"{gate.proxy}/api/public/ping")
    assert public.status_code == 200


def test_port_in_use_is_one_clear_line(tmp_path: Path) -> None:
    """A taken port stops start-up with one line and a non-zero exit, not a traceback."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cfg = tmp_path / "c.yaml"
        cfg.write_text(f"listen: {{proxy: '127.0.0.1:{port}', core: '127.0.0.1:{free_port()}', ops: '127.0.0.1:{free_port()}'}}\n"
                       f"store: 'sqlite:///{tmp_path}/s.db'\n")
        result = run_cli("run", "--config", str(cfg), cwd=tmp_path)
    assert result.returncode != 0
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert f"cannot listen on 127.0.0.1:{port} for the proxy listener" in lines[0]


def test_bad_store_url_is_one_clear_line(tmp_path: Path) -> None:
    """An unusable store stops start-up with one line."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"listen: {{proxy: '127.0.0.1:{free_port()}', core: '127.0.0.1:{free_port()}', ops: '127.0.0.1:{free_port()}'}}\n"
                   "store: 'sqlite:////proc/forbidden/dir/s.db'\n")
    result = run_cli("run", "--config", str(cfg), cwd=tmp_path)
    assert result.returncode != 0
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "store" in lines[0]


def test_unreadable_config_is_a_clear_error(tmp_path: Path) -> None:
    """A missing config file is named, with a non-zero exit."""
    result = run_cli("run", "--config", str(tmp_path / "missing.yaml"), cwd=tmp_path)
    assert result.returncode != 0
    assert "missing.yaml" in result.stderr and "cannot read the file" in result.stderr
    assert "Traceback" not in result.stderr


def test_sigterm_exits_cleanly(scopegate: Callable[..., RunningScopegate], tmp_path: Path) -> None:
    """SIGTERM stops the process with status 0."""
    gate = scopegate(demo_config(tmp_path))
    assert gate.stop() == 0


def test_sighup_with_invalid_config_keeps_running(scopegate: Callable[..., RunningScopegate], tmp_path: Path) -> None:
    """A reload that fails validation leaves the running configuration in place."""
    gate = scopegate(demo_config(tmp_path))
    original = gate.config_path.read_text()
    gate.config_path.write_text(original.replace("accessTokenLifetimeMinutes: 60", "accessTokenLifetimeMinutes: 4"))
    gate.signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "reload refused" not in gate.output() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "reload refused" in gate.output()
    assert gate.process.poll() is None
    assert httpx.get(f"{gate.ops}/readyz").status_code == 200


def test_state_survives_sigkill(scopegate: Callable[..., RunningScopegate], tmp_path: Path) -> None:
    """A process killed with SIGKILL and restarted keeps its signing keys and issued-token records."""
    store = tmp_path / "kept.db"
    gate = scopegate(demo_config(tmp_path), keep_store=store, name="first")
    keys_before = httpx.get(f"{gate.core}/oauth2/demo/v1/keys").json()
    token = httpx.post(f"{gate.core}/oauth2/demo/v1/token", auth=("demo-service", DEMO_SECRET),
                       data={"grant_type": "client_credentials", "scope": "demo:read"}).json()["access_token"]
    gate.process.send_signal(signal.SIGKILL)
    gate.process.wait()
    same_addresses = {**demo_config(tmp_path), "listen": gate.config["listen"], "issuer": gate.config["issuer"]}
    again = scopegate(same_addresses, keep_store=store, name="second")
    assert httpx.get(f"{again.core}/oauth2/demo/v1/keys").json() == keys_before
    intro = httpx.post(f"{again.core}/oauth2/demo/v1/introspect", auth=("demo-service", DEMO_SECRET),
                       data={"token": token, "token_type_hint": "access_token"}).json()
    assert intro["active"] is True
    allowed = httpx.get(f"{again.proxy}/api/x", headers={"Authorization": f"Bearer {token}"})
    assert allowed.status_code == 200


def test_sighup_applies_a_valid_config(scopegate: Callable[..., RunningScopegate], tmp_path: Path) -> None:
    """A valid reload takes effect without a restart: here a new public route and a new authorization server."""
    import yaml

    gate = scopegate(demo_config(tmp_path))
    assert httpx.get(f"{gate.proxy}/api/status").status_code == 401
    doc = yaml.safe_load(gate.config_path.read_text())
    doc["routes"].insert(0, {"name": "status", "path": "/api/status", "public": True})
    second = {**doc["authorizationServers"][0], "id": "reports", "name": "Reports",
              "audiences": ["http://127.0.0.1:8080/reports"]}
    doc["authorizationServers"].append(second)
    doc["routes"].append({"name": "reports", "path": "/reports", "scopes": {"anyOf": ["demo:read"]}})
    gate.config_path.write_text(yaml.safe_dump(doc, sort_keys=False))
    gate.signal(signal.SIGHUP)
    deadline = time.monotonic() + 15
    while "scopegate: reloaded" not in gate.output() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "scopegate: reloaded" in gate.output(), gate.output()[-2000:]
    assert httpx.get(f"{gate.proxy}/api/status").status_code == 200
    token = httpx.post(f"{gate.core}/oauth2/reports/v1/token", auth=("demo-service", DEMO_SECRET),
                       data={"grant_type": "client_credentials", "scope": "demo:read"}).json()["access_token"]
    allowed = httpx.get(f"{gate.proxy}/reports/7", headers={"Authorization": f"Bearer {token}"})
    assert allowed.status_code == 200, allowed.text


def test_the_process_prunes_the_store(scopegate: Callable[..., RunningScopegate], tmp_path: Path) -> None:
    """The running process prunes on its own: with a 1 s log retention, the start-up events leave the system
    log within a few prune intervals, while new events are kept."""
    cfg = {**demo_config(tmp_path), "core": {"pruneInterval": "200ms", "logRetention": "1s"}}
    gate = scopegate(cfg)
    headers = {"Authorization": f"SSWS {gate.admin_token}"}

    def event_types() -> list[str]:
        response = httpx.get(f"{gate.core}/api/v1/logs", headers=headers, params={"limit": "1000"})
        assert response.status_code == 200, response.text
        return [e["eventType"] for e in response.json()]

    assert "oauth2.as.created" in event_types()
    deadline = time.monotonic() + 10
    while "oauth2.as.created" in event_types() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "oauth2.as.created" not in event_types()
    httpx.post(f"{gate.core}/oauth2/demo/v1/token", auth=("demo-service", DEMO_SECRET),
               data={"grant_type": "client_credentials", "scope": "demo:read"})
    assert "app.oauth2.as.token.grant.access_token" in event_types()
