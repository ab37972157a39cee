"""Start the real ``scopegate run`` process and talk HTTP to it.

Use the ``scopegate`` fixture: ``gate = scopegate(config_dict_or_yaml, env={...})`` returns a running
process with ``proxy``, ``core`` and ``ops`` base URLs. Ports are chosen free; the store is a fresh
SQLite file in the test's tmp_path unless the config names one. Teardown sends SIGTERM and checks the
process exits cleanly.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
import pytest
import yaml

from tests.e2e.recording_upstream import RecordingUpstream

ADMIN_TOKEN = "e2e-admin-token-0123456789abcdef"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scopegate_command() -> list[str]:
    """The installed console script if it sits beside this Python, else the module."""
    script = Path(sys.executable).parent / "scopegate"
    return [str(script)] if script.exists() else [sys.executable, "-m", "proxy.cli"]


@dataclass
class RunningScopegate:
    process: subprocess.Popen[str]
    config_path: Path
    proxy: str
    core: str
    ops: str
    log_path: Path
    config: dict[str, Any] = field(default_factory=dict)
    admin_token: str = ADMIN_TOKEN
    log_file: IO[str] | None = None

    def issuer(self, as_id: str) -> str:
        return f"{self.config['issuer']}/oauth2/{as_id}"

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        self.process.send_signal(sig)

    def stop(self, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.log_file is not None:
            self.log_file.close()
        return int(self.process.returncode)


def _wait_ready(gate: RunningScopegate, deadline: float) -> None:
    last = ""
    # One client for the whole wait: httpx.get makes a client, and so a TLS context (the CA bundle read and
    # parsed), on every call, 20 times a second per starting process.
    with httpx.Client(timeout=1) as client:
        while time.monotonic() < deadline:
            if gate.process.poll() is not None:
                raise RuntimeError(f"scopegate exited with {gate.process.returncode}:\n{gate.output()[-4000:]}")
            try:
                r = client.get(f"{gate.ops}/readyz")
                if r.status_code == 200:
                    return
                last = r.text
            except httpx.HTTPError as exc:
                last = str(exc)
            time.sleep(0.05)
    raise RuntimeError(f"scopegate not ready: {last}\n{gate.output()[-4000:]}")


def launch(tmp_path: Path, config: dict[str, Any] | str | None = None, env: dict[str, str] | None = None,
           name: str = "scopegate", wait: bool = True, keep_store: Path | None = None) -> RunningScopegate:
    """Start ``scopegate run`` with ``config`` (free ports, a fresh SQLite store in ``tmp_path``); the caller stops it."""
    doc: dict[str, Any] = yaml.safe_load(config) if isinstance(config, str) else dict(config or {})
    ports = {k: free_port() for k in ("proxy", "core", "ops")}
    listen = dict(doc.get("listen") or {})
    for key, port in ports.items():
        if listen.get(key) != "off":
            listen.setdefault(key, f"127.0.0.1:{port}")
    doc["listen"] = listen
    scheme = "https" if listen.get("tls") else "http"
    doc.setdefault("issuer", f"{scheme}://{listen['core']}")
    doc.setdefault("store", f"sqlite:///{keep_store or (tmp_path / f'{name}.db')}")
    doc.setdefault("adminTokens", [ADMIN_TOKEN])
    doc.setdefault("revocation", {"maxStaleness": "5s", "pollInterval": "100ms"})
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    log_path = tmp_path / f"{name}.log"
    log = log_path.open("w")
    proc = subprocess.Popen(
        [*scopegate_command(), "run", "--config", str(path)],
        stdout=log, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
        env={**os.environ, **(env or {})},
    )

    def url(key: str) -> str:
        tls = listen.get("tls") and key in (listen.get("tlsListeners") or ["core"])
        return f"{'https' if tls else 'http'}://{listen[key]}"

    gate = RunningScopegate(proc, path, url("proxy"), url("core") if listen["core"] != "off" else "", url("ops"),
                            log_path, doc, log_file=log)
    if wait:
        try:
            _wait_ready(gate, time.monotonic() + 60)
        except BaseException:
            gate.stop()
            raise
    return gate


@pytest.fixture
def scopegate(tmp_path: Path) -> Iterator[Callable[..., RunningScopegate]]:
    started: list[RunningScopegate] = []

    def start(config: dict[str, Any] | str | None = None, env: dict[str, str] | None = None,
              name: str = "scopegate", wait: bool = True, keep_store: Path | None = None) -> RunningScopegate:
        gate = launch(tmp_path, config, env, name, wait=False, keep_store=keep_store)
        started.append(gate)
        if wait:
            _wait_ready(gate, time.monotonic() + 60)
        return gate

    yield start
    for gate in started:
        gate.stop()


@pytest.fixture
def upstream() -> Iterator[RecordingUpstream]:
    """The recording upstream of tests/e2e/recording_upstream.py, on a free port, for one test."""
    server = RecordingUpstream().start()
    yield server
    server.stop()


def decision_lines(gate: RunningScopegate) -> list[dict[str, Any]]:
    """The proxy's decision-log lines so far (one JSON object per request, written in batches of at most 100 ms)."""
    return [json.loads(line) for line in gate.output().splitlines()
            if line.startswith("{") and '"requestId"' in line]
