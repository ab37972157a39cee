"""Per-request cost of the decision log (issue 11 item 3; not part of the test suite).

Writes N decision lines to an unbuffered stdout-like stream (``PYTHONUNBUFFERED=1``, as the image sets, so one
write syscall per ``write``) over a pipe that ``cat`` drains to /dev/null, or to a file, two ways:

  direct   ``DecisionLog(stream).record``: one write per line (scopegate before issue 11);
  batched  ``DecisionLog(LineWriter(stream)).record``: the line is appended, a thread writes batches.

It reports, per line, the time the caller (the event loop) spends in ``record`` (wall clock, and its own thread's
CPU), and the CPU time of the whole process (caller and writer thread, including the final ``close``): medians
of interleaved rounds. The line itself (``DecisionLog.line``) is built the same way in both.

    python3 bench/decision_log_cost.py --lines 100000 --rounds 5
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from proxy.decision import Decision
from proxy.decisionlog import DecisionLog, LineWriter


def decisions(count: int) -> list[Decision]:
    return [Decision(f"0a1b2c3d-{i:x}", "GET", 0.0, 1_700_000_000.0 + i / 1000, path=f"/api/items/{i}",
                     route="items", as_id="bench", client_id="bench", subject="bench", decision="allow", reason="ok",
                     status=200, token_cache="hit", duration=0.0012, upstream_duration=0.0008)
            for i in range(count)]


def unbuffered(fd: int) -> io.TextIOWrapper:
    """What ``sys.stdout`` is under PYTHONUNBUFFERED=1: text over a raw FileIO, write_through."""
    return io.TextIOWrapper(io.FileIO(fd, "w", closefd=False), encoding="utf-8", write_through=True)


def once(kind: str, sink: str, items: list[Decision]) -> tuple[float, float, float]:
    reader = None
    if sink == "pipe":
        read_fd, fd = os.pipe()
        reader = subprocess.Popen(["cat"], stdin=read_fd, stdout=subprocess.DEVNULL)
        os.close(read_fd)
    else:
        handle, name = tempfile.mkstemp(prefix="scopegate-declog-")
        fd = handle
        os.unlink(name)
    stream = unbuffered(fd)
    writer = LineWriter(stream) if kind == "batched" else None
    log = DecisionLog(writer if writer is not None else stream)  # type: ignore[arg-type]
    cpu = time.process_time()
    caller_cpu = time.thread_time()
    started = time.perf_counter()
    for decision in items:
        log.record(decision)
    caller = time.perf_counter() - started
    caller_cpu = time.thread_time() - caller_cpu
    if writer is not None:
        writer.close()
    cpu = time.process_time() - cpu
    os.close(fd)
    if reader is not None:
        reader.wait()
    return caller / len(items) * 1e6, caller_cpu / len(items) * 1e6, cpu / len(items) * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    items = decisions(args.lines)
    figures: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
    for _ in range(args.rounds):
        for sink in ("pipe", "file"):
            for kind in ("direct", "batched"):
                figures.setdefault((sink, kind), []).append(once(kind, sink, items))
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {args.lines:,} lines x {args.rounds} rounds, "
          f"load average {os.getloadavg()[0]:.1f}")
    print("| sink | writes | caller wall µs/line | caller CPU µs/line | process CPU µs/line |")
    print("|---|---|---:|---:|---:|")
    for (sink, kind), values in figures.items():
        print(f"| {sink} | {kind} | " + " | ".join(f"{statistics.median(v[i] for v in values):.2f}" for i in range(3))
              + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
