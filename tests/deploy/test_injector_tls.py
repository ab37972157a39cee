"""The real ``scopegate inject`` process over real TLS, with clients that verify its certificate.

cert-manager rotates the Secret behind the webhook's certificate files; the process serves the new pair
on the next handshake, and keeps the old one while a rotation is half written.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import httpx
import jsonpatch
import pytest

from tests.certs import self_signed
from tests.deploy.kube import VERSIONS, validate
from tests.deploy.test_injector import admission_review, app_pod
from tests.e2e.conftest import free_port, scopegate_command

pytestmark = pytest.mark.e2e


class Injector:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.cert, self.key = directory / "tls.crt", directory / "tls.key"
        self.webhook_port, self.ops_port = free_port(), free_port()
        self.log = directory / "inject.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.log_file: IO[bytes] | None = None

    def install(self, stem: str, *, cert: bool = True, key: bool = True) -> Path:
        """Write a new pair the way a Secret volume changes: each file replaced atomically."""
        pem, private = self_signed(self.directory, stem)
        if cert:
            shutil.copy(pem, self.directory / "incoming.crt")
            os.replace(self.directory / "incoming.crt", self.cert)
        if key:
            shutil.copy(private, self.directory / "incoming.key")
            os.replace(self.directory / "incoming.key", self.key)
        return pem

    def start(self) -> None:
        self.log_file = self.log.open("wb")
        self.process = subprocess.Popen(
            [*scopegate_command(), "inject", "--cert", str(self.cert), "--key", str(self.key),
             "--listen", f"127.0.0.1:{self.webhook_port}", "--ops", f"127.0.0.1:{self.ops_port}",
             "--image", "registry.example/scopegate:0.1.0"],
            stdout=self.log_file, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log.read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{self.ops_port}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"scopegate inject not ready:\n{self.log.read_text()}")

    def post(self, trusted: Path, body: bytes) -> httpx.Response:
        """A fresh connection (a new handshake) from a client that trusts exactly ``trusted``."""
        context = ssl.create_default_context(cafile=str(trusted))
        with httpx.Client(verify=context, timeout=10) as client:
            return client.post(f"https://127.0.0.1:{self.webhook_port}/mutate", content=body,
                               headers={"content-type": "application/json"})

    def metric(self, name: str, labels: str = "") -> float:
        text = httpx.get(f"http://127.0.0.1:{self.ops_port}/metrics", timeout=5).text
        for line in text.splitlines():
            if line.startswith(f"{name}{labels} "):
                return float(line.split()[-1])
        raise AssertionError(f"{name}{labels} not exported:\n{text}")

    def stop(self) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.log_file is not None:
            self.log_file.close()
        return int(self.process.returncode)


@pytest.fixture
def injector(tmp_path: Path) -> Iterator[Injector]:
    running = Injector(tmp_path)
    yield running
    running.stop()


def test_webhook_over_verified_tls_injects_and_reloads_rotated_certificates(injector: Injector) -> None:
    """A verifying client gets a patch that applies and validates; a rotated pair is served without a restart."""
    first = injector.install("first")
    injector.start()
    pod = app_pod({"scopegate.io/inject": "true"})
    review = json.dumps(admission_review(pod)).encode()

    r = injector.post(first, review)
    assert r.status_code == 200
    response = r.json()["response"]
    assert response["allowed"] is True and response["patchType"] == "JSONPatch"
    result = jsonpatch.JsonPatch(json.loads(base64.b64decode(response["patch"]))).apply(pod)
    for version in VERSIONS:
        validate(result, version)
    assert [c["name"] for c in result["spec"]["initContainers"]] == ["scopegate"]

    # Verification is on: a client that trusts only the system roots refuses the self-signed webhook.
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"), httpx.Client(timeout=5) as client:
        client.post(f"https://127.0.0.1:{injector.webhook_port}/mutate", content=review)

    # Garbage over the wire: 400, allowed false, and the process is still there.
    r = injector.post(first, b"\x00not a review")
    assert r.status_code == 400 and r.json()["response"]["allowed"] is False

    # cert-manager rotates: the next handshake presents the new certificate; the old one is no longer trusted.
    second = injector.install("second")
    assert injector.post(second, review).status_code == 200
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        injector.post(first, review)
    assert injector.metric("scopegate_injector_certificate_reloads_total", '{result="ok"}') == 1

    # Half a rotation (the new certificate, the old key): the previous pair keeps serving.
    injector.install("third", key=False)
    assert injector.post(second, review).status_code == 200
    assert injector.metric("scopegate_injector_certificate_reloads_total", '{result="error"}') == 1
    third = injector.directory / "third.pem"
    # ... and the key arrives: the third pair is served.
    shutil.copy(injector.directory / "third.key", injector.directory / "incoming.key")
    os.replace(injector.directory / "incoming.key", injector.key)
    assert injector.post(third, review).status_code == 200

    assert injector.metric("scopegate_injector_admissions_total", '{outcome="injected"}') == 4
    assert injector.metric("scopegate_injector_admissions_total", '{outcome="malformed"}') == 1
    assert injector.metric("scopegate_injector_certificate_expiry_timestamp_seconds") > time.time()
    assert injector.stop() == 0


def test_unreadable_certificate_is_a_one_line_startup_error(tmp_path: Path) -> None:
    missing = tmp_path / "absent.pem"
    done = subprocess.run([*scopegate_command(), "inject", "--cert", str(missing), "--key", str(missing),
                           "--listen", f"127.0.0.1:{free_port()}", "--ops", f"127.0.0.1:{free_port()}"],
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "cannot load the certificate" in done.stderr
