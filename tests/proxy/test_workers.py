"""The pieces of ``scopegate run --workers N`` that can be checked without starting a process tree: how the
workers' metrics become one view, how their stdout lines stay whole, how N is chosen."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from config import ConfigError
from config.loader import parse_config
from proxy import reasons
from proxy.cli import main
from proxy.decision import Decision
from proxy.decisionlog import PIPE_BUF, LineStream, LineWriter
from proxy.metrics import LoopValue, ProxyMetrics, WorkerMetrics
from proxy.supervisor import WorkerSpec, cpu_quota, resolve_workers, restart_delay, usable_cpus


def worker(directory: Path, index: int, pid: int, requests: int, in_flight: int, age: float) -> WorkerMetrics:
    registry = CollectorRegistry()
    metrics = ProxyMetrics(registry)
    metrics.prebuild(["read"])
    for _ in range(requests):
        metrics.record(Decision("id", "GET", 0.0, 0.0, route="read", decision=reasons.ALLOW,
                                reason=reasons.ALLOW_REASONS[0], status=200, duration=0.002))
    metrics.active = in_flight
    metrics.watch_revocation_age(lambda: age)
    Gauge("scopegate_example_per_worker", "A gauge with no merge rule.", registry=registry).set(index + 10)
    return WorkerMetrics(registry, str(directory), index, pid=pid)


def scrape(text: bytes) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text.decode()) for s in family.samples}


class TestWorkerMetrics:
    def test_counters_and_histograms_sum_gauges_merge_by_rule(self, tmp_path: Path) -> None:
        """The scraped worker answers its own live figures plus the others' snapshots: counters and histogram
        series summed, in-flight summed, state age the largest, a gauge with no rule labelled per worker."""
        first = worker(tmp_path, 0, 101, requests=3, in_flight=2, age=0.5)
        second = worker(tmp_path, 1, 102, requests=4, in_flight=5, age=1.5)
        second.write()
        merged = scrape(first.render())
        allow = frozenset({("route", "read"), ("decision", reasons.ALLOW), ("reason", reasons.ALLOW_REASONS[0])})
        assert merged[("scopegate_requests_total", allow)] == 7
        assert merged[("scopegate_request_duration_seconds_count", frozenset({("route", "read")}))] == 7
        assert merged[("scopegate_requests_in_flight", frozenset())] == 7
        assert merged[("scopegate_revocation_state_age_seconds", frozenset())] == 1.5
        assert merged[("scopegate_example_per_worker", frozenset({("worker", "0")}))] == 10
        assert merged[("scopegate_example_per_worker", frozenset({("worker", "1")}))] == 11
        assert merged[("scopegate_workers", frozenset())] == 2
        assert not any(name.endswith("_created") for name, _ in merged)

    def test_a_dead_workers_counters_still_count_its_gauges_do_not(self, tmp_path: Path) -> None:
        """Once the supervisor renames a worker's snapshot dead-*, its counters stay in the sums (they never
        go backwards when a worker is replaced) and its gauges leave the merge."""
        first = worker(tmp_path, 0, 101, requests=3, in_flight=2, age=0.5)
        dead = worker(tmp_path, 1, 102, requests=4, in_flight=5, age=9.0)
        dead.write()
        os.replace(dead.path, tmp_path / "dead-1-102.json")
        merged = scrape(first.render())
        allow = frozenset({("route", "read"), ("decision", reasons.ALLOW), ("reason", reasons.ALLOW_REASONS[0])})
        assert merged[("scopegate_requests_total", allow)] == 7
        assert merged[("scopegate_requests_in_flight", frozenset())] == 2
        assert merged[("scopegate_revocation_state_age_seconds", frozenset())] == 0.5
        assert ("scopegate_example_per_worker", frozenset({("worker", "1")})) not in merged
        assert merged[("scopegate_workers", frozenset())] == 1

    def test_a_half_written_or_foreign_file_is_skipped(self, tmp_path: Path) -> None:
        """A snapshot is replaced atomically; anything else in the directory does not break a scrape."""
        first = worker(tmp_path, 0, 101, requests=1, in_flight=0, age=0.0)
        (tmp_path / "live-1-102.json").write_text('{"worker": 1, "metr')
        (tmp_path / "live-2-103.json.tmp").write_text("junk")
        merged = scrape(first.render())
        assert merged[("scopegate_workers", frozenset())] == 1


class TestLines:
    def test_fields_come_first_in_every_line(self) -> None:
        """The worker's index and pid are put first in each decision-log line, keeping it one JSON object."""
        out: list[str] = []

        class Sink:
            def write(self, text: str) -> int:
                out.append(text)
                return len(text)

            def flush(self) -> None:
                pass

        writer = LineWriter(Sink(), fields='"worker":3,"pid":42,')  # type: ignore[arg-type]
        writer.write('{"time":"t","path":"/a"}\n')
        writer.close()
        assert json.loads("".join(out)) == {"worker": 3, "pid": 42, "time": "t", "path": "/a"}

    def test_a_line_printed_in_two_writes_leaves_in_one(self) -> None:
        """print() writes the text and its newline apart; another worker's line used to land between them
        ("worker 0 reloaded{...decision line...}"): the line is held until its newline has come."""
        read, write = os.pipe()
        os.set_blocking(read, False)
        stream = LineStream(write)
        try:
            print("scopegate: worker 0 reloaded", file=stream, flush=True)
            assert os.read(read, 4096) == b"scopegate: worker 0 reloaded\n"
            stream.write("part")
            with pytest.raises(BlockingIOError):
                os.read(read, 4096)
            stream.write(" one\npart two")
            assert os.read(read, 4096) == b"part one\n"
            stream.close()
            assert os.read(read, 4096) == b"part two"
        finally:
            os.close(read)
            os.close(write)

    def test_lines_of_two_processes_on_one_pipe_never_interleave(self, tmp_path: Path) -> None:
        """Two processes writing decision-log batches and long system-log-sized lines through ``LineStream`` to one
        pipe: every line read back is whole (a write of at most PIPE_BUF bytes is never split on a pipe)."""
        script = tmp_path / "writer.py"
        script.write_text(
            "import sys, threading\n"
            "from proxy.decisionlog import LineStream, LineWriter\n"
            "name = sys.argv[1]\n"
            "stream = LineStream(1)\n"
            "writer = LineWriter(stream, wake_bytes=8192)\n"
            "def other():\n"
            "    for i in range(300):\n"
            "        stream.write('{\"from\":\"' + name + '\",\"syslog\":' + str(i) + ',\"pad\":\"' + 'y' * 900 + '\"}\\n')\n"
            "thread = threading.Thread(target=other); thread.start()\n"
            "for i in range(3000):\n"
            "    writer.write('{\"from\":\"' + name + '\",\"i\":' + str(i) + ',\"pad\":\"' + 'x' * (i % 700) + '\"}\\n')\n"
            "thread.join(); writer.close()\n")
        read, write = os.pipe()
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
        procs = [subprocess.Popen([sys.executable, str(script), name], stdout=write, env=env) for name in "ab"]
        os.close(write)
        with os.fdopen(read, "rb") as pipe:
            data = pipe.read()
        assert all(p.wait(60) == 0 for p in procs)
        lines = data.decode().splitlines()
        parsed = [json.loads(line) for line in lines]  # a cut line would not parse
        assert len(parsed) == 2 * 3300
        assert PIPE_BUF >= 512


class TestChoosingN:
    def test_auto_is_the_affinity_mask_without_a_cpu_quota(self, tmp_path: Path) -> None:
        assert usable_cpus(tmp_path) == len(os.sched_getaffinity(0))  # no cgroup files: no quota
        assert resolve_workers("auto") == usable_cpus()
        assert resolve_workers(3) == 3

    @pytest.mark.parametrize(("files", "quota"), [
        ({"cpu.max": "max 100000\n"}, None),
        ({"cpu.max": "50000 100000\n"}, 0.5),
        ({"cpu.max": "150000 100000\n"}, 1.5),
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({"cpu/cpu.cfs_quota_us": "200000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 2.0),
        ({"cpu.max": "garbage\n"}, None),
    ])
    def test_a_cpu_quota_is_read_from_cgroup_v2_or_v1(self, tmp_path: Path, files: dict[str, str],
                                                      quota: float | None) -> None:
        for name, text in files.items():
            (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / name).write_text(text)
        assert cpu_quota(tmp_path) == quota

    def test_auto_follows_a_container_cpu_limit_rounded_up(self, tmp_path: Path) -> None:
        """A pod limited to 0.5 CPU on a many-core node sees every core in its affinity mask: ``auto`` must not
        start a worker per core on half a CPU's time."""
        (tmp_path / "cpu.max").write_text("50000 100000\n")
        assert usable_cpus(tmp_path) == 1
        (tmp_path / "cpu.max").write_text(f"{100000 * 64} 100000\n")
        assert usable_cpus(tmp_path) == len(os.sched_getaffinity(0))  # never more than the mask

    def test_cli_refuses_a_bad_count(self, capsys: pytest.CaptureFixture[str]) -> None:
        with pytest.raises(SystemExit):
            main(["run", "--workers", "0"])
        assert "workers" in capsys.readouterr().err

    def test_memory_store_is_refused_with_workers(self) -> None:
        with pytest.raises(ConfigError, match="workers"):
            parse_config("workers: 2\nstore: 'sqlite:///:memory:'\n", "t.yaml", {})
        assert parse_config("workers: auto\n", "t.yaml", {}).workers == "auto"


class TestLockFreeValues:
    def test_every_proxy_series_counts_without_a_lock_and_scrapes_the_same(self) -> None:
        """The proxy's counters and histograms use LoopValue (issue 11 item 3); should a prometheus_client release
        change the internals ``unlock`` swaps, this fails instead of the values silently keeping their locks."""
        registry = CollectorRegistry()
        metrics = ProxyMetrics(registry)
        metrics.prebuild(["read"])
        decision = Decision("id", "GET", 0.0, 0.0, route="read", decision=reasons.ALLOW,
                            reason=reasons.ALLOW_REASONS[0], status=200, duration=0.003, upstream_duration=0.002)
        for _ in range(3):
            metrics.record(decision)
            metrics.cache_hit.inc()
        child = metrics._requests[("read", reasons.ALLOW, reasons.ALLOW_REASONS[0])]
        assert isinstance(child._value, LoopValue)
        assert isinstance(metrics._durations["read"]._sum, LoopValue)
        assert all(isinstance(b, LoopValue) for b in metrics.upstream._buckets)
        assert isinstance(metrics.cache_hit._value, LoopValue)
        text = scrape(generate_latest(registry))
        allow = frozenset({("route", "read"), ("decision", reasons.ALLOW), ("reason", reasons.ALLOW_REASONS[0])})
        assert text[("scopegate_requests_total", allow)] == 3
        assert text[("scopegate_request_duration_seconds_count", frozenset({("route", "read")}))] == 3
        assert text[("scopegate_request_duration_seconds_bucket", frozenset({("route", "read"), ("le", "0.005")}))] == 3
        assert text[("scopegate_upstream_duration_seconds_sum", frozenset())] == pytest.approx(0.006)
        assert text[("scopegate_token_cache_total", frozenset({("result", "hit")}))] == 3


class TestWorkerSpec:
    def test_a_worker_keeps_the_runs_store_whatever_a_reload_names(self, tmp_path: Path) -> None:
        """A worker restarted after a reload that named another store uses the store the run started with, as
        the other workers do (the store changes at the next start)."""
        (tmp_path / "config.yaml").write_text("store: 'sqlite:///elsewhere.db'\nstoreTimeout: 5s\n")
        spec = WorkerSpec(0, {"proxy": 5}, str(tmp_path), "scopegate.yaml", 9, 1, "sqlite:///first.db", 1.0)
        cfg = spec.load_config()
        assert (cfg.store, cfg.store_timeout) == ("sqlite:///first.db", 1.0)
        assert WorkerSpec.from_environ() is None
        os.environ["SCOPEGATE_WORKER"] = spec.to_env()
        assert WorkerSpec.from_environ() == spec
        assert "SCOPEGATE_WORKER" not in os.environ  # not passed on to anything the worker starts


class TestRestarts:
    def test_the_delay_doubles_per_death_in_a_row_up_to_the_cap(self) -> None:
        assert [restart_delay(n) for n in range(8)] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
        assert restart_delay(10_000) == 30.0
