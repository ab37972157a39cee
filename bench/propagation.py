"""Revocation propagation between replicas (issue 12, "Load and soak"; not part of the test suite, a smoke of it is:
``tests/bench/test_propagation_smoke.py``).

On PostgreSQL, three real ``scopegate run`` processes share one database (a fresh schema); on SQLite, two share
one file. For each revocation: mint a token through one replica (the revokers take turns), check that every
other replica's proxy lets it through (200), revoke it through the first replica's core (RFC 7009 ``/revoke``),
and from the moment that call is answered poll every other replica's proxy with the token until it refuses it
(401). The time from the answer to the first 401 is one sample (a poll is one request: its own round trip is
the resolution, and is in the figure). Two phases per backend: at rest, and while a load generator (a process of
its own: closed-loop GETs with a valid token over every replica's proxy, ``--load-concurrency`` at once) keeps
the proxies busy. The replicas run with the default feed settings (``revocation.pollInterval`` 200 ms; on
PostgreSQL LISTEN/NOTIFY wakes the feed and polling is the fallback).

    python3 bench/propagation.py                         # 200 revocations per phase, both backends
    python3 bench/propagation.py --backend postgresql --revocations 50
    python3 bench/propagation.py --revocations 5 --json out.json        # the CI smoke

Prints a Markdown table (p50/p99/max per backend and phase) and writes it to
``bench/results/propagation-<UTC time>.md`` (``--results DIR``).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _soakkit as kit

RESOURCE = "https://api.example.com/api"
SECRET = "svc-secret-0123456789abcdef"
GIVE_UP = 10.0
"""Seconds after the revocation's answer after which a replica that still lets the token through is a failure."""


def config(store: str, issuer: str, upstream: str) -> dict[str, Any]:
    return {
        "store": store, "issuer": issuer,
        "upstream": {"url": upstream, "timeout": "10s", "connectTimeout": "2s"},
        "routes": [{"name": "items", "path": "/api/items", "methods": ["GET"], "scopes": {"anyOf": ["items:read"]}}],
        "authorizationServers": [{
            "id": "main", "name": "Main", "audiences": [RESOURCE], "scopes": [{"name": "items:read"}],
            "policies": [{"name": "Everyone", "priority": 1, "conditions": {"clients": {"include": ["ALL_CLIENTS"]}},
                          "rules": [{"name": "All", "priority": 1,
                                     "conditions": {"grantTypes": {"include": ["client_credentials"]},
                                                    "scopes": {"include": ["*"]}},
                                     "actions": {"token": {"accessTokenLifetimeMinutes": 60}}}]}],
        }],
        "apps": [{"clientId": "svc", "clientSecret": SECRET, "name": "Service"}],
    }


class Measure:
    def __init__(self, gates: list[kit.Gate]) -> None:
        self.gates = gates
        self.session: aiohttp.ClientSession | None = None
        self.auth = "Basic " + base64.b64encode(f"svc:{SECRET}".encode()).decode()

    @property
    def http(self) -> aiohttp.ClientSession:
        assert self.session is not None
        return self.session

    async def mint(self, gate: kit.Gate) -> str:
        async with self.http.post(f"{gate.core}/oauth2/main/v1/token", headers={"Authorization": self.auth},
                                  data={"grant_type": "client_credentials", "scope": "items:read"}) as r:
            body = await r.json(content_type=None)
            if r.status != 200:
                raise RuntimeError(f"mint through {gate.name}: {r.status} {body}")
            return str(body["access_token"])

    async def status(self, gate: kit.Gate, token: str) -> int:
        async with self.http.get(f"{gate.proxy}/api/items", headers={"Authorization": f"Bearer {token}"}) as r:
            await r.read()
            return r.status

    async def until_refused(self, gate: kit.Gate, token: str, acked: float) -> float | None:
        while True:
            status = await self.status(gate, token)
            now = time.perf_counter()
            if status == 401:
                return now - acked
            if status != 200 or now - acked > GIVE_UP:
                return None
            await asyncio.sleep(0.001)

    async def one(self, i: int) -> dict[str, Any]:
        revoker = self.gates[i % len(self.gates)]
        others = [g for g in self.gates if g is not revoker]
        token = await self.mint(revoker)
        before = [await self.status(g, token) for g in self.gates]
        sent = time.perf_counter()
        async with self.http.post(f"{revoker.core}/oauth2/main/v1/revoke", headers={"Authorization": self.auth},
                                  data={"token": token, "token_type_hint": "access_token"}) as r:
            await r.read()
            revoke_status = r.status
        acked = time.perf_counter()
        own = await self.status(revoker, token)
        latencies = await asyncio.gather(*(self.until_refused(g, token, acked) for g in others))
        return {"revoker": revoker.name, "before": before, "revoke_status": revoke_status, "own_after": own,
                "revoke_seconds": acked - sent, "latencies": latencies}

    async def run(self, revocations: int) -> list[dict[str, Any]]:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=GIVE_UP + 5)) as self.session:
            return [await self.one(i) for i in range(revocations)]


def ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def summarize(samples: list[dict[str, Any]]) -> dict[str, Any]:
    latencies = [x for s in samples for x in s["latencies"] if x is not None]
    failures = [s for s in samples if None in s["latencies"] or s["revoke_status"] != 200 or s["own_after"] != 401
                or any(b != 200 for b in s["before"])]
    return {"revocations": len(samples), "samples": len(latencies), "failures": len(failures),
            "failure_examples": failures[:3],
            "p50_ms": ms(kit.percentile(latencies, 50)), "p99_ms": ms(kit.percentile(latencies, 99)),
            "max_ms": ms(max(latencies, default=float("nan"))),
            "revoke_p50_ms": ms(kit.percentile([s["revoke_seconds"] for s in samples], 50))}


def run_backend(backend: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="scopegate-propagation-") as tmp, contextlib.ExitStack() as stack:
        workdir = Path(tmp)
        store = (stack.enter_context(kit.postgres_store("propagation")) if backend == "postgresql"
                 else f"sqlite:///{workdir / 'shared.db'}")
        upstream = kit.Upstream.start()
        stack.callback(upstream.stop)
        doc = config(store, f"http://127.0.0.1:{kit.free_port()}", upstream.url)
        names = ["a", "b", "c"] if backend == "postgresql" else ["a", "b"]
        # The first replica creates the schema and keys; the others then start together.
        gates = [kit.launch(workdir, doc, names[0])]
        stack.callback(gates[0].stop)
        for name in names[1:]:
            gate = kit.launch(workdir, doc, name, wait=None)
            stack.callback(gate.stop)
            gates.append(gate)
        for gate in gates[1:]:
            kit.wait_ready(gate)
        measure = Measure(gates)
        for phase in ("rest", "load"):
            load = None
            if phase == "load":
                token = asyncio.run(_mint_once(measure, gates[0]))
                load = kit.LoadProcess.start([f"{g.proxy}/api/items" for g in gates], token, args.load_concurrency)
                time.sleep(1.0)
            loadavg = round(os.getloadavg()[0], 1)
            started = time.monotonic()
            try:
                samples = asyncio.run(measure.run(args.revocations))
            finally:
                counts = load.stop() if load is not None else None
            row = {"backend": backend, "replicas": len(gates), "phase": phase, **summarize(samples),
                   "seconds": round(time.monotonic() - started, 1), "loadavg": loadavg,
                   "load_rps": counts["rps"] if counts else None,
                   "load_statuses": counts["statuses"] if counts else None}
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "failure_examples"}), flush=True)
    return rows


async def _mint_once(measure: Measure, gate: kit.Gate) -> str:
    async with aiohttp.ClientSession() as measure.session:
        return await measure.mint(gate)


def markdown(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    m = kit.machine()
    lines = [f"# Revocation propagation ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}; load average at the end {m['loadavg']}. "
             f"{args.revocations} revocations per phase; the time from the /revoke answer to the first 401 at each "
             f"other replica's proxy (one sample per other replica and revocation). Load: a closed-loop generator, "
             f"{args.load_concurrency} GETs in flight over every replica's proxy.", "",
             "| backend | replicas | phase | revocations | samples | p50 ms | p99 ms | max ms | failures | "
             "/revoke p50 ms | load req/s | load avg |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['backend']} | {r['replicas']} | {r['phase']} | {r['revocations']} | {r['samples']} | "
                     f"{r['p50_ms']} | {r['p99_ms']} | {r['max_ms']} | {r['failures']} | {r['revoke_p50_ms']} | "
                     f"{r['load_rps'] if r['load_rps'] is not None else '–'} | {r['loadavg']} |")
    for r in rows:
        for f in r["failure_examples"]:
            lines.append(f"\nFailure ({r['backend']}, {r['phase']}): `{json.dumps(f)}`")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("--revocations", type=int, default=200, help="per backend and phase (default 200)")
    parser.add_argument("--load-concurrency", type=int, default=16)
    parser.add_argument("--results", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    backends = ["postgresql", "sqlite"] if args.backend == "both" else [args.backend]
    rows = [row for backend in backends for row in run_backend(backend, args)]
    report = markdown(rows, args)
    print(report, flush=True)
    args.results.mkdir(parents=True, exist_ok=True)
    path = args.results / f"propagation-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.md"
    path.write_text(report)
    print(f"report: {path}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1, default=str))
    return 0 if all(r["failures"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
