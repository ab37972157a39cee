"""The decision log line: exactly the JSON ``json.dumps`` would write, one line, whatever the client sent."""

from __future__ import annotations

import io
import json
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.decision import Decision
from proxy.decisionlog import PIPE_BUF, DecisionLog, LineWriter

_ASCII = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)
_ANY = st.text(max_size=40)
_TEXT = st.one_of(_ASCII, _ANY)


def reference(d: Decision) -> str:
    """The line as the first implementation wrote it, with ``json.dumps`` over the whole entry."""

    def cap(value: str, limit: int = 256) -> str:
        return value if len(value) <= limit else value[:limit] + "…"

    entry = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(d.time)) + f".{int(d.time % 1 * 1000):03d}Z",
        "requestId": d.request_id, "method": d.method, "path": cap(d.path, 1024), "route": d.route,
        "authServer": d.as_id, "clientId": cap(d.client_id), "subject": cap(d.subject), "decision": d.decision,
        "reason": d.reason, "status": d.status, "tokenCache": d.token_cache,
        "durationMs": round(d.duration * 1000, 3),
        "upstreamMs": None if d.upstream_duration is None else round(d.upstream_duration * 1000, 3),
    }
    return json.dumps(entry, separators=(",", ":")) + "\n"


decisions = st.builds(
    Decision,
    request_id=st.from_regex(r"[0-9a-f]{8}-[0-9a-f]{1,6}", fullmatch=True),
    method=st.sampled_from(["GET", "POST", "OPTIONS"]),
    started=st.just(0.0),
    time=st.floats(min_value=1.6e9, max_value=2.2e9),
    path=st.one_of(_TEXT, st.text(min_size=1020, max_size=1030)),
    route=_TEXT,
    as_id=_TEXT,
    client_id=st.one_of(_TEXT, st.text(alphabet="ab\"", min_size=250, max_size=260)),
    subject=_TEXT,
    decision=st.sampled_from(["allow", "deny"]),
    reason=st.sampled_from(["ok", "public", "bad_signature"]),
    status=st.sampled_from([200, 401, 403, 502]),
    token_cache=st.sampled_from(["", "hit", "miss"]),
    duration=st.floats(min_value=0, max_value=100, allow_nan=False),
    upstream_duration=st.one_of(st.none(), st.floats(min_value=0, max_value=100, allow_nan=False)),
)


@settings(max_examples=400)
@given(decisions)
def test_line_is_what_json_dumps_writes(decision: Decision) -> None:
    """Whatever the fields hold, the line equals json.dumps of the entry: the fast path changes no byte."""
    assert DecisionLog(None).line(decision) == reference(decision)


@given(decisions, st.sampled_from(['"', "\\", "\r\n", "\x1b[31m", "\u2028", "\x00"]))
def test_client_values_cannot_forge_a_line_or_a_field(decision: Decision, nasty: str) -> None:
    """A quote, backslash, CR/LF, escape or non-ASCII character in a client value stays inside its JSON string."""
    decision.path = "/a" + nasty + '","decision":"allow'
    decision.subject = nasty + "x"
    stream = io.StringIO()
    DecisionLog(stream).record(decision)
    text = stream.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n") and text.isascii()
    parsed = json.loads(text)
    assert parsed["path"] == decision.path[:1024] and parsed["decision"] == decision.decision


def test_timestamp_follows_the_clock_across_seconds() -> None:
    """The cached second is refreshed when the clock moves to another second."""
    log = DecisionLog(None)
    first = Decision("r-1", "GET", 0.0, 1_700_000_000.250)
    second = Decision("r-2", "GET", 0.0, 1_700_000_001.5)
    assert json.loads(log.line(first))["time"] == "2023-11-14T22:13:20.250Z"
    assert json.loads(log.line(second))["time"] == "2023-11-14T22:13:21.500Z"


# ---------------------------------------------------------------------------------------------- LineWriter (issue 11)


class CountingStream(io.StringIO):
    """A stream that records each write (what one syscall would carry) and when it happened."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []
        self.times: list[float] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        self.times.append(time.monotonic())
        return super().write(text)


def burst(count: int) -> list[str]:
    log = DecisionLog(None)
    return [log.line(Decision(f"0a1b2c3d-{i:x}", "GET", 0.0, 1_700_000_000.0 + i / 1000, path=f"/orders/{i}",
                              route="orders-read", as_id="orders", client_id="reporting", subject="alice@example.com",
                              decision="allow", reason="ok", status=200, token_cache="hit", duration=0.001))
            for i in range(count)]


def test_decision_log_burst_is_few_whole_line_writes_in_order() -> None:
    """5,000 lines written at once leave in writes of whole lines, each at most PIPE_BUF bytes (a pipe keeps such a
    write whole among other writers), in order, nothing lost: ~300 writes, not 5,000."""
    stream = CountingStream()
    writer = LineWriter(stream, interval=60)  # only size and close flush here
    lines = burst(5000)
    for line in lines:
        writer.write(line)
    writer.close()
    assert stream.getvalue() == "".join(lines)
    assert all(w.endswith("\n") and len(w.encode()) <= PIPE_BUF for w in stream.writes)
    total = sum(len(line) for line in lines)
    assert len(stream.writes) <= total // (PIPE_BUF - len(lines[0])) + 2, len(stream.writes)


def test_decision_log_long_line_is_one_write_of_its_own() -> None:
    stream = CountingStream()
    writer = LineWriter(stream, interval=60)
    long = '{"path":"' + "a" * (2 * PIPE_BUF) + '"}\n'
    for line in ("{}\n", long, "{}\n"):
        writer.write(line)
    writer.close()
    assert stream.writes == ["{}\n", long, "{}\n"]


def test_decision_log_flushes_within_100ms_without_more_traffic() -> None:
    """One line and then silence: it is written by the timer, ~100 ms later, not at the next request or at exit."""
    stream = CountingStream()
    writer = LineWriter(stream)
    try:
        written_at = time.monotonic()
        writer.write("{}\n")
        deadline = written_at + 2.0
        while not stream.writes and time.monotonic() < deadline:
            time.sleep(0.005)
        assert stream.writes == ["{}\n"]
        assert stream.times[0] - written_at <= 0.1 + 0.1  # the interval, and slack for a loaded CI machine
    finally:
        writer.close()


def test_decision_log_write_never_waits_for_a_slow_reader() -> None:
    """The loop only appends: a stream that takes 20 ms per write does not slow ``write`` down."""

    class Slow(CountingStream):
        def write(self, text: str) -> int:
            time.sleep(0.02)
            return super().write(text)

    stream = Slow()
    writer = LineWriter(stream, interval=0.01)
    lines = burst(500)  # ~40 writes: 0.8 s for the writer
    started = time.perf_counter()
    for line in lines:
        writer.write(line)
    elapsed = time.perf_counter() - started
    writer.close()
    assert elapsed < 0.1, elapsed  # a blocking write per line would take ~10 s
    assert stream.getvalue() == "".join(lines)


def test_decision_log_broken_stream_is_reported_once_and_serving_continues(capsys: pytest.CaptureFixture[str]) -> None:
    class Broken(io.StringIO):
        def write(self, text: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

    writer = LineWriter(Broken(), interval=60)
    for line in burst(3):
        writer.write(line)
        writer.flush()
    writer.close()
    assert writer.errors == 3
    assert capsys.readouterr().err.count("cannot write the decision log") == 1
