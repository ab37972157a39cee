"""The revocation-propagation benchmark's smoke mode (issue 12, "Load and soak"): ``bench/propagation.py`` with
three revocations per phase, on three ``scopegate run`` replicas sharing PostgreSQL and two sharing one SQLite
file, at rest and under load.

It asserts that every revocation reached every other replica's proxy (a 401 within the bench's 10-s limit) and
that figures came out; the propagation bound itself is asserted by ``tests/e2e/test_shared_store.py``, and the
figures are measured by the full run (``python3 bench/propagation.py``).
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_bench(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """The bench in a session of its own: on a timeout the whole group goes (its scopegate processes too)."""
    with subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, start_new_session=True) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            raise AssertionError(f"the bench ran over {timeout} s:\n{out[-3000:]}\n{err[-3000:]}") from None
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


pytestmark = [pytest.mark.e2e, pytest.mark.postgres]


def test_propagation_smoke_every_revocation_reaches_every_replica(tmp_path: Path) -> None:
    """Three revocations per backend and phase: each refused by every other replica, with figures for each phase."""
    out = tmp_path / "propagation.json"
    run = run_bench([str(ROOT / "bench" / "propagation.py"), "--revocations", "3", "--results", str(tmp_path),
                     "--json", str(out)], timeout=180)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    rows = json.loads(out.read_text())
    assert [(r["backend"], r["replicas"], r["phase"]) for r in rows] == [
        ("postgresql", 3, "rest"), ("postgresql", 3, "load"), ("sqlite", 2, "rest"), ("sqlite", 2, "load")]
    for row in rows:
        assert row["failures"] == 0, row["failure_examples"]
        assert row["samples"] == 3 * (row["replicas"] - 1)
        assert math.isfinite(row["p50_ms"]) and math.isfinite(row["p99_ms"])
    assert all(r["load_rps"] > 0 for r in rows if r["phase"] == "load")
    assert len(list(tmp_path.glob("propagation-*.md"))) == 1
