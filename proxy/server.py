"""Process wiring for ``scopegate run``: one process, three listeners (DESIGN §1).

The listeners share one event loop: the proxy (a bare ASGI callable, the hot path), the core (OAuth
endpoints, management API, system log) and ops (health, readiness, metrics). Sockets are bound before
anything is served, so that a port in use is one clear line and a non-zero exit. SIGTERM and SIGINT
drain in-flight requests and stop; SIGHUP reloads the config file, keeping the running configuration
when the new one is invalid.

With ``--workers N`` (N > 1) this process is the supervisor of ``proxy/supervisor.py`` and each worker runs a
``Scopegate`` given a ``WorkerSpec``: it serves sockets the supervisor made, leaves the once-only start-up work
(migrations, reconcile) to it, reads the config text the supervisor validated, and writes its metrics snapshot
for the others to merge (``proxy/metrics.py``).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import gc
import logging
import os
import resource
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TextIO, cast

import uvicorn
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from authz.app import build_core_app
from authz.context import CoreContext
from authz.errors import ScopegateError
from authz.feed import FeedMetrics, FeedPoller
from authz.metrics import TokenMetrics
from authz.passwords import configure_hashing, hashing_pool
from authz.reconcile import reconcile
from authz.revocation import RevocationState
from authz.store import Change, Store, open_store
from authz.syslog import SystemLog
from config import ConfigError, load_config
from config.schema import ScopegateConfig
from proxy.app import ProxyApp
from proxy.decisionlog import LineStream, LineWriter
from proxy.keys import IssuerKeys, build_key_resolver
from proxy.metrics import SNAPSHOT_INTERVAL, ProxyMetrics, WorkerMetrics
from proxy.ops import BackgroundCheck, Check, build_ops_app
from proxy.protocol import guarded_protocol
from proxy.supervisor import WorkerSpec, read_config, resolve_workers

EXIT_STARTUP = 2
STORE_CHECK_INTERVAL = 0.5
"""Seconds between two background store checks (what /readyz reports)."""


class CutAtGrace(logging.Filter):
    """uvicorn logs each request it cancels at the end of ``shutdownGracePeriod`` as "Exception in ASGI
    application" with a traceback; after its one line saying how many it cancels, that is noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], asyncio.CancelledError))


logging.getLogger("uvicorn.error").addFilter(CutAtGrace())


class StartupError(Exception):
    """A reason the process cannot start, printed as one line."""


@dataclass
class Listener:
    name: str
    address: str
    app: Any
    tls: bool = False
    sock: socket.socket | None = None
    server: uvicorn.Server | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


GC_THRESHOLD = (50_000, 20, 100)
"""The collector's thresholds (CPython's default is 700, 10, 10). The request path creates no reference cycles
(tests/proxy/test_gc.py), so a collection frees nothing; it runs only because the objects of the requests in
flight outnumber the threshold for a moment. Measured with bench/gc_pauses.py at 64 connections (bench/README.md):
the defaults ran ~450 young and 2-3 full collections per 10,000 requests (56-78 µs of collector time per
request); freezing alone, still ~450 young ones (18-30 µs); 5,000 still ~0.7 per 10,000 requests; 50,000 none.
Should the heap grow (a cache filling), a young collection over 50,000 objects is a ~3 ms pause."""


def settle_heap() -> None:
    """Move everything built so far (configuration, apps, tables, imported modules) out of the collector's sight.

    Frozen objects are never traversed again: a full collection used to walk the ~67,000 start-up objects and
    found nothing, a 40-50 ms pause that was the p99 (issue 11). Called once serving starts and after each
    reload, which first unfreezes, so that the tables a reload replaced can be freed: one full collection per
    SIGHUP instead of one every few hundred requests."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLD)


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def bind(name: str, address: str) -> socket.socket:
    host, port = split_address(address)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise StartupError(f"cannot listen on {address} for the {name} listener: {exc.strerror or exc}") from None
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def adopt(fd: int) -> socket.socket:
    """A listening socket inherited from the supervisor (``proxy/supervisor.py``)."""
    sock = socket.socket(fileno=fd)
    sock.setblocking(False)
    return sock


def identify_issuers(cfg: ScopegateConfig) -> dict[str, str]:
    """Issuer URL → local AS id, for the revocation state (remote issuers are not ours to watermark)."""
    return {cfg.issuer_for(s.id): s.id for s in cfg.authorization_servers if s.remote is None}


class Scopegate:
    """The running process: owns the store, the revocation state, the apps and the listeners."""

    def __init__(self, cfg: ScopegateConfig, config_path: str | None, out: TextIO = sys.stdout,
                 now: Callable[[], float] = time.time, worker: WorkerSpec | None = None) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.worker = worker
        # A worker's stdout is shared with the other workers: whole lines, one write each (decisionlog.LineStream).
        self.out = out if worker is None or isinstance(out, LineStream) else cast(TextIO, LineStream(out.fileno()))
        self.worker_metrics: WorkerMetrics | None = None
        self.now = now
        self.stop_event = asyncio.Event()
        self.listeners: list[Listener] = []
        self.store: Store | None = None
        self.poller: FeedPoller | None = None
        self.proxy_app: ProxyApp | None = None
        self.decision_log: LineWriter | None = None
        self.keys: IssuerKeys | None = None
        self.background: list[asyncio.Task[None]] = []
        """The feed poller, the store pruner and the store health check; cancelled at stop."""
        self.store_health: BackgroundCheck | None = None

    # ------------------------------------------------------------------------------------------ start

    async def start(self) -> None:
        cfg = self.cfg
        # Bind first: nothing is written anywhere if a port is taken.
        listens = [("proxy", cfg.listen.proxy), ("ops", cfg.listen.ops)]
        if cfg.listen.core != "off":
            listens.insert(1, ("core", cfg.listen.core))
        socks: dict[str, socket.socket]
        if self.worker is not None:  # the sockets the supervisor made at start, whatever a reload since says
            fds = self.worker.fds
            socks = {name: adopt(fds[name]) for name in ("proxy", "core", "ops") if name in fds}
        else:
            socks = {name: bind(name, address) for name, address in listens}
        try:
            try:
                await self._build(socks)
            except ScopegateError as exc:
                # A store that opened but fails its first reads (a corrupted page, an I/O error) stops start-up
                # with one line, as one that cannot be opened does (issue 12 item 3).
                raise StartupError(str(exc) or exc.description) from None
        except BaseException:
            for sock in socks.values():
                sock.close()
            await self._abandon()
            raise

    async def _abandon(self) -> None:
        """A start that failed half-way (an unreadable certificate): close what was opened, quietly."""
        for background in self.background:
            background.cancel()
        with contextlib.suppress(Exception):
            if self.proxy_app is not None:
                await self.proxy_app.shutdown()  # its upstream pool ("Unclosed client session" otherwise)
        with contextlib.suppress(Exception):
            if self.keys is not None:
                await self.keys.aclose()
        if self.poller is not None:
            self.poller.close()
        if self.store_health is not None:
            self.store_health.close()
        if self.decision_log is not None:
            self.decision_log.close()

    async def _build(self, socks: dict[str, socket.socket]) -> None:
        cfg = self.cfg
        try:
            store = await asyncio.to_thread(open_store, cfg.store, cfg.store_timeout)
        except ScopegateError as exc:
            raise StartupError(str(exc) or exc.description) from None
        self.store = store
        # Password and secret hashing on a bounded pool of its own (issue 8 item 5).
        configure_hashing(cfg.core.hashing_threads, cfg.core.hashing_queue)
        syslog = SystemLog.from_settings(cfg.core, self.out)
        if self.worker is None:  # the supervisor reconciled once for every worker
            await asyncio.to_thread(reconcile, store, cfg, self.now(), syslog)

        keys = build_key_resolver(cfg, store)
        self.keys = keys
        loop = asyncio.get_running_loop()

        def on_config_change(change: Change) -> None:
            # Called from the poller's worker thread: a key rotation or reconcile elsewhere means our
            # local key set may have changed; reload it on the loop.
            loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self._reload_keys()))

        revocation = RevocationState(identify_issuers(cfg), now=self.now, max_staleness=cfg.revocation.max_staleness)
        # sys.stderr now, not at import: with workers it is the whole-line stream (_share_stdio).
        self.poller = FeedPoller(store, revocation, interval=cfg.revocation.poll_interval,
                                 on_config_change=on_config_change, log_stream=sys.stderr)
        await asyncio.to_thread(self.poller.poll_once)
        await keys.start()

        registry = CollectorRegistry()
        GCCollector(registry)  # python_gc_*: the collector's runs and what they freed (none expected, issue 11)
        # process_*: memory, descriptors, CPU; with workers, the gauges are per worker (a "worker" label) and the
        # CPU counter is the sum (proxy/metrics.py).
        ProcessCollector(registry=registry)
        metrics = ProxyMetrics(registry)
        registry.register(CoreShedding(syslog))
        registry.register(FeedMetrics(self.poller))
        # Decision-log lines leave through a writer thread, in whole-line batches (issue 11 item 3).
        fields = "" if self.worker is None else f'"worker":{self.worker.index},"pid":{os.getpid()},'
        self.decision_log = LineWriter(self.out, fields=fields)
        self.proxy_app = ProxyApp(cfg, keys, revocation, metrics, log_stream=cast(TextIO, self.decision_log),
                                  now=self.now)
        await self.proxy_app.startup()

        ctx = CoreContext(config=cfg, store=store, syslog=syslog, revocation=revocation, now=self.now,
                          refresh_revocations=self.poller.poll_now,
                          token_metrics=TokenMetrics(registry, [s.id for s in cfg.authorization_servers]))
        self.ctx = ctx
        self.revocation = revocation
        # Issue 12: the last known store health, from a check on a thread of its own; never a ping on the loop.
        self.store_health = BackgroundCheck("store", store.ping, interval=STORE_CHECK_INTERVAL,
                                            deadline=cfg.store_timeout + 0.5, log=sys.stderr)
        await self.store_health.run_once()
        checks = [
            self.store_health.check(),
            Check("revocation_feed", lambda: "stale" if revocation.is_stale(self.now()) else None),
        ]
        exposition = None
        if self.worker is not None:
            self.worker_metrics = WorkerMetrics(registry, self.worker.metrics_dir, self.worker.index)
            exposition = self.worker_metrics.render
        apps: dict[str, Any] = {"proxy": self.proxy_app, "ops": build_ops_app(registry, checks, exposition)}
        if "core" in socks:
            apps["core"] = build_core_app(ctx)
        tls_names = set(cfg.listen.tls_listeners) if cfg.listen.tls else set()
        for name, sock in socks.items():
            listener = Listener(name, sock.getsockname()[0], apps[name], tls=name in tls_names, sock=sock)
            await self._serve(listener)
            self.listeners.append(listener)
        self.background = [asyncio.create_task(self.poller.run()), asyncio.create_task(self.store_health.run())]
        if self.worker is None or self.worker.index == 0:  # one pruner is enough
            self.background.append(asyncio.create_task(self._prune_forever()))
        if self.worker_metrics is not None:
            await asyncio.to_thread(self.worker_metrics.write)
            self.background.append(asyncio.create_task(self.worker_metrics.run()))
            assert self.worker is not None
            self.background.append(asyncio.create_task(self._watch_parent(self.worker.parent)))
        settle_heap()

    async def _serve(self, listener: Listener) -> None:
        tls = self.cfg.listen.tls if listener.tls else None
        limits = self.cfg.proxy.limits
        # Every listener gets the guarded protocol: the core and ops answer unauthenticated clients too
        # (issue 8, item 6). The proxy reads bodies itself, under the same deadline, per request.
        http = guarded_protocol(
            limits.read_timeout,
            max_target_bytes=limits.max_target_bytes,
            max_header_bytes=limits.max_header_bytes,
            max_connections=getattr(self.cfg.listen.max_connections, listener.name),
            body_timeout=None if listener.name == "proxy" else limits.read_timeout,
        )
        config = uvicorn.Config(
            listener.app,
            lifespan="off",
            http=http,
            loop="none",
            log_level="warning",
            access_log=False,
            server_header=False,
            date_header=True,
            # uvicorn trusts X-Forwarded-For/-Proto from 127.0.0.1 by default and rewrites the ASGI client and
            # scheme from them: a local client could then choose the X-Forwarded-For the upstream sees. The
            # gate sets the forwarding headers itself from the socket (security.md §3.2), so never here.
            proxy_headers=False,
            # uvicorn types it int; it is given to asyncio.timeout, which takes seconds as a float.
            timeout_graceful_shutdown=self.cfg.shutdown_grace_period,  # type: ignore[arg-type]
            ssl_certfile=tls.cert_file if tls else None,
            ssl_keyfile=tls.key_file if tls else None,
            h11_max_incomplete_event_size=self.cfg.proxy.limits.max_header_bytes,
        )
        try:
            config.load()
        except Exception as exc:  # e.g. an unreadable TLS certificate
            raise StartupError(f"cannot start the {listener.name} listener: {exc}") from None
        server = uvicorn.Server(config)
        server.lifespan = config.lifespan_class(config)
        assert listener.sock is not None
        await server.startup(sockets=[listener.sock])
        listener.server = server
        listener.tasks.append(asyncio.create_task(server.main_loop()))

    # ------------------------------------------------------------------------------------------ run

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop_event.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self.reload()))
        if self.worker is not None:
            self.worker.signal_ready()  # the supervisor says "serving" once every worker is
        else:
            addresses = ", ".join(f"{lst.name} {self._url(lst)}" for lst in self.listeners)
            print(f"scopegate: serving {addresses}", file=sys.stderr, flush=True)
        await self.stop_event.wait()
        await self.stop()

    def _url(self, listener: Listener) -> str:
        assert listener.sock is not None
        host, port = listener.sock.getsockname()[:2]
        scheme = "https" if listener.tls else "http"
        return f"{scheme}://{host}:{port}"

    async def _watch_parent(self, parent: int) -> None:
        """A worker whose supervisor is gone (killed with SIGKILL) stops rather than serve unsupervised."""
        while True:
            await asyncio.sleep(SNAPSHOT_INTERVAL)
            if os.getppid() != parent:
                break
        print(f"scopegate: worker {self.worker.index if self.worker else '?'}: the supervisor is gone; stopping",
              file=sys.stderr, flush=True)
        self.stop_event.set()

    async def _prune_forever(self) -> None:
        """Keep the store bounded: expired codes and token records, idle refresh chains, spent feed entries,
        and system-log events past the retention (Okta keeps 90 days). A failure is logged and retried."""
        while True:
            await asyncio.sleep(self.cfg.core.prune_interval)
            await self.prune_once()

    async def prune_once(self) -> int:
        if self.store is None:
            return 0
        retention = self.cfg.core.log_retention or None
        try:
            return await asyncio.to_thread(self.store.prune, self.now(), retention)
        except ScopegateError as exc:
            print(f"scopegate: pruning the store failed, will retry: {exc}", file=sys.stderr,
                  flush=True)
            return 0

    async def _reload_keys(self) -> None:
        if self.keys is not None:
            await self.keys.reload_local()

    async def reload(self) -> None:
        """SIGHUP: reload the file; an invalid one leaves the running configuration in place.

        Authorization servers, apps, users, groups, routes, admin tokens and proxy settings take effect;
        listener addresses and the store URL need a restart (the sockets and the store stay as they are).
        """
        if self.store is None or self.proxy_app is None:
            return
        if self.config_path is None and self.worker is None:
            return
        try:
            # A worker loads the text its supervisor validated and reconciled (once, for every worker).
            cfg = self.worker.load_config() if self.worker is not None else load_config(self.config_path)
        except (ConfigError, OSError) as exc:
            print(f"scopegate: reload refused, keeping the running configuration:\n{exc}", file=sys.stderr, flush=True)
            return
        report = None
        if self.worker is None:
            try:
                report = await asyncio.to_thread(reconcile, self.store, cfg, self.now(), SystemLog(self.out))
            except ScopegateError as exc:  # the store is down or locked: keep serving what runs now
                print(f"scopegate: reload refused, the store is unavailable: {exc}", file=sys.stderr, flush=True)
                return
        # A new key resolver, since servers may have come or gone; the old one closes once swapped out.
        keys = build_key_resolver(cfg, self.store)
        try:
            await keys.start()
        except Exception as exc:  # keep serving with what we have rather than fail open or crash
            print(f"scopegate: reload refused, cannot load signing keys: {exc}", file=sys.stderr, flush=True)
            await keys.aclose()
            return
        old_keys, self.keys = self.keys, keys
        self.revocation.set_issuers(identify_issuers(cfg))
        if self.poller is not None:
            await self.poller.poll_now()
        self.proxy_app.keys = keys
        await self.proxy_app.reconfigure(cfg)
        self.ctx.config = cfg
        self.cfg = cfg
        if old_keys is not None:
            await old_keys.aclose()
        settle_heap()  # the new tables are long-lived too
        if report is None:
            assert self.worker is not None
            print(f"scopegate: worker {self.worker.index} (pid {os.getpid()}) reloaded", file=sys.stderr, flush=True)
            return
        print(f"scopegate: reloaded {self.config_path} ({len(report.created)} created, {len(report.updated)} updated, "
              f"{len(report.deleted)} deleted, {len(report.overwritten)} API changes overwritten)", file=sys.stderr, flush=True)

    async def stop(self) -> None:
        """Drain: stop accepting, let in-flight requests finish, then close the upstream pool and the store."""
        await asyncio.gather(*(lst.server.shutdown() for lst in self.listeners if lst.server is not None))
        for lst in self.listeners:
            if lst.server is not None:
                lst.server.should_exit = True
            for task in lst.tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for background in self.background:
            background.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await background
        if self.poller is not None:
            self.poller.close()
        if self.store_health is not None:
            self.store_health.close()
        if self.proxy_app is not None:
            await self.proxy_app.shutdown()
        if self.decision_log is not None:
            self.decision_log.close()  # every request has ended: write its line before exiting
        if self.worker_metrics is not None:
            with contextlib.suppress(OSError):
                self.worker_metrics.write()  # the last counts, for the sums the other workers report
        if self.keys is not None:
            await self.keys.aclose()
        if self.store is not None:
            self.store.close()


class CoreShedding(Collector):
    """What the core refused to do under load (issue 8 items 5 and 7), so that no such decision is silent."""

    def __init__(self, syslog: SystemLog) -> None:
        self.syslog = syslog

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily("scopegate_system_log_suppressed_events",
                                  "FAILURE/DENY system-log events not written: their source was over core.failureEventRate.",
                                  value=self.syslog.suppressed)
        yield CounterMetricFamily("scopegate_hashing_shed",
                                  "Password/secret checks refused: the hashing pool was saturated (core.hashingQueue).",
                                  value=hashing_pool().shed)


def run(config_path: str | None, workers: int | str | None = None) -> int:
    """``scopegate run``: returns the exit status. ``workers`` (``--workers``) overrides the config's."""
    worker = WorkerSpec.from_environ()
    if worker is not None:
        # Until the loop's handlers are installed: a SIGHUP now (a reload as this worker starts) must not kill it;
        # the supervisor sends it again once the worker serves.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        if worker is not None:
            cfg = worker.load_config()
        else:
            text, source, cfg = read_config(config_path)
    except ConfigError as exc:
        print(f"scopegate: invalid configuration:\n{exc}", file=sys.stderr)
        return EXIT_STARTUP
    _raise_file_limit()
    if worker is not None:
        _share_stdio()
    else:
        count = resolve_workers(cfg.workers if workers is None else workers)
        if count > 1:
            if cfg.store.startswith("sqlite://") and cfg.store.endswith(":memory:"):
                print("scopegate: --workers needs a store every worker can open: a SQLite file or PostgreSQL, "
                      "not sqlite:///:memory:", file=sys.stderr)
                return EXIT_STARTUP
            from proxy.supervisor import Supervisor

            _share_stdio()
            return Supervisor(cfg, config_path, text, source, count, out=sys.stdout).run()
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; plain asyncio still works
        runner: Callable[..., Any] = asyncio.run
    else:
        runner = uvloop.run
    try:
        runner(_main(cfg, config_path, worker, sys.stdout))
    except StartupError as exc:
        print(f"scopegate: {exc}", file=sys.stderr)
        return EXIT_STARTUP
    except KeyboardInterrupt:
        return 130
    return 0


def _share_stdio() -> None:
    """With workers, every process writes whole lines, each in one write, to the stdout and stderr they share."""
    for name, fd in (("stdout", 1), ("stderr", 2)):
        current = getattr(sys, name)
        if current is None or isinstance(current, LineStream):
            continue
        with contextlib.suppress(OSError, ValueError):
            current.flush()
        stream = LineStream(fd)
        setattr(sys, name, stream)
        atexit.register(stream.close)  # a last line without its newline still leaves


def _raise_file_limit() -> None:
    """Lift the soft descriptor limit to the hard one, so the connection caps are what bounds connections."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):  # some sandboxes refuse; the soft limit then stays the bound
        pass


async def _main(cfg: ScopegateConfig, config_path: str | None, worker: WorkerSpec | None = None,
                out: TextIO = sys.stdout) -> None:
    gate = Scopegate(cfg, config_path, out, worker=worker)
    await gate.start()
    await gate.run()
