"""Soak: mixed traffic against one real ``scopegate run`` for a fixed time (issue 12, "Load and soak"; not part of
the test suite, a 20-second smoke of it is: ``tests/bench/test_soak_smoke.py``).

Traffic, paced at ``--rate`` requests per second (at most ``--concurrency`` in flight), each with the answer its
class must get (anything else is an *unexpected error*):

  allowed     GET  proxy /api/items, one of ``--tokens`` (10,000) distinct valid tokens           → 200
  scope       POST proxy /api/items with a read-only token (insufficient_scope)                   → 403
  no_token    GET  proxy /api/items without a token                                               → 401
  no_resource GET  proxy /elsewhere                                                               → 403
  expired     GET  proxy /legacy/x, a remote issuer's token past exp (+ leeway)                    → 401
  revoked     GET  proxy /api/items with a token revoked earlier (before the run or during it)    → 401
  mint        POST core  /oauth2/main/v1/token, client_credentials                                → 200
  revoke      POST core  /oauth2/main/v1/revoke of a token minted during the run                  → 200
  introspect  POST core  /oauth2/main/v1/introspect of a valid token                              → 200, active

Beside it: a management change every ``--mgmt-interval`` seconds through ``/api/v1`` (a user deactivated, with
its token checked refused at the proxy, and reactivated; a rule replaced on another authorization server; an
app deactivated and activated; a group created), two WebSocket sessions through the proxy sending a message every
second (each reply checked), and a probe of the ops listener's ``/healthz`` every 100 ms: the listeners share one
event loop, so its latency is the event-loop lag seen from outside. Every second the bench samples the scopegate
process tree's RSS and open file descriptors.

Reported per time bucket (a minute; 5 s in runs under 3 minutes): requests, p50/p99 of the proxy and of the
core, the probe's p50/p99/max, RSS, fds, errors. Targets, evaluated and printed: RSS and fds flat after warm-up
(the first bucket) within noise, zero unexpected errors, proxy p99 of the last bucket within 20% of the first.

    python3 bench/soak.py                                  # 10 minutes on SQLite, then 10 on PostgreSQL
    python3 bench/soak.py --backend sqlite --duration 120  # 2 minutes, SQLite only
    python3 bench/soak.py --duration 20 --tokens 500 --json out.json   # the CI smoke

The Markdown report goes to ``bench/results/soak-<backend>-<UTC time>.md`` (``--results DIR``).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import math
import os
import random
import statistics
import sys
import tempfile
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _soakkit as kit

MAIN = "https://api.example.com/api"
SIDE = "https://api.example.com/side"
LEGACY = "https://api.example.com/legacy"
SECRETS = {"svc": "svc-secret-0123456789abcdef", "reader": "reader-secret-0123456789abc",
           "introspector": "introspector-secret-0123456789",
           "side-app": "side-secret-0123456789abcdef", "churn-app": "churn-secret-0123456789abcd"}
CHURN_PASSWORD = "churn-password-correct-horse"
WEIGHTS = {"allowed": 55, "scope": 6, "no_token": 4, "no_resource": 2, "expired": 8, "revoked": 8, "mint": 6,
           "revoke": 4, "introspect": 7}
EXPECTED = {"allowed": 200, "scope": 403, "no_token": 401, "no_resource": 403, "expired": 401, "revoked": 401,
            "mint": 200, "revoke": 200, "introspect": 200, "mgmt": 200, "probe": 200, "ws": 0}
CORE_KINDS = {"mint", "revoke", "introspect"}
CLIENT_IN_FLIGHT = 8
"""Client authentications of one client in flight at most. The core's back-off counts attempts in flight against
``core.clientAuthFailureLimit`` (10 per client and address, issue 8 item 10): beyond it a client with the right
secret gets 429 (Retry-After: 1), by design. The bench stays under it, as a well-behaved client would
(``--client-in-flight`` changes it, e.g. to show those 429s)."""


def basic(client: str) -> dict[str, str]:
    """client_secret_basic (RFC 6749 §2.3.1; the ids and secrets here need no form-encoding)."""
    return {"Authorization": "Basic " + base64.b64encode(f"{client}:{SECRETS[client]}".encode()).decode()}


def rule(name: str, lifetime: int, grants: list[str]) -> dict[str, Any]:
    return {"name": name, "priority": 1, "conditions": {"grantTypes": {"include": grants}, "scopes": {"include": ["*"]}},
            "actions": {"token": {"accessTokenLifetimeMinutes": lifetime}}}


def config(store: str, upstream: str, legacy_issuer: str) -> dict[str, Any]:
    everyone = {"clients": {"include": ["ALL_CLIENTS"]}}
    return {
        "store": store,
        "upstream": {"url": upstream, "timeout": "10s", "connectTimeout": "2s"},
        "revocation": {"maxStaleness": "5s", "pollInterval": "200ms"},
        "routes": [
            {"name": "items-read", "path": "/api/items", "methods": ["GET", "HEAD"], "scopes": {"anyOf": ["items:read"]}},
            {"name": "items-write", "path": "/api/items", "methods": ["POST"], "scopes": {"allOf": ["items:write"]}},
            {"name": "feed", "path": "/api/feed", "methods": ["GET"], "scopes": {"anyOf": ["items:read"]}},
            {"name": "side", "path": "/side", "scopes": {"anyOf": ["side:read"]}},
            {"name": "legacy", "path": "/legacy", "scopes": {"anyOf": ["legacy:read"]}},
        ],
        "authorizationServers": [
            {"id": "main", "name": "Main", "audiences": [MAIN],
             "scopes": [{"name": "items:read"}, {"name": "items:write"}],
             "policies": [{"name": "Everyone", "priority": 1, "conditions": everyone,
                           "rules": [rule("All", 120, ["client_credentials", "password"])]}]},
            {"id": "side", "name": "Side", "audiences": [SIDE], "scopes": [{"name": "side:read"}],
             "policies": [{"name": "Everyone", "priority": 1, "conditions": everyone,
                           "rules": [rule("Churned", 60, ["client_credentials"])]}]},
            {"id": "legacy", "name": "Legacy (remote)", "remote": {"issuer": legacy_issuer, "audience": LEGACY}},
        ],
        "apps": [
            {"clientId": "svc", "clientSecret": SECRETS["svc"], "name": "Service"},
            {"clientId": "reader", "clientSecret": SECRETS["reader"], "name": "Reader"},
            {"clientId": "introspector", "clientSecret": SECRETS["introspector"], "name": "Introspector"},
            {"clientId": "side-app", "clientSecret": SECRETS["side-app"], "name": "Side"},
            {"clientId": "churn-app", "clientSecret": SECRETS["churn-app"], "name": "Churn",
             "grantTypes": ["password"], "assignments": {"users": ["churn"]}},
        ],
        "users": [{"id": "churn", "login": "churn@example.com", "password": CHURN_PASSWORD}],
    }


# ---------------------------------------------------------------------------------------------- recording


@dataclass
class Bucket:
    start: float
    proxy: list[float] = field(default_factory=list)
    core: list[float] = field(default_factory=list)
    probe: list[float] = field(default_factory=list)
    mgmt: list[float] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    errors: int = 0
    rss: list[int] = field(default_factory=list)
    fds: list[int] = field(default_factory=list)
    other_fds: list[int] = field(default_factory=list)
    """Descriptors that are not sockets (files, pipes, eventfds): these do not move with the connections."""
    other_sockets: list[int] = field(default_factory=list)
    """Socket descriptors less the open connections into the listeners and to the upstream (listeners, the store's
    connections): flat unless sockets leak."""
    cpu: float = 0.0
    """scopegate CPU seconds (user + system) spent in this bucket."""
    loadavg: float = 0.0
    """The machine's 1-minute load average at the bucket's last sample."""
    behind: int = 0
    """Requests whose slot came while ``--concurrency`` were already in flight (sent late)."""


class Recorder:
    def __init__(self, started: float, bucket_seconds: float, duration: float) -> None:
        self.started = started
        self.bucket_seconds = bucket_seconds
        self.last_index = max(0, math.ceil(duration / bucket_seconds) - 1)
        """Answers that arrive during the wind-down count in the last bucket."""
        self.buckets: list[Bucket] = []
        self.errors: list[str] = []
        self.error_count = 0
        self.error_kinds: dict[str, int] = {}

    def bucket(self) -> Bucket:
        index = min(int((time.monotonic() - self.started) // self.bucket_seconds), self.last_index)
        while len(self.buckets) <= index:
            self.buckets.append(Bucket(self.started + len(self.buckets) * self.bucket_seconds))
        return self.buckets[index]

    def record(self, kind: str, seconds: float, ok: bool, detail: str = "") -> None:
        b = self.bucket()
        b.counts[kind] = b.counts.get(kind, 0) + 1
        target = {"probe": b.probe, "mgmt": b.mgmt}.get(kind, b.core if kind in CORE_KINDS else b.proxy)
        if kind != "ws":
            target.append(seconds)
        if not ok:
            b.errors += 1
            self.error_count += 1
            key = f"{kind} {detail.split(' ', 1)[0][:40]}"
            self.error_kinds[key] = self.error_kinds.get(key, 0) + 1
            if len(self.errors) < 50:
                self.errors.append(f"t+{time.monotonic() - self.started:.1f}s {kind}: {detail}")


# ---------------------------------------------------------------------------------------------- the run


class Soak:
    def __init__(self, gate: kit.Gate, issuer: kit.StaticIssuer, args: argparse.Namespace) -> None:
        self.gate = gate
        self.issuer = issuer
        self.args = args
        self.rng = random.Random(args.seed)
        self.valid: list[str] = []
        self.read_only: list[str] = []
        self.revoked: deque[str] = deque(maxlen=2000)
        self.to_revoke: deque[str] = deque(maxlen=2000)
        self.expired: list[str] = []
        self.session: aiohttp.ClientSession | None = None
        self.rec: Recorder | None = None
        self.stop = asyncio.Event()
        self.clients: dict[str, asyncio.Semaphore] = {}
        self.listen_ports = {int(url.rsplit(":", 1)[1]) for url in (gate.proxy, gate.core, gate.ops)}
        self.upstream_port = 0

    def client_slot(self, client: str) -> asyncio.Semaphore:
        if client not in self.clients:
            self.clients[client] = asyncio.Semaphore(self.args.client_in_flight)
        return self.clients[client]

    # ------------------------------------------------------------------------------------------ helpers

    @property
    def http(self) -> aiohttp.ClientSession:
        assert self.session is not None
        return self.session

    async def mint(self, client: str = "svc", scope: str = "items:read") -> tuple[int, str]:
        async with self.http.post(f"{self.gate.core}/oauth2/main/v1/token", headers=basic(client),
                                  data={"grant_type": "client_credentials", "scope": scope}) as r:
            body = await r.json(content_type=None)
            return r.status, str(body.get("access_token", "")) if r.status == 200 else json.dumps(body)[:200]

    async def revoke(self, token: str) -> int:
        async with self.http.post(f"{self.gate.core}/oauth2/main/v1/revoke", headers=basic("svc"),
                                  data={"token": token, "token_type_hint": "access_token"}) as r:
            await r.read()
            return r.status

    async def setup(self) -> dict[str, float]:
        """Mint the token pools (and pass each valid token through the proxy once: the run starts warm)."""
        started = time.monotonic()
        sem = asyncio.Semaphore(8)

        async def one(pool: list[str], client: str, scope: str) -> None:
            async with sem:
                status, token = await self.mint(client, scope)
                if status != 200:
                    raise RuntimeError(f"setup mint {client}: {status} {token}")
                pool.append(token)

        await asyncio.gather(*(one(self.valid, "svc", "items:read") for _ in range(self.args.tokens)))
        minted = time.monotonic()
        await asyncio.gather(*(one(self.read_only, "reader", "items:read") for _ in range(50)))
        doomed: list[str] = []
        await asyncio.gather(*(one(doomed, "svc", "items:read") for _ in range(200)))
        for token in doomed:
            assert await self.revoke(token) == 200
            self.revoked.append(token)
        now = time.time()
        self.expired = [self.issuer.token(LEGACY, ["legacy:read"], now - 120 - i) for i in range(200)]

        async def warm(token: str) -> None:
            async with sem, self.http.get(f"{self.gate.proxy}/api/items", headers={"Authorization": f"Bearer {token}"}) as r:
                await r.read()
                if r.status != 200:
                    raise RuntimeError(f"setup: a fresh token got {r.status} at the proxy")

        await asyncio.gather(*(warm(t) for t in self.valid))
        return {"mint_seconds": round(minted - started, 1), "setup_seconds": round(time.monotonic() - started, 1),
                "mint_per_second": round(self.args.tokens / max(minted - started, 1e-9), 1)}

    # ------------------------------------------------------------------------------------------ traffic

    async def request(self, kind: str) -> None:
        if kind in CORE_KINDS:
            # Waiting for the client's slot is the bench's own queue, not the core's latency.
            async with self.client_slot("introspector" if kind == "introspect" else "svc"):
                await self.timed(kind)
        else:
            await self.timed(kind)

    async def timed(self, kind: str) -> None:
        assert self.rec is not None
        p, c = self.gate.proxy, self.gate.core
        detail = ""
        token: str | None = None
        started = time.perf_counter()
        try:
            if kind in ("allowed", "scope", "no_token", "no_resource", "expired", "revoked"):
                method, url = {"scope": ("POST", f"{p}/api/items"), "no_resource": ("GET", f"{p}/elsewhere"),
                               "expired": ("GET", f"{p}/legacy/x")}.get(kind, ("GET", f"{p}/api/items"))
                token = {"allowed": lambda: self.rng.choice(self.valid),
                         "scope": lambda: self.rng.choice(self.read_only),
                         "expired": lambda: self.rng.choice(self.expired),
                         "revoked": lambda: self.rng.choice(self.revoked)}.get(kind, lambda: None)()
                headers = {"Authorization": f"Bearer {token}"} if token else {}
                async with self.http.request(method, url, headers=headers) as r:
                    body = await r.read()
                    status = r.status
            elif kind == "mint":
                status, minted = await self.mint()
                if status == 200:
                    self.to_revoke.append(minted)
                body = b"" if status == 200 else minted.encode()
            elif kind == "revoke":
                if not self.to_revoke:
                    return
                token = self.to_revoke.popleft()
                status = await self.revoke(token)
                body = b""
                if status == 200:
                    self.revoked.append(token)
            else:  # introspect
                async with self.http.post(f"{c}/oauth2/main/v1/introspect", headers=basic("introspector"),
                                          data={"token": self.rng.choice(self.valid)}) as r:
                    body = await r.read()
                    status = r.status
                    if status == 200 and not json.loads(body).get("active"):
                        detail = "introspection says inactive"
            ok = status == EXPECTED[kind] and not detail
            if not ok and not detail:
                detail = f"{status} {body[:200]!r}"
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            ok, detail = False, repr(exc)
        self.rec.record(kind, time.perf_counter() - started, ok, detail)

    async def traffic(self) -> None:
        assert self.rec is not None
        mix = {**WEIGHTS, **self.args.mix}
        kinds, weights = list(mix), list(mix.values())
        in_flight = asyncio.Semaphore(self.args.concurrency)
        interval = 1.0 / self.args.rate
        tasks: set[asyncio.Task[None]] = set()
        next_slot = time.monotonic()

        async def guarded(kind: str) -> None:
            async with in_flight:
                await self.request(kind)

        while not self.stop.is_set():
            now = time.monotonic()
            if now < next_slot:
                await asyncio.sleep(next_slot - now)
                continue
            next_slot += interval
            if in_flight.locked():
                self.rec.bucket().behind += 1
            task = asyncio.create_task(guarded(self.rng.choices(kinds, weights)[0]))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(tasks, timeout=30)

    async def probe(self) -> None:
        """The ops listener's /healthz every 100 ms on a connection of its own: the event loop's lag from outside."""
        assert self.rec is not None
        connector = aiohttp.TCPConnector(limit=1)
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=10)) as session:
            while not self.stop.is_set():
                started = time.perf_counter()
                try:
                    async with session.get(f"{self.gate.ops}/healthz") as r:
                        await r.read()
                        ok, detail = r.status == 200, str(r.status)
                except (aiohttp.ClientError, TimeoutError) as exc:
                    ok, detail = False, repr(exc)
                self.rec.record("probe", time.perf_counter() - started, ok, detail)
                await asyncio.sleep(0.1)

    async def sample(self) -> None:
        assert self.rec is not None
        last_cpu = kit.cpu_seconds(self.gate.pid)
        while not self.stop.is_set():
            rss, fds, sockets = await asyncio.to_thread(kit.tree_usage, self.gate.pid)
            inbound, outbound = await asyncio.to_thread(kit.tcp_connections, self.listen_ports, self.upstream_port)
            cpu = kit.cpu_seconds(self.gate.pid)
            b = self.rec.bucket()
            b.rss.append(rss)
            b.fds.append(fds)
            b.other_fds.append(fds - sockets)
            b.other_sockets.append(sockets - inbound - outbound)
            b.cpu += cpu - last_cpu
            b.loadavg = os.getloadavg()[0]
            last_cpu = cpu
            await asyncio.sleep(1.0)

    async def management(self) -> None:
        """One management change (or check) every ``--mgmt-interval`` seconds, in a fixed cycle."""
        assert self.rec is not None
        admin = {"Authorization": f"SSWS {kit.ADMIN_TOKEN}"}
        core = self.gate.core
        state: dict[str, Any] = {"lifetime": 60, "churn_token": ""}

        async def call(method: str, path: str, body: Any = None) -> tuple[int, Any]:
            async with self.http.request(method, f"{core}{path}", headers=admin, json=body) as r:
                return r.status, await r.json(content_type=None)

        async def churn_token() -> tuple[int, Any]:
            async with self.http.post(f"{core}/oauth2/main/v1/token",
                                      headers=basic("churn-app"),
                                      data={"grant_type": "password", "username": "churn@example.com",
                                            "password": CHURN_PASSWORD, "scope": "items:read"}) as r:
                body = await r.json(content_type=None)
                state["churn_token"] = body.get("access_token", "")
            if r.status != 200:
                return r.status, body
            async with self.http.get(f"{self.gate.proxy}/api/items",
                                     headers={"Authorization": f"Bearer {state['churn_token']}"}) as g:
                await g.read()
                return g.status, {}

        async def deactivate_user() -> tuple[int, Any]:
            status, body = await call("POST", "/api/v1/users/churn/lifecycle/deactivate")
            if status != 200:
                return status, body
            # Implicit revocation (a watermark), applied by this process before the answer: refused at once.
            async with self.http.get(f"{self.gate.proxy}/api/items",
                                     headers={"Authorization": f"Bearer {state['churn_token']}"}) as g:
                await g.read()
                return (200, {}) if g.status == 401 else (g.status, {"churn token after deactivation": g.status})

        async def replace_rule() -> tuple[int, Any]:
            status, policies = await call("GET", "/api/v1/authorizationServers/side/policies")
            if status != 200:
                return status, policies
            policy = policies[0]["id"]
            status, rules = await call("GET", f"/api/v1/authorizationServers/side/policies/{policy}/rules")
            if status != 200:
                return status, rules
            doc = rules[0]
            state["lifetime"] = 90 if state["lifetime"] == 60 else 60
            doc["actions"]["token"]["accessTokenLifetimeMinutes"] = state["lifetime"]
            return await call("PUT", f"/api/v1/authorizationServers/side/policies/{policy}/rules/{doc['id']}", doc)

        steps: list[Callable[[], Awaitable[tuple[int, Any]]]] = [
            churn_token,
            deactivate_user,
            lambda: call("POST", "/api/v1/users/churn/lifecycle/activate"),
            replace_rule,
            lambda: call("POST", "/api/v1/apps/side-app/lifecycle/deactivate"),
            lambda: call("POST", "/api/v1/apps/side-app/lifecycle/activate"),
            lambda: call("POST", "/api/v1/groups", {"profile": {"name": f"soak-{time.time_ns()}"}}),
        ]
        i = 0
        while not self.stop.is_set():
            step = steps[i % len(steps)]
            i += 1
            started = time.perf_counter()
            try:
                status, body = await step()
                ok, detail = status == 200, f"step {i % len(steps)}: {status} {json.dumps(body)[:200]}"
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                ok, detail = False, repr(exc)
            self.rec.record("mgmt", time.perf_counter() - started, ok, detail)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), self.args.mgmt_interval)

    async def websocket(self, index: int) -> None:
        """A session through the proxy for the whole run, a message a second, each echo checked; reopened (and
        counted as an error) if it ends early."""
        assert self.rec is not None
        token = self.valid[index]
        while not self.stop.is_set():
            try:
                async with self.http.ws_connect(f"{self.gate.proxy}/api/feed/ws",
                                                headers={"Authorization": f"Bearer {token}"}) as ws:
                    n = 0
                    while not self.stop.is_set():
                        n += 1
                        started = time.perf_counter()
                        await ws.send_str(f"{index}-{n}")
                        message = await ws.receive(timeout=10)
                        ok = message.type == aiohttp.WSMsgType.TEXT and message.data == f"echo:{index}-{n}"
                        self.rec.record("ws", time.perf_counter() - started, ok, f"{message.type} {message.data!r}")
                        if not ok:
                            break
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(self.stop.wait(), 1.0)
            except (aiohttp.ClientError, TimeoutError) as exc:
                self.rec.record("ws", 0.0, False, repr(exc))
                await asyncio.sleep(1.0)

    async def run(self) -> dict[str, Any]:
        timeout = aiohttp.ClientTimeout(total=10)
        connector = aiohttp.TCPConnector(limit=self.args.concurrency + 8)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as self.session:
            setup = await self.setup()
            started = time.monotonic()
            self.rec = Recorder(started, self.args.bucket, self.args.duration)
            tasks = [asyncio.create_task(coro) for coro in
                     (self.traffic(), self.probe(), self.sample(), self.management(), self.websocket(0),
                      self.websocket(1))]
            try:
                await asyncio.sleep(self.args.duration)
            finally:  # also on Ctrl-C: wind the tasks down, so that the processes are stopped and the schema dropped
                self.stop.set()
                done, pending = await asyncio.wait(tasks, timeout=30)
                for task in pending:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            for task in done:
                task.result()
            return setup


# ---------------------------------------------------------------------------------------------- report


def ms(x: float) -> float:
    return round(x * 1000, 2)


def summarize(rec: Recorder) -> dict[str, Any]:
    rows = []
    for i, b in enumerate(rec.buckets):
        rows.append({
            "t": round(i * rec.bucket_seconds),
            "requests": sum(v for k, v in b.counts.items() if k not in ("probe", "mgmt", "ws")),
            "proxy_p50_ms": ms(kit.percentile(b.proxy, 50)), "proxy_p99_ms": ms(kit.percentile(b.proxy, 99)),
            "core_p50_ms": ms(kit.percentile(b.core, 50)), "core_p99_ms": ms(kit.percentile(b.core, 99)),
            "lag_p50_ms": ms(kit.percentile(b.probe, 50)), "lag_p99_ms": ms(kit.percentile(b.probe, 99)),
            "lag_max_ms": ms(max(b.probe, default=float("nan"))),
            "mgmt_max_ms": ms(max(b.mgmt, default=float("nan"))),
            "rss_mib": round(statistics.median(b.rss) / 2**20, 1) if b.rss else None,
            "fds_min": min(b.fds) if b.fds else None, "fds_max": max(b.fds) if b.fds else None,
            "other_fds": max(b.other_fds) if b.other_fds else None,
            "other_sockets": min(b.other_sockets) if b.other_sockets else None,
            "cpu_pct": round(100 * b.cpu / rec.bucket_seconds), "loadavg": round(b.loadavg, 1),
            "errors": b.errors, "behind": b.behind, "counts": dict(sorted(b.counts.items())),
        })
    return {"buckets": rows}


def targets(rows: list[dict[str, Any]], errors: int) -> dict[str, Any]:
    """The issue's three targets. Warm-up is the first bucket; 'within noise' for RSS is max(8 MiB, 10%) from the
    first bucket after warm-up to the last (and a least-squares slope is printed beside it). Open fds follow the
    connections in flight, which move with the load, so their floor in a bucket (the fewest seen in its 1-s
    samples) is printed. The target is on what does not follow the load: descriptors that are not sockets (files,
    pipes, eventfds), and sockets less the open connections into the listeners and to the upstream (the
    listeners, the store's connections; the floor per bucket, as the two counts are read a moment apart): each
    may move by 2."""
    out: dict[str, Any] = {"unexpected_errors": errors, "errors_ok": errors == 0}
    steady = [r for r in rows[1:] if r["rss_mib"] is not None]
    if len(steady) >= 2:
        first, last = steady[0], steady[-1]
        growth = last["rss_mib"] - first["rss_mib"]
        n = len(steady)
        xs = [r["t"] / 60 for r in steady]
        ys = [r["rss_mib"] for r in steady]
        mx, my = sum(xs) / n, sum(ys) / n
        var = sum((x - mx) ** 2 for x in xs)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var if var else 0.0
        out.update(rss_first_mib=first["rss_mib"], rss_last_mib=last["rss_mib"], rss_growth_mib=round(growth, 1),
                   rss_slope_mib_per_min=round(slope, 2),
                   rss_ok=growth <= max(8.0, 0.10 * first["rss_mib"]),
                   fds_first=first["fds_min"], fds_last=last["fds_min"],
                   other_fds_first=first["other_fds"], other_fds_last=last["other_fds"],
                   other_sockets_first=first["other_sockets"], other_sockets_last=last["other_sockets"],
                   fds_ok=last["other_fds"] <= first["other_fds"] + 2
                   and last["other_sockets"] <= first["other_sockets"] + 2)
    else:
        out.update(rss_ok=None, fds_ok=None, note="too short for a steady state after warm-up")
    if len(rows) >= 2:
        p99_first, p99_last = rows[0]["proxy_p99_ms"], rows[-1]["proxy_p99_ms"]
        drift = (p99_last - p99_first) / p99_first if p99_first else 0.0
        out.update(p99_first_ms=p99_first, p99_last_ms=p99_last, p99_drift=round(drift, 3), p99_ok=drift <= 0.20)
    return out


def markdown(backend: str, args: argparse.Namespace, result: dict[str, Any]) -> str:
    t = result["targets"]
    m = result["machine"]
    yes = {True: "**met**", False: "**NOT met**", None: "n/a"}
    lines = [
        f"# Soak: {backend}, {args.duration:g} s ({result['date']})", "",
        f"Machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, kernel {m['kernel']}; load average "
        f"before {result['loadavg_before']}, after {result['loadavg_after']}.",
        f"Traffic: {args.rate:g} req/s paced{', mix ' + str(args.mix) if args.mix else ''}, at most {args.concurrency} in flight, {args.tokens:,} distinct valid "
        f"tokens, at most {args.client_in_flight} client authentications of one client in flight, a management change "
        f"every {args.mgmt_interval:g} s, 2 WebSocket sessions, /healthz probe every "
        f"100 ms. Setup: {result['setup']}.",
        f"scopegate CPU over the run: {result['cpu_seconds']:.1f} s ({result['cpu_share']:.0%} of one core); exit code "
        f"{result['exit_code']}, tracebacks in its output: {result['log_tracebacks']}.", "",
        "| t (s) | requests | proxy p50 ms | proxy p99 ms | core p50 ms | core p99 ms | lag p50 ms | lag p99 ms | "
        "lag max ms | RSS MiB | fds min–max (not sockets; sockets not connections) | errors | sent late | scopegate CPU | load avg |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["buckets"]:
        lines.append(f"| {r['t']} | {r['requests']:,} | {r['proxy_p50_ms']} | {r['proxy_p99_ms']} | {r['core_p50_ms']} | "
                     f"{r['core_p99_ms']} | {r['lag_p50_ms']} | {r['lag_p99_ms']} | {r['lag_max_ms']} | {r['rss_mib']} | "
                     f"{r['fds_min']}–{r['fds_max']} ({r['other_fds']}; {r['other_sockets']}) | {r['errors']} | {r['behind']} | {r['cpu_pct']}% | {r['loadavg']} |")
    totals: dict[str, int] = {}
    for r in result["buckets"]:
        for k, v in r["counts"].items():
            totals[k] = totals.get(k, 0) + v
    lines += ["", "Requests by class: " + ", ".join(f"{k} {v:,}" for k, v in sorted(totals.items())) + ".", "",
              "Targets:", "",
              f"- zero unexpected errors: {t['unexpected_errors']} → {yes[t['errors_ok']]}"]
    if t.get("rss_ok") is not None:
        lines += [f"- RSS flat after warm-up: {t['rss_first_mib']} → {t['rss_last_mib']} MiB ({t['rss_growth_mib']:+} MiB, "
                  f"slope {t['rss_slope_mib_per_min']:+} MiB/min) → {yes[t['rss_ok']]}",
                  f"- fds flat after warm-up: floor per bucket {t['fds_first']} → {t['fds_last']}, not sockets "
                  f"{t['other_fds_first']} → {t['other_fds_last']}, sockets that are not connections "
                  f"{t['other_sockets_first']} → {t['other_sockets_last']} → {yes[t['fds_ok']]}"]
    else:
        lines.append(f"- RSS / fds flat: {t.get('note')}")
    if "p99_ok" in t:
        lines.append(f"- proxy p99 drift, first vs last bucket: {t['p99_first_ms']} → {t['p99_last_ms']} ms "
                     f"({t['p99_drift']:+.0%}) → {yes[t['p99_ok']]}")
    if result.get("log_other"):
        lines += ["", "scopegate's output other than its JSON log lines (first 200):", "", "```",
                  *result["log_other"], "```"]
    if result["errors"]:
        lines += ["", "Unexpected answers by class and status: "
                  + ", ".join(f"{k} × {v}" for k, v in sorted(result["error_kinds"].items())) + ".",
                  "", "First unexpected answers:", "", *(f"- `{e}`" for e in result["errors"][:20])]
    return "\n".join(lines) + "\n"


def run_backend(backend: str, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="scopegate-soak-") as tmp, contextlib.ExitStack() as stack:
        workdir = Path(tmp)
        store = (stack.enter_context(kit.postgres_store("soak")) if backend == "postgresql"
                 else f"sqlite:///{workdir / 'soak.db'}")
        upstream = kit.Upstream.start()
        stack.callback(upstream.stop)
        issuer = kit.StaticIssuer()
        stack.callback(issuer.stop)
        gate = kit.launch(workdir, config(store, upstream.url, issuer.issuer), "soak")
        stack.callback(gate.stop)
        loadavg_before = [round(x, 2) for x in os.getloadavg()]
        soak = Soak(gate, issuer, args)
        soak.upstream_port = int(upstream.url.rsplit(":", 1)[1])
        cpu_before = kit.cpu_seconds(gate.pid)
        setup = asyncio.run(soak.run())
        cpu = kit.cpu_seconds(gate.pid) - cpu_before
        assert soak.rec is not None
        result: dict[str, Any] = {
            "backend": backend, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "duration": args.duration, "rate": args.rate, "tokens": args.tokens, "machine": kit.machine(),
            "loadavg_before": loadavg_before, "loadavg_after": [round(x, 2) for x in os.getloadavg()],
            "setup": setup, "cpu_seconds": cpu, "cpu_share": cpu / max(args.duration, 1e-9),
            **summarize(soak.rec), "errors": soak.rec.errors, "error_kinds": soak.rec.error_kinds,
        }
        result["targets"] = targets(result["buckets"], soak.rec.error_count)
        exit_code = gate.stop()
        result["exit_code"] = exit_code
        with gate.log_path.open(errors="replace") as log:
            # Decision-log and system-log lines are JSON; what else the process wrote (stderr: store outages,
            # warnings, tracebacks) is kept for the report.
            other = [line.rstrip() for line in log if not line.startswith("{")]
        result["log_tracebacks"] = sum("Traceback (most recent call last)" in line for line in other)
        result["log_other"] = other[:200]
        return result


def mix_weights(text: str) -> dict[str, int]:
    weights = {}
    for item in text.split(","):
        kind, _, weight = item.partition("=")
        if kind not in WEIGHTS or not weight.isdigit():
            raise argparse.ArgumentTypeError(f"{item!r}: expected KIND=WEIGHT with KIND one of {', '.join(WEIGHTS)}")
        weights[kind] = int(weight)
    return weights


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of traffic per backend (default 600)")
    parser.add_argument("--rate", type=float, default=250.0, help="requests per second (default 250)")
    parser.add_argument("--concurrency", type=int, default=32, help="requests in flight at most (default 32)")
    parser.add_argument("--tokens", type=int, default=10_000, help="distinct valid tokens (default 10,000)")
    parser.add_argument("--client-in-flight", type=int, default=CLIENT_IN_FLIGHT,
                        help=f"client authentications of one client in flight at most (default {CLIENT_IN_FLIGHT})")
    parser.add_argument("--mgmt-interval", type=float, default=3.0, help="seconds between management changes")
    parser.add_argument("--bucket", type=float, default=None, help="bucket seconds (default 60; 5 under 3 minutes)")
    parser.add_argument("--mix", type=mix_weights, default={},
                        help="change the traffic weights, e.g. mint=0,revoke=0 (defaults: "
                        + ",".join(f"{k}={v}" for k, v in WEIGHTS.items()) + ")")
    parser.add_argument("--seed", type=int, default=12)
    parser.add_argument("--results", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    if args.bucket is None:
        args.bucket = 60.0 if args.duration >= 180 else 5.0
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    results = []
    for backend in backends:
        result = run_backend(backend, args)
        results.append(result)
        report = markdown(backend, args, result)
        print(report, flush=True)
        args.results.mkdir(parents=True, exist_ok=True)
        name = f"soak-{backend}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.md"
        (args.results / name).write_text(report)
        print(f"report: {args.results / name}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    return 0 if all(r["targets"]["errors_ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
