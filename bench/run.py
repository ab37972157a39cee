"""scopegate's benchmark (issue 11): one command, every scenario, shuffled rounds, the issue's targets evaluated.

    python3 bench/run.py            # full run: 5 rounds x 10 s per scenario, RSS after 1,000,000 requests
    python3 bench/run.py --quick    # 3 rounds x 5 s, RSS after 200,000 requests, 20,000 cached tokens
    python3 bench/run.py --smoke    # a few seconds per scenario, figures only (CI: tests/bench/test_bench_smoke.py)

Scenarios (wrk -t2 -c64 unless stated; every server on loopback, free ports, one nginx upstream):
  1. nginx directly (``return 200``, one worker);
  2. nginx ``proxy_pass`` with a keep-alive upstream pool in front of it (the ceiling);
  3. a bare uvicorn + aiohttp forwarder with no gate (``bench/floor.py``, the Python floor);
  4. scopegate, public route;
  5. scopegate, authenticated, one token (warm verified-token cache);
  6. scopegate, authenticated, 10,000 distinct tokens rotated by ``bench/lua/rotate_tokens.lua`` (each sent
     once before the rounds: this is the cache holding 10,000 tokens, not its first fill);
  7. scopegate ``run --workers 2``, authenticated, one token;
  8. the token endpoint, client_credentials, 8 concurrent clients (``bench/lua/token_post.lua``), next to
     8b. a raw RS256 sign loop (``cryptography``, RSA-2048, one core) on the same machine.
  L. one connection (wrk -t1 -c1): nginx directly, nginx proxy_pass, the floor and scopegate authenticated.
Each scenario reports req/s, p50, p99 and the CPU time per request of the server's process tree (user + system,
from /proc, the process and its children). RSS of the scopegate process: idle, after the first round, after N
requests in total (rounds plus a soak with rotating tokens) and with 100,000 more tokens cached.

It writes a Markdown report (machine, date, load average, all figures, the issue's targets met or missed by
how much) to stdout and to ``bench/results/<date>.md`` (``--output``; smoke mode writes no file by default).
Needs wrk and nginx (Debian: ``apt-get install -y wrk nginx-light``).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import random
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.insert(1, str(ROOT))  # mint_like reads the store with this checkout's authz
SECRET = "bench-secret-0123456789abcdef"
AS_ID = "bench"
BODY = '{"ok":true,"items":[1,2,3]}'
TOKEN_CACHE_SIZE = 131072
"""The bench raises ``proxy.tokenCacheSize`` (default 10,000) so that 10,000 rotated tokens plus the RSS phase's
100,000 all stay cached: an LRU bound is a dict size, it does not change the cost of a lookup."""


# ---------------------------------------------------------------------------------------------- /proc


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        kids.setdefault(ppid, []).append(int(entry))
    return kids


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants (scopegate's workers, nginx's worker)."""
    kids = _children()
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(kids.get(pid, ()))
    return tree


def tree_cpu_seconds(root: int) -> float:
    """User + system CPU time of a process tree so far (the live processes; Linux /proc)."""
    total = 0
    for pid in process_tree(root):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def tree_rss_bytes(root: int) -> int:
    total = 0
    for pid in process_tree(root):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        if match := re.search(r"^VmRSS:\s+(\d+) kB", status, re.M):
            total += int(match.group(1)) * 1024
    return total


# ---------------------------------------------------------------------------------------------- machine


def machine() -> dict[str, Any]:
    cpu = "unknown CPU"
    try:
        if match := re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M):
            cpu = match.group(1).strip()
    except OSError:
        pass

    def version(command: list[str], pattern: str) -> str:
        try:
            out = subprocess.run(command, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return "?"
        match = re.search(pattern, out.stdout + out.stderr)
        return match.group(1) if match else "?"

    commit = version(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], r"(\w+)")
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "kernel": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "nginx": version(["nginx", "-v"], r"nginx/(\S+)"),
        "wrk": version(["wrk", "-v"], r"wrk (\S+)"),
        "commit": commit + (" (with uncommitted changes)" if dirty else ""),
    }


# ---------------------------------------------------------------------------------------------- servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, proc: subprocess.Popen[bytes] | None = None, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server for {url} exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not come up")


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    """Stop a server this bench started, and whatever of its tree outlives it (by pid, never by name)."""
    tree = process_tree(proc.pid)
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    for pid in tree[1:]:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


_NGINX_COMMON = """
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
"""
_NGINX_TEMP = """
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
"""


@contextmanager
def nginx(workdir: Path, name: str, server: str) -> Iterator[tuple[str, int]]:
    """One nginx master + one worker, its config and temp paths in ``workdir/name`` (nothing of /etc/nginx)."""
    d = workdir / name
    d.mkdir()
    port = free_port()
    upstream_block = ""
    if server.startswith("proxy_pass "):
        target = server.split()[1]
        upstream_block = f"upstream origin {{ server {target}; keepalive 64; keepalive_requests 1000000; }}"
        location = ("proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection \"\"; "
                    "proxy_buffering on;")
    else:
        location = f"default_type application/json; return 200 '{BODY}';"
    conf = d / "nginx.conf"
    conf.write_text(_NGINX_COMMON.format(dir=d) + "http {\n" + _NGINX_TEMP.format(dir=d) + upstream_block
                    + f"\n    server {{ listen 127.0.0.1:{port}; location / {{ {location} }} }}\n}}\n")
    proc = subprocess.Popen(["nginx", "-c", str(conf), "-p", str(d), "-e", str(d / "error.log")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_http(f"http://127.0.0.1:{port}/", proc)
        yield f"http://127.0.0.1:{port}", proc.pid
    finally:
        stop(proc, signal.SIGQUIT)


@contextmanager
def floor(upstream: str) -> Iterator[tuple[str, int]]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(BENCH / "floor.py"), "--listen", f"127.0.0.1:{port}",
                             "--upstream", upstream], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_http(f"http://127.0.0.1:{port}/", proc)
        yield f"http://127.0.0.1:{port}", proc.pid
    finally:
        stop(proc)


def scopegate_command() -> list[str]:
    """``scopegate`` from this checkout (run with ``cwd=ROOT``): the code next to this file is what is measured,
    also from a second worktree, whatever the environment's installed ``scopegate`` points at."""
    return [sys.executable, "-m", "proxy.cli"]


def workers_supported() -> bool:
    out = subprocess.run([*scopegate_command(), "run", "--help"], capture_output=True, text=True, cwd=ROOT)
    return "--workers" in out.stdout


@dataclass
class Gate:
    proxy: str
    core: str
    ops: str
    pid: int
    token: str
    store_url: str
    served: int = 0
    """Requests sent to its proxy listener by this bench so far (warm-ups included)."""


@contextmanager
def scopegate(upstream: str, workdir: Path, name: str, workers: int | None = None) -> Iterator[Gate]:
    """``scopegate run`` in front of ``upstream``, a fresh SQLite store, the decision log to a file."""
    d = workdir / name
    d.mkdir()
    ports = {listener: free_port() for listener in ("proxy", "core", "ops")}
    store_url = f"sqlite:///{d}/bench.db"
    config = {
        "listen": {listener: f"127.0.0.1:{port}" for listener, port in ports.items()},
        "issuer": f"http://127.0.0.1:{ports['core']}",
        "store": store_url,
        "upstream": {"url": upstream},
        "proxy": {"tokenCacheSize": TOKEN_CACHE_SIZE},
        "routes": [
            {"name": "public", "path": "/public", "public": True},
            {"name": "items", "path": "/api/items", "methods": ["GET"], "scopes": {"anyOf": ["items:read"]}},
        ],
        "authorizationServers": [{
            "id": AS_ID, "name": "Bench", "audiences": ["https://bench.example.com/api"],
            "scopes": [{"name": "items:read"}],
            "policies": [{"name": "All", "priority": 1, "conditions": {"clients": {"include": ["ALL_CLIENTS"]}},
                          "rules": [{"name": "All", "priority": 1,
                                     "conditions": {"grantTypes": {"include": ["client_credentials"]},
                                                    "scopes": {"include": ["*"]}},
                                     "actions": {"token": {"accessTokenLifetimeMinutes": 120}}}]}],
        }],
        "apps": [{"clientId": "bench", "clientSecret": SECRET, "name": "Bench"}],
    }
    path = d / "scopegate.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    command = [*scopegate_command(), "run", "--config", str(path)]
    if workers is not None:
        command += ["--workers", str(workers)]
    # The decision log (one JSON line per request) goes to a file, as a deployment ships it.
    with (d / "scopegate.log").open("wb") as log:
        proc = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    urls = {listener: f"http://127.0.0.1:{port}" for listener, port in ports.items()}
    try:
        wait_http(f"{urls['ops']}/readyz", proc)
        response = httpx.post(f"{urls['core']}/oauth2/{AS_ID}/v1/token", auth=("bench", SECRET),
                              data={"grant_type": "client_credentials", "scope": "items:read"})
        response.raise_for_status()
        yield Gate(urls["proxy"], urls["core"], urls["ops"], proc.pid, response.json()["access_token"], store_url)
    finally:
        stop(proc)


# ---------------------------------------------------------------------------------------------- tokens


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign_batch(pem: bytes, header: str, claims: dict[str, Any], prefix: str, count: int) -> list[str]:
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    key = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    out = []
    for _ in range(count):
        body = _b64(json.dumps({**claims, "jti": f"{prefix}.{secrets.token_urlsafe(16)}"},
                               separators=(",", ":")).encode())
        signing_input = f"{header}.{body}"
        out.append(f"{signing_input}.{_b64(key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256()))}")
    return out


def mint_like(gate: Gate, count: int) -> list[str]:
    """``count`` distinct access tokens that the gate accepts: the claims of a token its core minted, each with
    its own ``jti``, signed with the same key (read from the gate's store). Minting them through the token
    endpoint would take minutes; the gate verifies these exactly as it verifies the core's own."""
    from authz.store.base import open_store

    header, payload, _ = gate.token.split(".")
    kid = json.loads(_unb64(header))["kid"]
    claims = json.loads(_unb64(payload))
    prefix = claims["jti"].rpartition(".")[0]  # AT.<seq>: the same place in the issued order as the template
    store = open_store(gate.store_url)
    try:
        pem = next(k.private_pem for k in store.list_signing_keys(AS_ID) if k.kid == kid)
    finally:
        store.close()
    jobs = max(1, min(len(os.sched_getaffinity(0)), count // 2000))
    sizes = [count // jobs + (1 if i < count % jobs else 0) for i in range(jobs)]
    if jobs == 1:
        return _sign_batch(pem, header, claims, prefix, count)
    with ProcessPoolExecutor(jobs) as pool:
        batches = pool.map(_sign_batch, [pem] * jobs, [header] * jobs, [claims] * jobs, [prefix] * jobs, sizes)
        return [token for batch in batches for token in batch]


async def _send_each(url: str, tokens: Sequence[str], concurrency: int) -> dict[int, int]:
    import aiohttp

    statuses: dict[int, int] = {}
    queue = iter(tokens)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:

        async def client() -> None:
            for token in queue:
                async with session.get(url, headers={"Authorization": f"Bearer {token}"}) as response:
                    await response.read()
                    statuses[response.status] = statuses.get(response.status, 0) + 1

        await asyncio.gather(*(client() for _ in range(concurrency)))
    return statuses


def send_each(url: str, tokens: Sequence[str], concurrency: int = 32) -> dict[int, int]:
    """One request per token (the RSS phase fills the verified-token cache with them)."""
    return asyncio.run(_send_each(url, tokens, concurrency))


# ---------------------------------------------------------------------------------------------- measuring


@dataclass
class Run:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int
    cpu_us: float | None = None
    """CPU µs per request of the server's process tree (user + system)."""


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not match:
        raise ValueError(f"unparsed wrk latency {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def wrk(url: str, *, duration: int, connections: int, threads: int, headers: dict[str, str] | None = None,
        script: Path | None = None, script_args: Sequence[str] = (), pid: int | None = None) -> Run:
    command = ["wrk", f"-t{min(threads, connections)}", f"-c{connections}", f"-d{duration}s", "--latency",
               "--timeout", "10s"]
    for name, value in (headers or {}).items():
        command += ["-H", f"{name}: {value}"]
    if script is not None:
        command += ["-s", str(script)]
    command.append(url)
    if script_args:
        command += ["--", *script_args]
    cpu_before = tree_cpu_seconds(pid) if pid else 0.0
    done = subprocess.run(command, capture_output=True, text=True, timeout=duration + 60, cwd=ROOT)
    cpu = tree_cpu_seconds(pid) - cpu_before if pid else None
    out = done.stdout
    if done.returncode != 0 or "Requests/sec" not in out:
        raise RuntimeError(f"wrk failed ({done.returncode}): {' '.join(command)}\n{out}\n{done.stderr}")

    def grab(pattern: str) -> str:
        match = re.search(pattern, out, re.M)
        if not match:
            raise RuntimeError(f"unparsed wrk output for {pattern!r}:\n{out}")
        return match.group(1)

    # Anchored at the start of a "Latency Distribution" line: a "+/- Stdev" column ending in "50%" (72.50%) is
    # not the percentile.
    total = int(grab(r"(\d+) requests in"))
    errors = 0
    if match := re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out):
        errors += int(match.group(1))
    if match := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out):
        errors += sum(int(g) for g in match.groups())
    return Run(float(grab(r"Requests/sec:\s+([\d.]+)")), _ms(grab(r"^\s*50%\s+(\S+)")), _ms(grab(r"^\s*99%\s+(\S+)")),
               total, errors, round(cpu / total * 1e6, 1) if cpu is not None and total else None)


def rs256_sign_loop(seconds: float) -> Run:
    """The raw cost of one RS256 signature here: RSA-2048 PKCS#1 v1.5 over SHA-256 of a token-sized signing
    input, ``cryptography`` (OpenSSL), one thread; the figure the token endpoint's CPU per token is held to."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    data = b"e" * 620  # a scopegate access token's header.payload is ~600-650 characters
    samples = []
    started, cpu0 = time.perf_counter(), time.process_time()
    count = 0
    while time.perf_counter() - started < seconds:
        t = time.perf_counter()
        key.sign(data, padding.PKCS1v15(), hashes.SHA256())
        samples.append(time.perf_counter() - t)
        count += 1
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu0
    samples.sort()
    return Run(count / wall, samples[len(samples) // 2] * 1000, samples[int(len(samples) * 0.99)] * 1000, count, 0,
               round(cpu / count * 1e6, 1))


# ---------------------------------------------------------------------------------------------- scenarios


@dataclass
class Scenario:
    key: str
    title: str
    measure: Callable[[], Run] | None
    unavailable: str | None = None
    runs: list[Run] = field(default_factory=list)


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def spread(values: Sequence[float], fmt: str) -> str:
    if not values:
        return "—"
    text = format(median(values), fmt)
    if len(values) > 1:
        text += f" ({format(min(values), fmt)}–{format(max(values), fmt)})"
    return text


# ---------------------------------------------------------------------------------------------- targets


@dataclass
class Target:
    name: str
    limit: str
    value: float | None
    shown: str
    met: bool | None
    by: str
    cpu: str = ""
    """The same ratio from the CPU µs per request of the server trees (steadier than req/s on a shared machine)."""


def at_least(name: str, value: float | None, limit: float, shown: str = "") -> Target:
    if value is None:
        return Target(name, f"≥ {limit:g}", None, "not measured", None, "")
    shown = shown or f"{value:.3f}"
    met = value >= limit
    return Target(name, f"≥ {limit:g}", value, shown, met, "" if met else f"{(limit - value) / limit:.0%} short")


def at_most(name: str, value: float | None, limit: float, shown: str = "", unit: str = "") -> Target:
    if value is None:
        return Target(name, f"≤ {limit:g}{unit}", None, "not measured", None, "")
    shown = shown or f"{value:.3f}"
    met = value <= limit
    return Target(name, f"≤ {limit:g}{unit}", value, shown, met, "" if met else f"{value / limit:.2f}x the limit")


def per_round(a: Scenario, b: Scenario, metric: Callable[[Run], float]) -> list[float]:
    return [metric(x) / metric(y) for x, y in zip(a.runs, b.runs, strict=False) if metric(y)]


def ratio_text(values: Sequence[float]) -> str:
    return spread(values, ".3f") if values else "not measured"


# ---------------------------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--smoke", action="store_true", help="1 round of 1 s per scenario, small RSS phase: checks "
                      "that every scenario produces figures (CI), measures nothing worth quoting")
    mode.add_argument("--quick", action="store_true", help="3 rounds of 5 s, RSS after 200,000 requests")
    parser.add_argument("--rounds", type=int, help="rounds, each running every scenario in a new random order "
                        "(default 5)")
    parser.add_argument("--duration", type=int, help="measured seconds per scenario and round (default 10)")
    parser.add_argument("--warmup", type=int, help="unmeasured seconds of load before each run (default 2)")
    parser.add_argument("--latency-duration", type=int, help="seconds per 1-connection run (default 5)")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    parser.add_argument("--token-clients", type=int, default=8, help="concurrent token endpoint clients (default 8)")
    parser.add_argument("--rotate-tokens", type=int, help="distinct tokens in scenario 6 (default 10,000)")
    parser.add_argument("--soak-requests", type=int, help="requests the scopegate process serves in all before "
                        "its RSS is read again (default 1,000,000)")
    parser.add_argument("--cached-tokens", type=int, help="tokens added to the cache for the last RSS figure "
                        "(default 100,000)")
    parser.add_argument("--seed", type=int, help="seed of the scenario order (default: random, printed)")
    parser.add_argument("--output", help="Markdown report path (default bench/results/<date>.md; smoke: none)")
    parser.add_argument("--json", help="also write every figure as JSON to this path")
    args = parser.parse_args(argv)
    defaults = {"rounds": 5, "duration": 10, "warmup": 2, "latency_duration": 5, "rotate_tokens": 10_000,
                "soak_requests": 1_000_000, "cached_tokens": 100_000}
    if args.quick:
        defaults.update(rounds=3, duration=5, warmup=1, latency_duration=3, soak_requests=200_000,
                        cached_tokens=20_000)
    if args.smoke:
        defaults.update(rounds=1, duration=1, warmup=0, latency_duration=1, rotate_tokens=200, soak_requests=1,
                        cached_tokens=500)
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1_000_000)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    for tool in ("wrk", "nginx"):
        if shutil.which(tool) is None:
            print(f"{tool} is required: apt-get install -y wrk nginx-light", file=sys.stderr)
            return 2
    started = time.time()
    load_before = os.getloadavg()
    loads: list[float] = [load_before[0]]
    info = machine()
    has_workers = workers_supported()
    rng = random.Random(args.seed)
    wrk_opts: dict[str, Any] = {"duration": args.duration, "connections": args.connections, "threads": args.threads}
    lat_opts: dict[str, Any] = {"duration": args.latency_duration, "connections": 1, "threads": 1}
    rss: dict[str, Any] = {}

    with tempfile.TemporaryDirectory(prefix="scopegate-bench-") as tmp, ExitStack() as stack:
        workdir = Path(tmp)
        upstream, upstream_pid = stack.enter_context(nginx(workdir, "upstream", "return"))
        proxied, proxied_pid = stack.enter_context(
            nginx(workdir, "proxy", "proxy_pass " + upstream.removeprefix("http://")))
        floor_url, floor_pid = stack.enter_context(floor(upstream))
        gate = stack.enter_context(scopegate(upstream, workdir, "scopegate"))
        rss["idle"] = tree_rss_bytes(gate.pid)
        gate2 = stack.enter_context(scopegate(upstream, workdir, "scopegate-2w", workers=2)) if has_workers else None
        tokens_file = workdir / "tokens.txt"
        tokens_file.write_text("\n".join(mint_like(gate, args.rotate_tokens)) + "\n")
        auth = {"Authorization": f"Bearer {gate.token}"}
        basic = "Basic " + base64.b64encode(f"bench:{SECRET}".encode()).decode()
        token_url = f"{gate.core}/oauth2/{AS_ID}/v1/token"

        # Every target answers 200 before anything is measured (a 401 is fast, and would look like a win).
        checks = [(f"{upstream}/public/x", {}), (f"{proxied}/public/x", {}), (f"{floor_url}/public/x", {}),
                  (f"{gate.proxy}/public/x", {}), (f"{gate.proxy}/api/items", auth),
                  (f"{gate.proxy}/api/items", {"Authorization": "Bearer " + tokens_file.read_text().split()[-1]})]
        if gate2 is not None:
            checks.append((f"{gate2.proxy}/api/items", {"Authorization": f"Bearer {gate2.token}"}))
        for url, headers in checks:
            status = httpx.get(url, headers=headers).status_code
            if status != 200:
                print(f"{url} answered {status} before the run", file=sys.stderr)
                return 1
        # Scenario 6 measures the cache holding N tokens, not its first fill: every token is verified once first.
        primed = send_each(f"{gate.proxy}/api/items", tokens_file.read_text().split())
        gate.served += sum(primed.values())
        if set(primed) != {200}:
            print(f"priming the rotated tokens: answers {primed}", file=sys.stderr)
            return 1

        def on(target: Gate | None, url: str, opts: dict[str, Any], pid: int | None, **kw: Any) -> Callable[[], Run]:
            def measure() -> Run:
                if args.warmup:
                    warm = wrk(url, **{**opts, "duration": min(args.warmup, opts["duration"])}, **kw)
                    if target is not None:
                        target.served += warm.requests
                run = wrk(url, **opts, pid=pid, **kw)
                if target is not None:
                    target.served += run.requests
                return run
            return measure

        rotate: dict[str, Any] = {"script": BENCH / "lua" / "rotate_tokens.lua", "script_args": [str(tokens_file)]}
        sign_seconds = max(0.2, min(2.0, args.duration / 5))
        scenarios = [
            Scenario("1", "nginx directly", on(None, f"{upstream}/public/x", wrk_opts, upstream_pid)),
            Scenario("2", "nginx proxy_pass, keep-alive pool (ceiling)",
                     on(None, f"{proxied}/public/x", wrk_opts, proxied_pid)),
            Scenario("3", "bare uvicorn + aiohttp forwarder (floor)",
                     on(None, f"{floor_url}/public/x", wrk_opts, floor_pid)),
            Scenario("4", "scopegate, public route", on(gate, f"{gate.proxy}/public/x", wrk_opts, gate.pid)),
            Scenario("5", "scopegate, authenticated, one token",
                     on(gate, f"{gate.proxy}/api/items", wrk_opts, gate.pid, headers=auth)),
            Scenario("6", f"scopegate, authenticated, {args.rotate_tokens:,} tokens rotated",
                     on(gate, f"{gate.proxy}/api/items", wrk_opts, gate.pid, **rotate)),
            Scenario("7", "scopegate --workers 2, authenticated, one token",
                     on(gate2, f"{gate2.proxy}/api/items", wrk_opts, gate2.pid,
                        headers={"Authorization": f"Bearer {gate2.token}"}) if gate2 else None,
                     None if gate2 else "not available: `scopegate run` has no --workers option in this build"),
            Scenario("8", f"token endpoint, client_credentials, {args.token_clients} clients",
                     on(None, token_url, {**wrk_opts, "connections": args.token_clients}, gate.pid,
                        headers={"Authorization": basic}, script=BENCH / "lua" / "token_post.lua")),
            Scenario("8b", "raw RS256 sign loop (RSA-2048, 1 core)", lambda: rs256_sign_loop(sign_seconds)),
            Scenario("L1", "1 connection: nginx directly", on(None, f"{upstream}/public/x", lat_opts, upstream_pid)),
            Scenario("L2", "1 connection: nginx proxy_pass", on(None, f"{proxied}/public/x", lat_opts, proxied_pid)),
            Scenario("L3", "1 connection: floor", on(None, f"{floor_url}/public/x", lat_opts, floor_pid)),
            Scenario("L4", "1 connection: scopegate, authenticated",
                     on(gate, f"{gate.proxy}/api/items", lat_opts, gate.pid, headers=auth)),
        ]
        by_key = {s.key: s for s in scenarios}
        order_log: list[list[str]] = []
        for number in range(args.rounds):
            order = [s for s in scenarios if s.measure is not None]
            rng.shuffle(order)
            order_log.append([s.key for s in order])
            for scenario in order:
                assert scenario.measure is not None
                scenario.runs.append(scenario.measure())
                loads.append(os.getloadavg()[0])
                print(f"  round {number + 1}/{args.rounds} {scenario.key:>3} {scenario.runs[-1].rps:>10.0f} req/s",
                      file=sys.stderr, flush=True)
            rss.setdefault("rounds", []).append((tree_rss_bytes(gate.pid), gate.served))
            if number == 0:
                rss["after_round_1"] = rss["rounds"][0]

        # RSS: top the main process up to --soak-requests with rotating tokens, reading RSS as it goes.
        soak: list[tuple[int, int]] = list(rss["rounds"])
        while gate.served < args.soak_requests:
            rate = median([r.rps for r in by_key["6"].runs]) or 1000.0
            seconds = int(max(1, min(30, (args.soak_requests - gate.served) / rate + 1)))
            run = wrk(f"{gate.proxy}/api/items", **{**wrk_opts, "duration": seconds}, **rotate)
            if run.errors:
                print(f"soak: {run.errors} errors", file=sys.stderr)
            gate.served += run.requests
            soak.append((tree_rss_bytes(gate.pid), gate.served))
            loads.append(os.getloadavg()[0])
        rss["soak"] = soak
        rss["after_soak"] = (tree_rss_bytes(gate.pid), gate.served)
        cached = mint_like(gate, args.cached_tokens)
        statuses = send_each(f"{gate.proxy}/api/items", cached)
        gate.served += len(cached)
        rss["cached"] = (tree_rss_bytes(gate.pid), args.cached_tokens + args.rotate_tokens + 1, statuses)
        metrics = httpx.get(f"{gate.ops}/metrics").text
        misses = re.search(r'^scopegate_token_cache_total\{result="miss"\} ([\d.e+]+)', metrics, re.M)
        rss["cache_misses_total"] = float(misses.group(1)) if misses else None
    load_after = os.getloadavg()
    loads.append(load_after[0])

    report = render(args, info, scenarios, rss, load_before, load_after, loads, order_log, started,
                    has_workers, argv)
    print(report)
    output = args.output or (None if args.smoke else str(BENCH / "results" / f"{time.strftime('%Y-%m-%d', time.gmtime(started))}.md"))
    if output:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        Path(output).write_text(report)
        print(f"written to {output}", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps({
            "machine": info, "args": vars(args), "load_before": load_before, "load_after": load_after,
            "scenarios": {s.key: {"title": s.title, "unavailable": s.unavailable, "runs": [asdict(r) for r in s.runs]}
                          for s in scenarios},
            "rss": rss, "order": order_log, "targets": [asdict(t) for t in targets(scenarios, rss)],
        }, indent=2, default=str))
    failed = [s.key for s in scenarios if s.unavailable is None and not s.runs]
    errors = [s.key for s in scenarios if any(r.errors for r in s.runs)]
    if errors:
        print(f"scenarios with errors (non-2xx or socket errors): {errors}", file=sys.stderr)
    bad = {k: v for k, v in rss["cached"][2].items() if k != 200}
    if bad:
        print(f"cached-token phase: non-200 answers {bad}", file=sys.stderr)
    return 1 if failed or errors or bad else 0


def targets(scenarios: Sequence[Scenario], rss: dict[str, Any]) -> list[Target]:
    s = {x.key: x for x in scenarios}

    def rps(r: Run) -> float:
        return r.rps

    def med(key: str, metric: Callable[[Run], float | None]) -> float | None:
        values = [v for v in (metric(r) for r in s[key].runs) if v is not None]
        return median(values) if values else None

    out = []
    for name, a, b, limit in (("authenticated ÷ public (5 ÷ 4), req/s", "5", "4", 0.95),
                              ("rotated tokens ÷ one token (6 ÷ 5), req/s", "6", "5", 0.90),
                              ("public ÷ bare floor (4 ÷ 3), req/s", "4", "3", 0.95)):
        values = per_round(s[a], s[b], rps)
        target = at_least(name, median(values) if values else None, limit, ratio_text(values))
        # Throughput is the inverse of CPU per request when the server is the bottleneck: b's CPU ÷ a's.
        cpu = per_round(s[b], s[a], lambda r: r.cpu_us or 0.0)
        target.cpu = ratio_text(cpu) if cpu else ""
        out.append(target)
    tail = [r.p99_ms / r.p50_ms for r in s["5"].runs if r.p50_ms]
    tails = at_most("p99 ÷ p50, authenticated at 64 connections (5)", median(tail) if tail else None, 2.5,
                    ratio_text(tail))
    # What the machine itself does to a tail: the same ratio for nginx and for the floor in the same run.
    references = {key: [r.p99_ms / r.p50_ms for r in s[key].runs if r.p50_ms] for key in ("1", "3")}
    tails.cpu = "; ".join(f"{label} {median(v):.1f}" for label, v in
                          (("same run, nginx directly:", references["1"]), ("floor:", references["3"])) if v)
    out.append(tails)
    scale = per_round(s["7"], s["5"], rps)
    workers = at_least("2 workers ÷ 1 worker (7 ÷ 5), req/s", median(scale) if scale else None, 1.8,
                       ratio_text(scale) if scale else "not available")
    # Not a scaling figure: 1 worker's CPU per request ÷ 2 workers' (1.0: a worker costs what the single one does).
    per_request = per_round(s["5"], s["7"], lambda r: r.cpu_us or 0.0)
    workers.cpu = f"{ratio_text(per_request)} (CPU per request, 5 ÷ 7)" if per_request else ""
    out.append(workers)
    direct, nginx_pass, python_floor, gate = (med(k, lambda r: r.p50_ms) for k in ("L1", "L2", "L3", "L4"))
    if direct is not None and nginx_pass is not None and gate is not None:
        added_gate, added_nginx = (gate - direct) * 1000, (nginx_pass - direct) * 1000
        ratio = added_gate / added_nginx if added_nginx > 0 else float("inf")
        floor_note = f"; the floor adds {(python_floor - direct) * 1000:.0f} µs" if python_floor is not None else ""
        out.append(at_most("added p50 at 1 connection: scopegate ÷ nginx proxy_pass (L4−L1 ÷ L2−L1)", ratio, 2.0,
                           f"{ratio:.1f} ({added_gate:.0f} µs ÷ {added_nginx:.0f} µs{floor_note})"))
    else:
        out.append(at_most("added p50 at 1 connection", None, 2.0))
    mint, sign = med("8", lambda r: r.cpu_us), med("8b", lambda r: r.cpu_us)
    if mint is not None and sign:
        out.append(at_most("token endpoint CPU per token ÷ raw RS256 sign (8 ÷ 8b)", mint / sign, 1.5,
                           f"{mint / sign:.2f} ({mint:.0f} µs ÷ {sign:.0f} µs)"))
    else:
        out.append(at_most("token endpoint CPU per token ÷ raw RS256 sign", None, 1.5))
    warm, end = rss["after_round_1"][0], rss["after_soak"][0]
    growth = (end - warm) / warm if warm else None
    out.append(at_most(f"RSS growth, after round 1 → after {rss['after_soak'][1]:,} requests", growth, 0.05,
                       f"{growth:+.1%} ({warm / 1e6:.1f} → {end / 1e6:.1f} MB)" if growth is not None else "",
                       unit=" (5 %: noise)"))
    cached = rss["cached"][0] / 1e6
    out.append(at_most(f"RSS with {rss['cached'][1]:,} cached tokens, MB", cached, 150.0, f"{cached:.1f} MB"))
    return out


def render(args: argparse.Namespace, info: dict[str, Any], scenarios: Sequence[Scenario], rss: dict[str, Any],
           load_before: tuple[float, float, float], load_after: tuple[float, float, float], loads: Sequence[float],
           order_log: Sequence[Sequence[str]], started: float, has_workers: bool, argv: Sequence[str] | None) -> str:
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started))
    ended = time.strftime("%H:%M UTC", time.gmtime())
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    command = "python3 bench/run.py" + ("".join(f" {a}" for a in argv) if argv is not None else
                                        "".join(f" {a}" for a in sys.argv[1:]))
    lines = [
        f"## scopegate benchmark, {when} ({mode} run)",
        "",
        f"- **Machine**: {info['cpu']}, {info['cores']} cores ({info['usable_cores']} usable), {info['kernel']}; "
        f"load average {' / '.join(f'{x:.2f}' for x in load_before)} before, "
        f"{' / '.join(f'{x:.2f}' for x in load_after)} after (1-minute load during the run "
        f"{min(loads):.1f}–{max(loads):.1f}); finished {ended}.",
        f"- **Software**: scopegate {info['commit']}, Python {info['python']}, nginx {info['nginx']} (1 worker), "
        f"wrk {info['wrk']}.",
        f"- **Command**: `{command}`: {args.rounds} round(s), every scenario once per round in a new random order "
        f"(seed {args.seed}); wrk -t{args.threads} -c{args.connections}, {args.duration} s measured after "
        f"{args.warmup} s of warm-up; 1-connection runs wrk -t1 -c1 {args.latency_duration} s. Figures are the "
        "median of the rounds, (min–max) beside them. CPU µs/req: user + system time of the server's process "
        "tree (/proc, the process and its children) over the measured run ÷ requests.",
        "",
        "| # | scenario | req/s | p50 ms | p99 ms | CPU µs/req |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for s in scenarios:
        if s.unavailable:
            lines.append(f"| {s.key} | {s.title} | {s.unavailable} | | | |")
            continue
        cpu = [r.cpu_us for r in s.runs if r.cpu_us is not None]
        lines.append(f"| {s.key} | {s.title} | {spread([r.rps for r in s.runs], ',.0f')} | "
                     f"{spread([r.p50_ms for r in s.runs], '.2f')} | {spread([r.p99_ms for r in s.runs], '.2f')} | "
                     f"{spread(cpu, '.0f')} |")
    errors = {s.key: sum(r.errors for r in s.runs) for s in scenarios if any(r.errors for r in s.runs)}
    lines += [
        "",
        "Scenario 8's CPU µs/req is the scopegate process's CPU per minted token; 8b's is the CPU per signature of "
        "a bare loop in the bench process (its req/s: signatures per second on one core).",
        f"Errors (non-2xx or socket errors): {errors or 'none'}.",
        "",
        "| RSS of the scopegate process (1 worker) | MB |",
        "|---|---:|",
        f"| idle, after start-up and one token | {rss['idle'] / 1e6:.1f} |",
        f"| after round 1 ({rss['after_round_1'][1]:,} requests) | {rss['after_round_1'][0] / 1e6:.1f} |",
        f"| after {rss['after_soak'][1]:,} requests | {rss['after_soak'][0] / 1e6:.1f} |",
        f"| with {rss['cached'][1]:,} tokens in the verified-token cache | {rss['cached'][0] / 1e6:.1f} |",
        "",
        "RSS after each round, then as the soak went (requests served → MB): "
        + ", ".join(f"{served:,} → {size / 1e6:.1f}" for size, served in rss["soak"]) + ".",
        "",
        "| target (issue 11) | limit | this run: median (min–max of rounds) | | beside it: the ratio by CPU µs/req, or the machine's own |",
        "|---|---|---|---|---|",
    ]
    for t in targets(scenarios, rss):
        verdict = "—" if t.met is None else "met" if t.met else f"**missed**, {t.by}"
        lines.append(f"| {t.name} | {t.limit} | {t.shown} | {verdict} | {t.cpu} |")
    if not has_workers:
        lines.append("\nScenario 7 needs `scopegate run --workers`; this build has none, so it was not run.")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
