"""The soak benchmark's smoke mode (issue 12, "Load and soak"): ``bench/soak.py`` for 20 seconds on SQLite, against
the real ``scopegate run``, with every traffic class (allowed, denied, expired and revoked tokens, minting,
revocation, introspection, management changes, two WebSocket sessions, the /healthz lag probe).

It asserts only that the run produced figures and saw no unexpected answer, never how fast anything was: on a
shared 2-core machine 20 seconds say nothing about drift or leaks (the full run does: ``python3 bench/soak.py``).
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


pytestmark = pytest.mark.e2e


def test_soak_smoke_produces_figures_and_no_unexpected_error(tmp_path: Path) -> None:
    """20 s of mixed traffic: every 5-s bucket has requests, latencies, lag, RSS and fds; no answer was unexpected."""
    out = tmp_path / "soak.json"
    run = run_bench([str(ROOT / "bench" / "soak.py"), "--backend", "sqlite", "--duration", "20", "--tokens", "500",
                     "--bucket", "5", "--results", str(tmp_path), "--json", str(out)], timeout=180)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    (result,) = json.loads(out.read_text())
    assert result["targets"]["unexpected_errors"] == 0, result["errors"]
    assert result["exit_code"] == 0
    buckets = result["buckets"]
    assert len(buckets) >= 3
    for bucket in buckets:
        assert bucket["requests"] > 0
        for key in ("proxy_p50_ms", "proxy_p99_ms", "core_p50_ms", "core_p99_ms", "lag_p50_ms", "lag_p99_ms"):
            assert math.isfinite(bucket[key]) and bucket[key] > 0, (key, bucket)
        assert bucket["rss_mib"] > 0 and bucket["fds_min"] > 0
    seen = {kind for bucket in buckets for kind in bucket["counts"]}
    assert {"allowed", "scope", "no_token", "expired", "revoked", "mint", "revoke", "introspect", "mgmt", "ws",
            "probe"} <= seen
    for key in ("rss_ok", "fds_ok", "p99_ok"):
        assert key in result["targets"]
    reports = list(tmp_path.glob("soak-sqlite-*.md"))
    assert len(reports) == 1 and "| t (s) |" in reports[0].read_text()
