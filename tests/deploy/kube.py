"""Offline Kubernetes checks: the schemas kubernetes-validate bundles, and kubectl's built-in kustomize.

No cluster is involved (none can run here): a manifest is valid when it validates strictly against the
OpenAPI schema of every Kubernetes version we claim, 1.29 (native sidecars) through the newest the tool knows.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import kubernetes_validate.utils
import yaml
from kubernetes_validate.utils import all_versions
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
OLDEST = "1.29"
"""Native sidecars (an init container with restartPolicy: Always) are on by default from 1.29."""
# The library re-reads a version's 1.8 MB definitions file on every call; the same validation, read once.
kubernetes_validate.utils.schema_contents = functools.cache(kubernetes_validate.utils.schema_contents)  # type: ignore[assignment]

VERSIONS = sorted({".".join(v.split(".")[:2]) for v in all_versions() if Version(v) >= Version(OLDEST)}, key=Version)


def tool(name: str) -> str:
    """An executable beside this Python (the test extra installs them) or on PATH; a missing one fails loudly."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    assert found, f"{name} is not installed: `pip install -e '.[test]'` (or .ci/run) provides it"
    return found


def validate(resource: dict[str, Any], version: str) -> None:
    """Strict: an unknown field is an error, as the API server's strict field validation makes it."""
    kubernetes_validate.validate(resource, version, strict=True)


def kustomize(directory: Path) -> list[dict[str, Any]]:
    """``kubectl kustomize DIR``: renders offline, never talks to a cluster."""
    done = subprocess.run([tool("kubectl"), "kustomize", str(directory)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, f"kubectl kustomize {directory} failed:\n{done.stderr}"
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]
