"""``scopegate run --workers N``: one supervisor, N worker processes on the same three ports (issue 11 item 2).

Each worker is a whole ``scopegate run`` (``proxy/server.py``): its own event loop, store connection, change-feed
poller and revocation state, verified-token cache and metrics registry. The supervisor serves nothing. It

- validates the config file and does the start-up work that must happen once: it opens the store (so that
  migrations run once, not raced by N workers) and reconciles the file into it (so that N workers do not each
  create the missing signing keys, nor each write the same system-log events);
- binds every listener once, so that a port in use is one line and a non-zero exit before any worker starts,
  and ``:0`` resolves to one port that all workers share;
- starts the workers, restarts one that dies (with a back-off), and passes SIGTERM, SIGINT and SIGHUP on;
- on SIGHUP, validates and reconciles the new file once, then has every worker load exactly that text.

The ports are shared through SO_REUSEPORT, one socket per worker and port (it listens once the worker serves), rather than one socket
inherited by every worker. With one shared socket, the worker whose loop wakes first accepts whatever is
queued, so the long-lived keep-alive connections of a client pool (64 from ``wrk -c64``, the connections a
service mesh keeps open) pile onto one worker and stay there; the kernel spreads SO_REUSEPORT connections over
the sockets by a hash of the addresses, so they are shared evenly (the issue measured 1.8-1.95x from two
processes this way). The sockets are still made here and inherited (``pass_fds``) rather than bound by each
worker: the supervisor also keeps, for the life of the run, one bound but not listening SO_REUSEPORT socket per
port (an "anchor"). It holds the port while no worker is up (a restart with one worker) so nothing else can take
it, it resolves ``:0`` once, and it receives no connection itself (only listening sockets join the kernel's
group). A worker's sockets close with it, so connections the kernel had queued for a killed worker are reset,
as they would be in a single process that was killed, while new connections go to the workers still up.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from authz.errors import ScopegateError
from authz.passwords import configure_hashing
from authz.reconcile import ReconcileReport, reconcile
from authz.store import open_store
from authz.syslog import SystemLog
from config import ConfigError
from config.loader import parse_config, read_config_text
from config.schema import ScopegateConfig

ENV = "SCOPEGATE_WORKER"
"""The environment variable that makes ``scopegate run`` a worker: the ``WorkerSpec`` as JSON."""
EXIT_STARTUP = 2
RESTART_DELAY = 0.5
"""Seconds before a worker that died is started again; doubled for each death in a row, up to ``RESTART_DELAY_MAX``."""
RESTART_DELAY_MAX = 30.0
STABLE_AFTER = 10.0
"""A worker that served this long before it died is restarted after ``RESTART_DELAY`` again."""
READY_TIMEOUT = 120.0
"""Seconds a starting worker may take to serve; one that takes longer is killed and restarted."""
STOP_MARGIN = 5.0
"""Seconds past the grace period the supervisor waits for workers at SIGTERM before it kills them."""


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker inherits from the supervisor, passed in ``SCOPEGATE_WORKER``."""

    index: int
    fds: dict[str, int]
    """Listener name → the inherited listening socket's descriptor."""
    run_dir: str
    source: str
    """The config file's name, for messages (the worker reads the text the supervisor validated)."""
    ready_fd: int
    parent: int
    store: str = ""
    """The store the run started with: a reload that names another one takes effect at the next start, and a
    worker started after it (a restart) must use the same store as the others."""
    store_timeout: float = 1.0

    @property
    def config_file(self) -> str:
        return os.path.join(self.run_dir, "config.yaml")

    @property
    def metrics_dir(self) -> str:
        return os.path.join(self.run_dir, "metrics")

    def to_env(self) -> str:
        return json.dumps({"index": self.index, "fds": self.fds, "runDir": self.run_dir, "source": self.source,
                           "readyFd": self.ready_fd, "parent": self.parent, "store": self.store,
                           "storeTimeout": self.store_timeout})

    @classmethod
    def from_environ(cls) -> WorkerSpec | None:
        raw = os.environ.pop(ENV, None)
        if raw is None:
            return None
        doc = json.loads(raw)
        return cls(int(doc["index"]), {str(k): int(v) for k, v in doc["fds"].items()}, str(doc["runDir"]),
                   str(doc["source"]), int(doc["readyFd"]), int(doc["parent"]), str(doc["store"]),
                   float(doc["storeTimeout"]))

    def load_config(self) -> ScopegateConfig:
        """The config the supervisor validated and reconciled last (start-up or SIGHUP), on the run's store.

        The listeners are the inherited sockets whatever the text says (``Scopegate.start``), and the store the one
        the run started with, so that a worker restarted after a reload that changed either serves what the others
        serve (both take effect at the next start, as with one process)."""
        cfg = parse_config(Path(self.config_file).read_text(encoding="utf-8"), self.source, os.environ)
        if self.store and (cfg.store, cfg.store_timeout) != (self.store, self.store_timeout):
            cfg = cfg.model_copy(update={"store": self.store, "store_timeout": self.store_timeout})
        return cfg

    def signal_ready(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self.ready_fd, b"ready\n")
            os.close(self.ready_fd)


def cpu_quota(cgroup_root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """The CPUs a CFS quota grants this process's cgroup (``resources.limits.cpu`` in Kubernetes), or None.

    A container limited to 1 CPU on a 16-core node still sees 16 CPUs in its affinity mask: the limit is a
    quota of CPU time, not a cpuset. ``auto`` must follow the quota, or 16 workers share one CPU's time and
    are throttled every period. cgroup v2 (``cpu.max``: "max 100000" or "<quota> <period>") and v1
    (``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``, -1 for none), at the cgroup root a container sees."""
    try:
        text = (cgroup_root / "cpu.max").read_text().split()
        quota, period = text[0], text[1]
        if quota != "max" and int(period) > 0:
            return int(quota) / int(period)
        return None
    except (OSError, ValueError, IndexError):
        pass
    for v1 in (cgroup_root / "cpu", cgroup_root / "cpu,cpuacct", cgroup_root):
        try:
            quota_us = int((v1 / "cpu.cfs_quota_us").read_text())
            period_us = int((v1 / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
        return quota_us / period_us if quota_us > 0 and period_us > 0 else None
    return None


def usable_cpus(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """The CPUs this process may use: its affinity mask (what a container's cpuset allows), not the host's,
    and no more than its CPU quota rounded up (a 1.5-CPU limit runs 2 workers, a 0.5-CPU limit 1)."""
    try:
        cpus = max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        cpus = max(1, os.cpu_count() or 1)
    quota = cpu_quota(cgroup_root)
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return cpus


def resolve_workers(value: int | str) -> int:
    return usable_cpus() if value == "auto" else int(value)


def read_config(path: str | None) -> tuple[str, str, ScopegateConfig]:
    """The config file's text, its name for messages and the validated config (``ConfigError`` when invalid)."""
    text, source = read_config_text(path)
    return text, source, parse_config(text, source, os.environ)


def _split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def _reuseport_socket(family: int) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    return sock


def bind_anchor(name: str, address: str) -> socket.socket:
    """A bound, not listening, SO_REUSEPORT socket that holds ``address`` for the run (see the module's doc)."""
    from proxy.server import StartupError

    host, port = _split_address(address)
    sock = _reuseport_socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise StartupError(f"cannot listen on {address} for the {name} listener: {exc.strerror or exc}") from None
    return sock


def listen_beside(anchor: socket.socket) -> socket.socket:
    """A socket bound beside the anchor, for one worker, which listens on it once it serves (uvicorn's
    ``create_server`` does). Not listening before: a listening socket joins the kernel's SO_REUSEPORT group at once,
    so a starting worker (imports, store, keys: seconds on a busy machine) would be dealt connections it cannot
    accept yet, and had it failed to start, they were reset with its socket (seen as a ConnectionResetError right
    after a worker was killed, in a CI run at load average 10+). Bound only, it gets none until it serves."""
    sock = _reuseport_socket(anchor.family)
    try:
        sock.bind(anchor.getsockname())
    except OSError:
        sock.close()
        raise
    return sock


def restart_delay(failures: int) -> float:
    """Seconds before starting a worker again after ``failures`` deaths in a row before this one."""
    return min(RESTART_DELAY * float(2 ** min(failures, 16)), RESTART_DELAY_MAX)


def describe_exit(status: int) -> str:
    if status < 0:
        try:
            return f"signal {signal.Signals(-status).name}"
        except ValueError:
            return f"signal {-status}"
    return f"status {status}"


@dataclass
class Worker:
    index: int
    process: subprocess.Popen[bytes]
    ready_fd: int | None
    started: float
    ready: bool = False
    reload_pending: bool = False
    """A SIGHUP came while it was starting: it gets one once it serves (its handler is installed by then)."""


class Supervisor:
    """The parent of ``scopegate run --workers N``: see the module's doc."""

    def __init__(self, cfg: ScopegateConfig, config_path: str | None, text: str, source: str, workers: int,
                 out: TextIO = sys.stdout) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.text = text
        self.source = source
        self.count = workers
        self.out = out
        self.store_url = cfg.store
        self.store_timeout = cfg.store_timeout
        self.anchors: dict[str, socket.socket] = {}
        self.run_dir = ""
        self.workers: dict[int, Worker] = {}
        self.failures: dict[int, int] = {}
        self.restart_at: dict[int, float] = {}
        self.restarts = 0
        self.stopping = False
        self._reload_when_started = False
        self._signals: list[int] = []
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        os.set_blocking(self._wake_r, False)

    # ------------------------------------------------------------------------------------------ start

    def run(self) -> int:
        from proxy.server import StartupError

        old = self._install_signals()
        try:
            try:
                self._bind()
                self._reconcile(self.cfg, first=True)
            except StartupError as exc:
                print(f"scopegate: {exc}", file=sys.stderr, flush=True)
                return EXIT_STARTUP
            self.run_dir = tempfile.mkdtemp(prefix="scopegate-run-")
            os.mkdir(os.path.join(self.run_dir, "metrics"))
            self._write_config(self.text)
            self._write_metrics()
            for index in range(self.count):
                self._spawn(index)
            if not self._wait_started():
                self._stop_all()
                return EXIT_STARTUP
            if not self.stopping:
                addresses = ", ".join(f"{name} {self._url(name, sock)}" for name, sock in self.anchors.items())
                print(f"scopegate: serving {addresses} ({self.count} workers)", file=sys.stderr, flush=True)
                if self._reload_when_started:
                    self._reload()
                self._loop()
            return self._stop_all()
        finally:
            for sock in self.anchors.values():
                sock.close()
            if self.run_dir:
                shutil.rmtree(self.run_dir, ignore_errors=True)
            for sig, handler in old.items():
                signal.signal(sig, handler)
            signal.set_wakeup_fd(-1)
            os.close(self._wake_r)
            os.close(self._wake_w)

    def _install_signals(self) -> dict[int, signal.Handlers | int | None]:
        def handler(signum: int, frame: object) -> None:
            self._signals.append(signum)

        old: dict[int, signal.Handlers | int | None] = {}
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
            old[sig] = signal.signal(sig, handler)  # type: ignore[assignment]
        signal.set_wakeup_fd(self._wake_w)
        return old

    def _bind(self) -> None:
        listen = self.cfg.listen
        names = [("proxy", listen.proxy), ("core", listen.core), ("ops", listen.ops)]
        try:
            for name, address in names:
                if address != "off":
                    self.anchors[name] = bind_anchor(name, address)
        except BaseException:
            for sock in self.anchors.values():
                sock.close()
            self.anchors.clear()
            raise

    def _url(self, name: str, sock: socket.socket) -> str:
        host, port = sock.getsockname()[:2]
        tls = self.cfg.listen.tls is not None and name in self.cfg.listen.tls_listeners
        return f"{'https' if tls else 'http'}://{host}:{port}"

    def _reconcile(self, cfg: ScopegateConfig, first: bool = False) -> ReconcileReport:
        """Write the file into the store, once for every worker (and run the store's migrations, at start)."""
        from proxy.server import StartupError

        try:
            store = open_store(self.store_url, self.store_timeout)
        except ScopegateError as exc:
            raise StartupError(str(exc) or exc.description) from None
        try:
            if first:
                configure_hashing(cfg.core.hashing_threads, cfg.core.hashing_queue)
            syslog = SystemLog.from_settings(cfg.core, self.out) if first else SystemLog(self.out)
            try:
                return reconcile(store, cfg, time.time(), syslog)
            except ScopegateError as exc:  # locked or unreadable: one line, as a store that cannot be opened
                raise StartupError(str(exc) or exc.description) from None
        finally:
            store.close()

    def _write_config(self, text: str) -> None:
        path = os.path.join(self.run_dir, "config.yaml")
        with open(f"{path}.tmp", "w", encoding="utf-8") as file:
            file.write(text)
        os.replace(f"{path}.tmp", path)

    def _write_metrics(self) -> None:
        """The supervisor's own counter, merged by whichever worker is scraped (``proxy/metrics.py``)."""
        doc = {"worker": "supervisor", "metrics": [{
            "name": "scopegate_worker_restarts", "type": "counter", "unit": "",
            "help": "Worker processes started again after one exited (scopegate run --workers).",
            "samples": [["scopegate_worker_restarts_total", {}, float(self.restarts)]]}]}
        path = os.path.join(self.run_dir, "metrics", "supervisor.json")
        with contextlib.suppress(OSError):
            with open(f"{path}.tmp", "w", encoding="utf-8") as file:
                json.dump(doc, file)
            os.replace(f"{path}.tmp", path)

    def _spawn(self, index: int) -> None:
        socks = {name: listen_beside(anchor) for name, anchor in self.anchors.items()}
        ready_r, ready_w = os.pipe()
        try:
            spec = WorkerSpec(index, {name: sock.fileno() for name, sock in socks.items()}, self.run_dir,
                              self.source, ready_w, os.getpid(), self.store_url, self.store_timeout)
            process = subprocess.Popen(
                [sys.executable, "-m", "proxy.cli", "run"],
                env={**os.environ, ENV: spec.to_env()},
                pass_fds=[*spec.fds.values(), ready_w],
                stdin=subprocess.DEVNULL,
            )
        except BaseException:
            os.close(ready_r)
            raise
        finally:
            # The worker holds them now: they close with it, so a dead worker's queue gets no more connections.
            for sock in socks.values():
                sock.close()
            os.close(ready_w)
        os.set_blocking(ready_r, False)
        self.workers[index] = Worker(index, process, ready_r, time.monotonic())

    def _wait_started(self) -> bool:
        """Until every worker serves; False (after saying why) when one exits or hangs first."""
        deadline = time.monotonic() + READY_TIMEOUT
        while not all(w.ready for w in self.workers.values()):
            self._wait(min(0.5, max(0.0, deadline - time.monotonic())))
            if self._handle_signals(starting=True):
                return True  # SIGTERM during start-up: run() stops what started
            for worker in self.workers.values():
                status = worker.process.poll()
                if status is not None and not worker.ready:
                    print(f"scopegate: worker {worker.index} exited with {describe_exit(status)} while starting",
                          file=sys.stderr, flush=True)
                    return False
            if time.monotonic() > deadline:
                print(f"scopegate: the workers did not start within {READY_TIMEOUT:g}s", file=sys.stderr, flush=True)
                return False
        return True

    # ------------------------------------------------------------------------------------------ run

    def _wait(self, timeout: float) -> None:
        fds = [self._wake_r, *(w.ready_fd for w in self.workers.values() if w.ready_fd is not None)]
        readable, _, _ = select.select(fds, [], [], timeout)
        if self._wake_r in readable:
            with contextlib.suppress(BlockingIOError):
                while os.read(self._wake_r, 512):
                    pass
        for worker in self.workers.values():
            if worker.ready_fd is not None and worker.ready_fd in readable:
                try:
                    data = os.read(worker.ready_fd, 64)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if data.startswith(b"ready"):
                    worker.ready = True
                    if worker.reload_pending:
                        worker.reload_pending = False
                        with contextlib.suppress(ProcessLookupError):
                            worker.process.send_signal(signal.SIGHUP)
                os.close(worker.ready_fd)
                worker.ready_fd = None

    def _handle_signals(self, starting: bool = False) -> bool:
        """Act on the signals received; True once SIGTERM or SIGINT asks to stop."""
        while self._signals:
            sig = self._signals.pop(0)
            if sig in (signal.SIGTERM, signal.SIGINT):
                self.stopping = True
            elif sig == signal.SIGHUP and starting:
                self._reload_when_started = True  # the file may have changed since it was read: read it again
            elif sig == signal.SIGHUP and not self.stopping:
                self._reload()
        return self.stopping

    def _loop(self) -> None:
        while True:
            now = time.monotonic()
            due = min(self.restart_at.values(), default=now + 1.0)
            self._wait(max(0.0, min(1.0, due - now)))
            if self._handle_signals():
                return
            self._reap()
            now = time.monotonic()
            for index, at in list(self.restart_at.items()):
                if at <= now:
                    del self.restart_at[index]
                    self._restart(index)

    def _reap(self) -> None:
        for index, worker in list(self.workers.items()):
            status = worker.process.poll()
            if status is None:
                if not worker.ready and time.monotonic() - worker.started > READY_TIMEOUT:
                    worker.process.kill()  # hung at start: reaped and restarted on the next round
                continue
            del self.workers[index]
            if worker.ready_fd is not None:
                os.close(worker.ready_fd)
            self._bury(worker)
            lived = time.monotonic() - worker.started
            failures = 0 if worker.ready and lived >= STABLE_AFTER else self.failures.get(index, 0)
            delay = restart_delay(failures)
            self.failures[index] = failures + 1
            self.restart_at[index] = time.monotonic() + delay
            print(f"scopegate: worker {index} (pid {worker.process.pid}) exited with {describe_exit(status)}; "
                  f"starting it again in {delay:g}s", file=sys.stderr, flush=True)

    def _bury(self, worker: Worker) -> None:
        """A dead worker's metrics snapshot stops counting as live: its counters stay in the sums."""
        directory = os.path.join(self.run_dir, "metrics")
        name = f"live-{worker.index}-{worker.process.pid}.json"
        with contextlib.suppress(OSError):
            os.replace(os.path.join(directory, name), os.path.join(directory, "dead-" + name[5:]))

    def _restart(self, index: int) -> None:
        try:
            self._spawn(index)
        except OSError as exc:  # no descriptors, no memory: try again later
            print(f"scopegate: cannot start worker {index}: {exc}", file=sys.stderr, flush=True)
            self.restart_at[index] = time.monotonic() + RESTART_DELAY_MAX
            return
        self.restarts += 1
        self._write_metrics()

    def _reload(self) -> None:
        """SIGHUP: validate and reconcile once, then every worker loads the same text."""
        from proxy.server import StartupError

        try:
            text, _, cfg = read_config(self.config_path)
        except ConfigError as exc:
            print(f"scopegate: reload refused, keeping the running configuration:\n{exc}", file=sys.stderr, flush=True)
            return
        try:
            report = self._reconcile(cfg)
        except (StartupError, ScopegateError) as exc:
            print(f"scopegate: reload refused, the store is unavailable: {exc}", file=sys.stderr, flush=True)
            return
        self._write_config(text)
        restart_only = [name for name, before, after in (
            ("listen", self.cfg.listen, cfg.listen), ("store", self.cfg.store, cfg.store),
            ("workers", self.cfg.workers, cfg.workers)) if before != after]
        self.cfg = cfg
        for worker in self.workers.values():
            if not worker.ready:
                worker.reload_pending = True
                continue
            with contextlib.suppress(ProcessLookupError):
                worker.process.send_signal(signal.SIGHUP)
        note = f"; {', '.join(restart_only)} take effect at the next start" if restart_only else ""
        print(f"scopegate: reloaded {self.source} ({len(report.created)} created, {len(report.updated)} updated, "
              f"{len(report.deleted)} deleted, {len(report.overwritten)} API changes overwritten) in "
              f"{len(self.workers)} workers{note}", file=sys.stderr, flush=True)

    # ------------------------------------------------------------------------------------------ stop

    def _stop_all(self) -> int:
        """SIGTERM to every worker; each drains within the grace period; one that does not is killed."""
        self.stopping = True
        self.restart_at.clear()
        for worker in self.workers.values():
            with contextlib.suppress(ProcessLookupError):
                worker.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.cfg.shutdown_grace_period + STOP_MARGIN
        status = 0
        for worker in self.workers.values():
            try:
                code = worker.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                print(f"scopegate: worker {worker.index} did not stop in time; killing it", file=sys.stderr,
                      flush=True)
                worker.process.kill()
                code = worker.process.wait()
            if code not in (0, -signal.SIGTERM, -signal.SIGINT, 130):
                status = status or 1
            if worker.ready_fd is not None:
                os.close(worker.ready_fd)
                worker.ready_fd = None
        self.workers.clear()
        return status
