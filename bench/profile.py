"""Where a scenario of ``bench/run.py`` spends the scopegate process's CPU: py-spy under wrk load, summarised.

    python3 bench/profile.py auth            # scenario 5: authenticated, one token, wrk -t2 -c64
    python3 bench/profile.py public token    # scenario 4, then 8 (the token endpoint, 8 clients)
    python3 bench/profile.py auth --seconds 20 --native --raw /tmp/auth.txt

Needs py-spy (``pip install py-spy``; found on PATH or next to this Python) besides wrk and nginx. It samples
the real ``scopegate run`` (``py-spy record --format raw``, collapsed stacks, ``--native`` adds C frames), and
prints the share of samples by component (that of the deepest frame that belongs to one) and the top
functions by own time (the leaf frame).
"""

from __future__ import annotations

import argparse
import base64
import collections
import shutil
import subprocess
import sys
import tempfile
import threading
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run as bench  # bench/run.py, this folder

# Components: a sample belongs to the first one matching its deepest frame that matches any ("function (file:line)").
BUCKETS = [
    ("garbage collector", ("gc_collect", "collect_generation", "gc_collect_main")),
    ("RS256 signing (OpenSSL)", ("RSA_sign", "rsa_ossl_private", "BN_mod_exp", "sign (cryptography", "_sign (jwt")),
    ("client secret hashing", ("scrypt", "pbkdf2", "hashlib", "passwords.py")),
    ("store (SQLite)", ("sqlite", "authz/store")),
    ("decision log", ("decisionlog.py",)),
    ("metrics", ("prometheus_client", "proxy/metrics.py")),
    ("upstream hop (proxy/upstream.py, aiohttp)", ("proxy/upstream.py", "aiohttp/", "proxy/forward.py")),
    ("gate (token, revocation, scopes, headers)", ("proxy/validate.py", "proxy/bearer.py", "proxy/cache.py",
                                                    "proxy/revocation.py", "proxy/scopes.py", "proxy/app.py",
                                                    "proxy/guard.py", "proxy/routes.py", "proxy/paths.py")),
    ("core (OAuth endpoints, policy)", ("authz/",)),
    ("uvicorn + httptools (server side)", ("uvicorn/", "httptools", "proxy/protocol.py")),
    ("starlette", ("starlette/",)),
    ("event loop and sockets (uvloop)", ("uvloop", "asyncio/", "epoll", "sock_", "send (", "recv")),
]


def py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(found).exists():
        raise SystemExit("py-spy is required: pip install py-spy")
    return found


IDLE_LEAVES = ("Condition.wait (threading.py", "_worker (concurrent/futures/thread.py", "Event.wait (threading.py",
               "select (selectors.py", "sleep (")
"""Leaf frames of threads that wait (the executor's idle workers, the decision log's writer between batches):
py-spy's non-blocking sampling cannot always tell them from running ones, so they are counted apart."""


def summarise(raw: str, top: int = 15) -> str:
    """Each sample goes to the component of its deepest frame that belongs to one (uvicorn's ``send`` called
    from the forwarder counts as uvicorn, not as the forwarder); waiting threads are set apart."""
    samples: collections.Counter[str] = collections.Counter()
    leaves: collections.Counter[str] = collections.Counter()
    total = idle = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        if frames[-1].startswith(IDLE_LEAVES):
            idle += count
            continue
        total += count
        leaves[frames[-1]] += count
        samples[next((name for frame in reversed(frames) for name, needles in BUCKETS
                      if any(needle in frame for needle in needles)), "other")] += count
    if not total:
        return "no samples"
    lines = [f"{total} busy samples ({idle} more in waiting threads, left out); by the deepest frame's component:"]
    lines += [f"  {share / total:6.1%}  {name}" for name, share in samples.most_common()]
    lines.append("own time (leaf frames):")
    lines += [f"  {count / total:6.1%}  {frame}" for frame, count in leaves.most_common(top)]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenarios", nargs="+", choices=("public", "auth", "rotate", "token"))
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--native", action="store_true", help="sample C frames too (py-spy --native)")
    parser.add_argument("--gil", action="store_true", help="only samples of the thread holding the GIL (py-spy "
                        "--gil): Python's CPU, without threads blocked in C (an fdatasync under a COMMIT)")
    parser.add_argument("--raw", help="keep the collapsed stacks in this file (one per scenario: name.SCENARIO)")
    args = parser.parse_args()
    spy = py_spy()
    with tempfile.TemporaryDirectory(prefix="scopegate-profile-") as tmp, ExitStack() as stack:
        workdir = Path(tmp)
        upstream, _ = stack.enter_context(bench.nginx(workdir, "upstream", "return"))
        gate = stack.enter_context(bench.scopegate(upstream, workdir, "scopegate"))
        tokens = workdir / "tokens.txt"
        tokens.write_text("\n".join(bench.mint_like(gate, 10_000)) + "\n")
        basic = "Basic " + base64.b64encode(f"bench:{bench.SECRET}".encode()).decode()
        loads = {
            "public": (f"{gate.proxy}/public/x", {}, {}),
            "auth": (f"{gate.proxy}/api/items", {"headers": {"Authorization": f"Bearer {gate.token}"}}, {}),
            "rotate": (f"{gate.proxy}/api/items", {"script": bench.BENCH / "lua" / "rotate_tokens.lua",
                                                   "script_args": [str(tokens)]}, {}),
            "token": (f"{gate.core}/oauth2/{bench.AS_ID}/v1/token",
                      {"headers": {"Authorization": basic}, "script": bench.BENCH / "lua" / "token_post.lua"},
                      {"connections": 8}),
        }
        for name in args.scenarios:
            url, kw, opts = loads[name]
            out = workdir / f"{name}.txt"
            result: list[bench.Run] = []
            load = threading.Thread(target=lambda url=url, kw=kw, opts=opts, result=result: result.append(bench.wrk(
                url, duration=args.seconds + 3, connections=opts.get("connections", args.connections), threads=2,
                pid=gate.pid, **kw)))
            load.start()
            command = [spy, "record", "--pid", str(gate.pid), "--duration", str(args.seconds), "--format", "raw",
                       "--output", str(out), "--rate", "250"]
            # --native pauses the process to unwind C frames; without it py-spy reads the stacks without pausing.
            command.append("--native" if args.native else "--nonblocking")
            if args.gil:
                command.append("--gil")
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(f"py-spy failed: {done.stderr.strip()}")
            load.join()
            run = result[0]
            print(f"== {name}: {run.rps:,.0f} req/s, p50 {run.p50_ms:.2f} ms, p99 {run.p99_ms:.2f} ms, "
                  f"{run.cpu_us:.0f} µs CPU/req (under py-spy), errors {run.errors}")
            print(summarise(out.read_text()))
            if args.raw:
                shutil.copy(out, f"{args.raw}.{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
