"""One JSON line per proxied request: the decision log (DESIGN §7, issue 5 step 11).

Never a token: the record holds only the fields below. Every client-controlled value (path, subject,
client id) is length-capped and escaped exactly as ``json.dumps`` with ``ensure_ascii`` escapes it, so a
CR, LF, ANSI escape or quote in it cannot forge a second line or a field (uvicorn CVE-2020-7694, Envoy
CVE-2024-45808).

The line is written on every request, so it is built without ``json.dumps`` in the common case: when every
string field is printable ASCII without ``"`` or ``\\`` (one regex over all of them), JSON escaping is the
identity and the line is formatted directly; otherwise the whole entry goes through ``json.dumps``. Both
paths produce the same bytes (tests/proxy/test_decisionlog.py checks it against ``json.dumps``).

``scopegate run`` writes the lines through a ``LineWriter``: a writer thread that batches them into whole-line
writes, instead of one write syscall per request (containers set ``PYTHONUNBUFFERED=1``; issue 11 item 3).
"""

from __future__ import annotations

import atexit
import collections
import json
import math
import os
import re
import select
import sys
import threading
import time
from typing import Any, TextIO

from proxy.decision import Decision

_CAP = 256
_PATH_CAP = 1024
_VERBATIM = re.compile(r"[ !#-\[\]-~]*")
"""Strings JSON escaping leaves unchanged: printable ASCII except ``"`` (0x22) and ``\\`` (0x5C)."""


def _cap(value: str, limit: int = _CAP) -> str:
    return value if len(value) <= limit else value[:limit] + "…"


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


class DecisionLog:
    def __init__(self, stream: TextIO | None) -> None:
        self.stream = stream
        self._second = -1
        self._stamp = ""
        """``time.strftime`` of ``_second``: the timestamp changes once a second, not once a request."""

    def _time(self, at: float) -> str:
        second = math.floor(at)
        if second != self._second:
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(at))
            self._second = second
        return self._stamp + f".{int(at % 1 * 1000):03d}Z"

    def entry(self, decision: Decision) -> dict[str, Any]:
        """The record of one request, as the JSON object the log line holds."""
        return {
            "time": self._time(decision.time),
            "requestId": decision.request_id,
            "method": decision.method,
            "path": _cap(decision.path, _PATH_CAP),
            "route": decision.route,
            "authServer": decision.as_id,
            "clientId": _cap(decision.client_id),
            "subject": _cap(decision.subject),
            "decision": decision.decision,
            "reason": decision.reason,
            "status": decision.status,
            "tokenCache": decision.token_cache,
            "durationMs": _ms(decision.duration),
            "upstreamMs": _ms(decision.upstream_duration),
        }

    def line(self, decision: Decision) -> str:
        """The log line of one request (with its newline): ``json.dumps(entry, separators=(",", ":"))``."""
        stamp = self._time(decision.time)
        path = decision.path
        client_id = decision.client_id
        subject = decision.subject
        if len(path) > _PATH_CAP or len(client_id) > _CAP or len(subject) > _CAP:
            return json.dumps(self.entry(decision), separators=(",", ":")) + "\n"
        request_id, method, route, as_id = decision.request_id, decision.method, decision.route, decision.as_id
        verdict, reason, cache = decision.decision, decision.reason, decision.token_cache
        # One check for every string: the separator "|" is itself verbatim, so it cannot hide an unsafe byte.
        if not _VERBATIM.fullmatch(f"{request_id}|{method}|{path}|{route}|{as_id}|{client_id}|{subject}|"
                                   f"{verdict}|{reason}|{cache}"):
            return json.dumps(self.entry(decision), separators=(",", ":")) + "\n"
        upstream = decision.upstream_duration
        upstream_ms = "null" if upstream is None else repr(round(upstream * 1000, 3))
        return (f'{{"time":"{stamp}","requestId":"{request_id}","method":"{method}","path":"{path}",'
                f'"route":"{route}","authServer":"{as_id}","clientId":"{client_id}","subject":"{subject}",'
                f'"decision":"{verdict}","reason":"{reason}","status":{int(decision.status)},'
                f'"tokenCache":"{cache}","durationMs":{round(decision.duration * 1000, 3)!r},'
                f'"upstreamMs":{upstream_ms}}}\n')

    def record(self, decision: Decision) -> None:
        if self.stream is None:
            return
        self.stream.write(self.line(decision))


PIPE_BUF = getattr(select, "PIPE_BUF", 4096)
"""The largest write a pipe keeps whole when several processes write to it (POSIX: at least 512; Linux 4096)."""


class LineWriter:
    """A ``TextIO``-like sink for whole lines, written to ``stream`` by a thread of its own.

    ``write`` only appends to a deque, so the event loop never waits for the log's reader (except past
    ``max_pending`` lines, when it waits as a plain blocking write would, rather than drop or grow without
    bound). The thread wakes every ``interval`` seconds, or as soon as ``wake_bytes`` are pending, and writes
    what is pending in writes of at most ``PIPE_BUF`` bytes made of whole lines (one longer line is one write
    of its own): a pipe shared with other writers (the system log, other workers) never gets a line cut by
    another. ``close`` (at SIGTERM, after the in-flight requests ended) writes everything before returning.

    Each ``write`` must be whole lines, as ``DecisionLog.record`` writes them.
    """

    def __init__(self, stream: TextIO, *, interval: float = 0.1, wake_bytes: int = 64 * 1024,
                 chunk_bytes: int = PIPE_BUF, max_pending: int = 100_000, fields: str = "") -> None:
        self.stream = stream
        self.fields = fields
        """JSON members (``"worker":1,"pid":42,``) put first in every line, by the writer thread, off the loop."""
        self.interval = interval
        self.wake_bytes = wake_bytes
        self.chunk_bytes = chunk_bytes
        self.max_pending = max_pending
        self._lines: collections.deque[str] = collections.deque()
        self._unsignalled = 0
        """Bytes appended since the thread was last woken (the loop's side only)."""
        self._queued = 0
        """Lines appended (written by the loop's side only)."""
        self._written = 0
        """Lines taken by the writer (written under ``_lock`` only)."""
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._closed = False
        self.errors = 0
        self._thread = threading.Thread(target=self._run, name="scopegate-decision-log", daemon=True)
        self._thread.start()
        atexit.register(self.close)  # an exit that skips the orderly stop still writes what is pending

    def write(self, text: str) -> int:
        if self._closed:  # after close, as a plain stream would (nothing is dropped, nothing waits)
            self._emit(text)
            return len(text)
        self._lines.append(text)
        self._queued += 1
        self._unsignalled += len(text)
        if self._unsignalled >= self.wake_bytes:
            self._unsignalled = 0
            self._wake.set()
            if self._queued - self._written > self.max_pending:
                self.flush()  # the reader is behind by max_pending lines: wait, as a blocking write would
        return len(text)

    def flush(self) -> None:
        """Write everything pending now, from the calling thread."""
        with self._lock:
            self._drain()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._wake.set()
        self._thread.join()
        self.flush()
        atexit.unregister(self.close)

    def _run(self) -> None:
        while not self._closed:
            self._wake.wait(self.interval)
            self._wake.clear()
            with self._lock:
                self._drain()

    def _drain(self) -> None:
        lines = self._lines
        chunk: list[str] = []
        size = 0
        limit = self.chunk_bytes
        fields = self.fields
        while lines:
            line = lines.popleft()
            self._written += 1
            if fields and line.startswith("{"):
                line = "{" + fields + line[1:]
            if size and size + len(line) > limit:
                self._emit_lines(chunk)
                chunk, size = [], 0
            chunk.append(line)
            size += len(line)
        if chunk:
            self._emit_lines(chunk)

    def _emit_lines(self, chunk: list[str]) -> None:
        text = "".join(chunk)
        # Sizes were counted in characters: only a non-ASCII line (a cut value's "…") can make the bytes more.
        if len(chunk) > 1 and not text.isascii() and len(text.encode()) > self.chunk_bytes:
            half = len(chunk) // 2
            self._emit_lines(chunk[:half])
            self._emit_lines(chunk[half:])
            return
        self._emit(text)

    def _emit(self, text: str) -> None:
        try:
            # One write and a flush: unbuffered (PYTHONUNBUFFERED) that is one syscall; buffered, the buffer
            # (8 KiB, empty after the previous flush) holds the whole chunk, and the flush is one syscall.
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError) as exc:  # a closed or broken stdout: say so once, keep serving
            self.errors += 1
            if self.errors == 1:
                print(f"scopegate: cannot write the decision log: {exc}", file=sys.stderr, flush=True)


class LineStream:
    """A ``TextIO``-like stdout or stderr for the processes of ``scopegate run --workers N``: whole lines, each
    ``write`` of them one ``os.write`` (looping only on a partial write), never split or merged by a buffer.

    The workers and their supervisor share one stdout and stderr. A buffered ``sys.stdout`` flushes where its
    buffer fills, which can be mid-line, and two threads writing it (the decision log's and the system log's) can
    make one flush larger than ``PIPE_BUF``; ``print(..., file=sys.stderr)`` writes the text and its newline in
    two writes, between which another worker's line lands (seen: "worker 0 reloaded{...decision line...}").
    Here a line is held until its newline has come, and what is complete is written at once; the decision log's
    writes are at most ``PIPE_BUF`` bytes of whole lines. So no process's line is cut by another's: on a pipe,
    POSIX keeps such writes whole; on a file, every process writes through the one open file description it
    inherited, whose offset Linux moves atomically per write.
    """

    encoding = "utf-8"
    errors = "backslashreplace"

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._lock = threading.Lock()
        self._partial = ""

    def write(self, text: str) -> int:
        size = len(text)
        with self._lock:
            if self._partial or not text.endswith("\n"):
                text = self._partial + text
                end = text.rfind("\n") + 1
                self._partial = text[end:]
                text = text[:end]
            if text:
                self._write(text)
        return size

    def _write(self, text: str) -> None:
        data = memoryview(text.encode("utf-8", "backslashreplace"))
        while data:
            data = data[os.write(self.fd, data):]

    def flush(self) -> None:
        """Complete lines are already written; a line without its newline yet waits for it."""

    def close(self) -> None:
        with self._lock:
            if self._partial:
                self._write(self._partial)
                self._partial = ""

    def fileno(self) -> int:
        return self.fd

    def isatty(self) -> bool:
        return os.isatty(self.fd)

    def writable(self) -> bool:
        return True
