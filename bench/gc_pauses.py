"""Collector pauses of ``scopegate run`` under load (issue 11 item 1; not part of the test suite).

Runs the real process (through this script, which times every collection with ``gc.callbacks``) in front of
the bench upstream, loads it with wrk on the public and on the token route, and reports per mode: req/s, p50,
p99, the scopegate CPU per request, and the collections per 10,000 requests with their pauses. The modes run
in interleaved rounds, so that their ratios come from the same run:

  python    CPython's defaults: no ``gc.freeze()``, thresholds (700, 10, 10) (scopegate before issue 11);
  product   what ``scopegate run`` does (``proxy.server.settle_heap``: freeze, then ``GC_THRESHOLD``);
  freeze    freeze only, CPython's thresholds;
  T0/T1/T2  freeze and these thresholds (e.g. ``5000/10/10``).

    python3 bench/gc_pauses.py --duration 8 --rounds 3 --modes python,freeze,product
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import proxy_throughput as pt


def serve(mode: str, stats_path: str, config: str) -> int:
    """The scopegate process with every collection timed: SIGUSR1 starts counting, SIGUSR2 writes the figures."""
    import proxy.server as server

    if mode == "python":
        server.settle_heap = lambda: None
    elif mode == "freeze":
        server.GC_THRESHOLD = gc.get_threshold()
    elif mode != "product":
        t0, t1, t2 = (int(x) for x in mode.split("/"))
        server.GC_THRESHOLD = (t0, t1, t2)
    pauses: dict[int, list[float]] = {0: [], 1: [], 2: []}
    started = [0.0]

    def timer(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            pauses[info["generation"]].append(time.perf_counter() - started[0])

    def reset(signum: int, frame: FrameType | None) -> None:
        for values in pauses.values():
            values.clear()

    def dump(signum: int, frame: FrameType | None) -> None:
        Path(stats_path).write_text(json.dumps({
            "pauses_ms": {g: [round(p * 1000, 3) for p in v] for g, v in pauses.items()},
            "frozen": gc.get_freeze_count(), "threshold": gc.get_threshold()}))

    signal.signal(signal.SIGUSR1, reset)
    signal.signal(signal.SIGUSR2, dump)
    gc.callbacks.append(timer)
    return server.run(config)


def measure(upstream: str, workdir: Path, mode: str, args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    stats = workdir / "gc-stats.json"
    command = [sys.executable, str(Path(__file__).resolve()), "--serve", mode, str(stats)]
    out: dict[str, dict[str, Any]] = {}
    with pt.scopegate(upstream, workdir, command) as gate:
        pid = int(gate["pid"])
        auth = {"Authorization": f"Bearer {gate['token']}"}
        for case, url, headers in (("public", f"{gate['proxy']}/public/x", {}),
                                   ("token", f"{gate['proxy']}/api/items", auth)):
            pt.wrk(case, url, duration=args.warmup, connections=args.connections, threads=1, headers=headers)
            os.kill(pid, signal.SIGUSR1)
            time.sleep(0.1)
            result = pt.wrk(case, url, duration=args.duration, connections=args.connections, threads=1,
                            headers=headers, pid=pid)
            stats.unlink(missing_ok=True)
            os.kill(pid, signal.SIGUSR2)
            for _ in range(100):
                if stats.exists() and stats.stat().st_size:
                    break
                time.sleep(0.05)
            figures = json.loads(stats.read_text())
            out[case] = {"result": result, **figures}
    return out


def summarize(mode: str, case: str, runs: list[dict[str, Any]]) -> str:
    rps = statistics.median(r["result"].requests_per_second for r in runs)
    p50 = statistics.median(r["result"].p50_ms for r in runs)
    p99 = statistics.median(r["result"].p99_ms for r in runs)
    cpu = statistics.median(r["result"].cpu_us_per_request or 0.0 for r in runs)
    per = []
    for g in ("0", "1", "2"):
        counts = [len(r["pauses_ms"][g]) / r["result"].requests * 10_000 for r in runs]
        longest = max((max(r["pauses_ms"][g], default=0.0) for r in runs), default=0.0)
        per.append(f"gen{g} {statistics.median(counts):7.1f}/10k max {longest:6.2f} ms")
    total = statistics.median(sum(sum(v) for v in r["pauses_ms"].values()) / r["result"].requests * 1e3
                              for r in runs)
    return (f"| {mode} | {case} | {rps:,.0f} | {p50:.2f} | {p99:.2f} | {cpu:.0f} | {' · '.join(per)} | {total:.1f} |"
            f" {runs[0]['frozen']:,} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--serve", nargs=2, metavar=("MODE", "STATS"), help=argparse.SUPPRESS)
    parser.add_argument("--duration", type=int, default=8, help="seconds per case (default 8)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--modes", default="python,product", help="comma-separated (default python,product)")
    parser.add_argument("--upstream", choices=("auto", "nginx", "aiohttp"), default="auto")
    args, rest = parser.parse_known_args()
    if args.serve:  # the child: "... --serve MODE STATS run --config PATH"
        mode, stats = args.serve
        return serve(mode, stats, rest[rest.index("--config") + 1])
    if shutil.which("wrk") is None:
        print("wrk is required: apt-get install -y wrk", file=sys.stderr)
        return 2
    kind = "nginx" if args.upstream == "nginx" or (args.upstream == "auto" and shutil.which("nginx")) else "aiohttp"
    modes = args.modes.split(",")
    rows: dict[tuple[str, str], list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="scopegate-gc-") as tmp:
        workdir = Path(tmp)
        upstream_cm = pt.nginx_upstream(workdir) if kind == "nginx" else pt.aiohttp_upstream(workdir)
        with upstream_cm as (upstream, note):
            for _ in range(args.rounds):
                for mode in modes:
                    for case, figures in measure(upstream, workdir, mode, args).items():
                        rows.setdefault((mode, case), []).append(figures)
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, upstream {note}, wrk -t1 -c{args.connections} "
          f"-d{args.duration}s, {args.rounds} interleaved rounds (medians; longest pause over all rounds); "
          f"load average before: {os.getloadavg()[0]:.1f}")
    print("| mode | route | req/s | p50 ms | p99 ms | CPU µs/req | collections per 10k requests | "
          "GC ms per 1k requests | frozen objects |")
    print("|---|---|---:|---:|---:|---:|---|---:|---:|")
    for (mode, case), runs in rows.items():
        print(summarize(mode, case, runs))
    for case in ("public", "token"):
        base = rows.get((modes[0], case))
        for mode in modes[1:]:
            other = rows.get((mode, case))
            if base and other:
                ratio = [o["result"].requests_per_second / b["result"].requests_per_second for b, o in zip(base, other, strict=True)]
                p99 = [o["result"].p99_ms / b["result"].p99_ms for b, o in zip(base, other, strict=True)]
                print(f"{case}: {mode} ÷ {modes[0]} req/s per round {[round(r, 2) for r in ratio]}, "
                      f"p99 per round {[round(r, 2) for r in p99]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
