"""Throughput of the proxy hot path against its upstream alone (issue 5 "Speed"; not part of the test suite).

Three cases, each measured with wrk for a fixed duration over loopback:

  (a) the upstream directly (nginx ``return 200`` if nginx is installed, else a small aiohttp server);
  (b) ``scopegate run`` in front of it, on a public route (guard, path, route, forward);
  (c) the same process with a valid token on a scoped route, warm verified-token cache (the whole gate).

It prints requests/s and p99 latency for each and the ratios b/a and c/b (the later speed issue's budget
is c/b ≥ 0.95). Run from the repository root:

    python3 bench/proxy_throughput.py                 # 10 s per case, 64 connections
    python3 bench/proxy_throughput.py --duration 5 --rounds 3 --json   # medians of 3 interleaved rounds

Needs wrk (``apt-get install -y wrk``); nginx is optional (``apt-get install -y nginx``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]
SECRET = "bench-secret-0123456789abcdef"
BODY = '{"ok":true,"items":[1,2,3]}'


@dataclass
class Result:
    case: str
    url: str
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int
    cpu_us_per_request: float | None = None
    """CPU time (user + system) the scopegate process spent per request during the run: steadier than
    req/s on a shared machine, where other work takes CPU from the server and wrk alike."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not come up")


# ---------------------------------------------------------------------------------------------- upstreams


@contextmanager
def nginx_upstream(workdir: Path) -> Iterator[tuple[str, str]]:
    port = free_port()
    conf = workdir / "nginx.conf"
    conf.write_text(f"""
worker_processes 1;
daemon off;
pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    server {{
        listen 127.0.0.1:{port};
        location / {{ default_type application/json; return 200 '{BODY}'; }}
    }}
}}
""")
    proc = subprocess.Popen(["nginx", "-c", str(conf), "-p", str(workdir)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_http(f"http://127.0.0.1:{port}/")
        yield f"http://127.0.0.1:{port}", "nginx 1 worker, return 200"
    finally:
        proc.send_signal(signal.SIGQUIT)
        proc.wait(10)


@contextmanager
def aiohttp_upstream(workdir: Path) -> Iterator[tuple[str, str]]:
    port = free_port()
    script = workdir / "upstream.py"
    script.write_text(f"""
from aiohttp import web
async def ok(request):
    return web.Response(body=b'{BODY}', content_type="application/json")
app = web.Application()
app.router.add_route("*", "/{{tail:.*}}", ok)
web.run_app(app, host="127.0.0.1", port={port}, print=None, access_log=None)
""")
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_http(f"http://127.0.0.1:{port}/")
        yield f"http://127.0.0.1:{port}", "aiohttp.web, one process"
    finally:
        proc.terminate()
        proc.wait(10)


# ---------------------------------------------------------------------------------------------- scopegate


@contextmanager
def scopegate(upstream: str, workdir: Path, command: list[str] | None = None) -> Iterator[dict[str, str]]:
    """``scopegate run`` in front of ``upstream``; ``command`` replaces ``scopegate`` (bench/gc_pauses.py)."""
    ports = {name: free_port() for name in ("proxy", "core", "ops")}
    config = {
        "listen": {name: f"127.0.0.1:{port}" for name, port in ports.items()},
        "issuer": f"http://127.0.0.1:{ports['core']}",
        "store": f"sqlite:///{workdir}/bench.db",
        "upstream": {"url": upstream},
        "routes": [
            {"name": "public", "path": "/public", "public": True},
            {"name": "items", "path": "/api/items", "methods": ["GET"], "scopes": {"anyOf": ["items:read"]}},
        ],
        "authorizationServers": [{
            "id": "bench", "name": "Bench", "audiences": ["https://bench.example.com/api"],
            "scopes": [{"name": "items:read"}],
            "policies": [{"name": "All", "priority": 1, "conditions": {"clients": {"include": ["ALL_CLIENTS"]}},
                          "rules": [{"name": "All", "priority": 1,
                                     "conditions": {"grantTypes": {"include": ["client_credentials"]},
                                                    "scopes": {"include": ["*"]}},
                                     "actions": {"token": {"accessTokenLifetimeMinutes": 60}}}]}],
        }],
        "apps": [{"clientId": "bench", "clientSecret": SECRET, "name": "Bench"}],
    }
    path = workdir / "scopegate.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    script = Path(sys.executable).parent / "scopegate"
    if command is None:
        command = [str(script)] if script.exists() else [sys.executable, "-m", "proxy.cli"]
    # The decision log (one JSON line per request) goes to a file, as a deployment would ship it.
    log = (workdir / "scopegate.log").open("w")
    proc = subprocess.Popen([*command, "run", "--config", str(path)], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    try:
        wait_http(f"{urls['ops']}/readyz")
        response = httpx.post(f"{urls['core']}/oauth2/bench/v1/token", auth=("bench", SECRET),
                              data={"grant_type": "client_credentials", "scope": "items:read"})
        response.raise_for_status()
        urls["token"] = response.json()["access_token"]
        urls["pid"] = str(proc.pid)
        yield urls
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        log.close()


# ---------------------------------------------------------------------------------------------- wrk


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if not match:
        raise ValueError(f"unparsed wrk latency {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk(case: str, url: str, *, duration: int, connections: int, threads: int,
        headers: dict[str, str] | None = None, pid: int | None = None) -> Result:
    command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency"]
    for name, value in (headers or {}).items():
        command += ["-H", f"{name}: {value}"]
    cpu_before = cpu_seconds(pid) if pid else 0.0
    out = subprocess.run([*command, url], capture_output=True, text=True, check=True, timeout=duration + 60).stdout
    cpu = cpu_seconds(pid) - cpu_before if pid else None
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    # Anchored to the start of a "Latency Distribution" line: a "+/- Stdev" column ending in "50%" (72.50%)
    # must not be read as the percentile.
    p50 = _ms(re.search(r"^\s*50%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"^\s*99%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    errors = 0
    if match := re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out):
        errors += int(match.group(1))
    if match := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out):
        errors += sum(int(g) for g in match.groups())
    per_request = None if cpu is None or not total else round(cpu / total * 1e6, 1)
    return Result(case, url, rps, p50, p99, total, errors, per_request)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=10, help="seconds per case (default 10)")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (default 1: leave CPUs to the server)")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of unmeasured load before each case")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run a, b, c this many times, interleaved, and report each case's median round "
                             "(steadier on a shared machine)")
    parser.add_argument("--upstream", choices=("auto", "nginx", "aiohttp"), default="auto")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is required: apt-get install -y wrk", file=sys.stderr)
        return 2
    kind = args.upstream
    if kind == "auto":
        kind = "nginx" if shutil.which("nginx") else "aiohttp"
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="scopegate-bench-") as tmp:
        workdir = Path(tmp)
        upstream_cm = nginx_upstream(workdir) if kind == "nginx" else aiohttp_upstream(workdir)
        with upstream_cm as (upstream, upstream_note), scopegate(upstream, workdir) as gate:
            auth = {"Authorization": f"Bearer {gate['token']}"}
            checks = [("a", f"{upstream}/public/x", {}), ("b", f"{gate['proxy']}/public/x", {}),
                      ("c", f"{gate['proxy']}/api/items", auth)]
            pids = {"a": None, "b": int(gate["pid"]), "c": int(gate["pid"])}
            for case, url, headers in checks:
                status = httpx.get(url, headers=headers).status_code
                if status != 200:
                    print(f"case {case}: {url} answered {status}", file=sys.stderr)
                    return 1
            rounds: dict[str, list[Result]] = {case: [] for case, _, _ in checks}
            for _ in range(args.rounds):
                for case, url, headers in checks:
                    if args.warmup:
                        wrk(case, url, duration=args.warmup, connections=args.connections, threads=args.threads,
                            headers=headers)
                    rounds[case].append(wrk(case, url, duration=args.duration, connections=args.connections,
                                            threads=args.threads, headers=headers, pid=pids[case]))
            for case in rounds:
                ordered = sorted(rounds[case], key=lambda r: r.requests_per_second)
                results.append(ordered[len(ordered) // 2])
    a, b, c = (r.requests_per_second for r in results)
    cpu_b, cpu_c = (statistics.median(r.cpu_us_per_request or 0.0 for r in rounds[case]) for case in ("b", "c"))
    summary = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "upstream": upstream_note,
        "wrk": f"-t{args.threads} -c{args.connections} -d{args.duration}s",
        "rounds": args.rounds,
        "all_rounds_rps": {case: [round(r.requests_per_second) for r in rs] for case, rs in rounds.items()},
        "all_rounds_cpu_us_per_request": {case: [r.cpu_us_per_request for r in rs] for case, rs in rounds.items()
                                          if case != "a"},
        "results": [asdict(r) for r in results],
        "ratio_b_over_a": round(b / a, 3),
        "ratio_c_over_b": round(c / b, 3),
        "median_cpu_us_per_request": {"b": cpu_b, "c": cpu_c},
        "cpu_ratio_b_over_c": round(cpu_b / cpu_c, 3) if cpu_c else None,
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"{summary['date']}  {summary['machine']}  upstream: {upstream_note}  wrk {summary['wrk']}"
              f"  rounds {args.rounds} (median shown; all: {summary['all_rounds_rps']})")
        names = {"a": "upstream directly", "b": "scopegate, public route", "c": "scopegate, token (warm cache)"}
        for r in results:
            print(f"  ({r.case}) {names[r.case]:<30} {r.requests_per_second:>10.0f} req/s   p50 {r.p50_ms:7.2f} ms"
                  f"   p99 {r.p99_ms:7.2f} ms   errors {r.errors}"
                  + (f"   cpu {r.cpu_us_per_request} µs/req" if r.cpu_us_per_request is not None else ""))
        print(f"  b/a = {summary['ratio_b_over_a']:.3f}   c/b = {summary['ratio_c_over_b']:.3f}  (budget: c/b ≥ 0.95)")
        print(f"  scopegate CPU per request (median of rounds): b {cpu_b:.1f} µs, c {cpu_c:.1f} µs;"
              f" cpu(b)/cpu(c) = {summary['cpu_ratio_b_over_c']} (all: {summary['all_rounds_cpu_us_per_request']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
