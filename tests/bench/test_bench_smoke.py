"""The benchmark's smoke mode (issue 11, "Done when"): ``python3 bench/run.py --smoke`` runs every scenario for
about a second against real servers (nginx, the floor, ``scopegate run``) and produces figures for each.

It asserts only that the figures exist and make sense as numbers, never how fast anything is: on a shared
2-core machine a second of load says nothing about performance.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = ("1", "2", "3", "4", "5", "6", "7", "8", "8b", "L1", "L2", "L3", "L4")

pytestmark = pytest.mark.e2e


def _tools_or_skip() -> None:
    missing = [tool for tool in ("wrk", "nginx") if shutil.which(tool) is None]
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"{missing} not installed: .ci/run installs wrk and nginx")
        pytest.skip(f"{missing} not installed (apt-get install -y wrk nginx)")


def _workers_supported() -> bool:
    script = Path(sys.executable).parent / "scopegate"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "proxy.cli"]
    out = subprocess.run([*command, "run", "--help"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    return "--workers" in out.stdout


def test_smoke_run_produces_figures_for_every_scenario(tmp_path: Path) -> None:
    """Every scenario, the 1-connection runs, the RSS phase and the target table come out of one smoke run."""
    _tools_or_skip()
    report, figures = tmp_path / "report.md", tmp_path / "figures.json"
    done = subprocess.run([sys.executable, "bench/run.py", "--smoke", "--output", str(report), "--json", str(figures)],
                          cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    data = json.loads(figures.read_text())
    workers = _workers_supported()
    for key in SCENARIOS:
        scenario = data["scenarios"][key]
        if key == "7" and not workers:
            assert scenario["unavailable"] and not scenario["runs"]
            continue
        assert scenario["unavailable"] is None, key
        assert len(scenario["runs"]) == 1, key
        run = scenario["runs"][0]
        assert run["rps"] > 0 and run["requests"] > 0 and run["errors"] == 0, (key, run)
        assert 0 < run["p50_ms"] <= run["p99_ms"], (key, run)
        # /proc counts CPU in 10 ms ticks: a 1 s run of a light server may show none.
        assert run["cpu_us"] is not None and run["cpu_us"] >= 0, (key, run)
    rss = data["rss"]
    assert rss["idle"] > 0 and rss["after_round_1"][0] > 0 and rss["after_soak"][0] > 0 and rss["cached"][0] > 0
    assert rss["cached"][2] == {"200": 500}, rss["cached"]  # every cached-phase token was accepted
    text = report.read_text()
    assert "| target (issue 11) |" in text and "Machine" in text
    assert len(data["targets"]) == 9
    assert all(t["value"] is not None for t in data["targets"] if not (t["name"].startswith("2 workers") and not workers))
