"""The decision log through the real process (issue 11 item 3): lines leave in batches from a writer thread,
and SIGTERM right after a burst still writes every one of them, whole and in order."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable

import httpx
import pytest

from tests.e2e.conftest import RunningScopegate, decision_lines
from tests.e2e.recording_upstream import RecordingUpstream

pytestmark = pytest.mark.e2e


def test_decision_log_sigterm_right_after_a_burst_loses_no_line(scopegate: Callable[..., RunningScopegate],
                                                               upstream: RecordingUpstream) -> None:
    """N requests, then SIGTERM at once (the last lines are still in the writer's buffer): N lines, in order,
    each whole JSON, as a container's unbuffered stdout (PYTHONUNBUFFERED=1) receives them."""
    gate = scopegate({"upstream": {"url": upstream.url}, "routes": [{"name": "public", "path": "/", "public": True}]},
                     env={"PYTHONUNBUFFERED": "1"})
    count = 400
    with httpx.Client(base_url=gate.proxy) as client:
        for i in range(count):
            assert client.get(f"/items/{i}").status_code == 200
    gate.signal(signal.SIGTERM)
    assert gate.process.wait(30) == 0
    lines = decision_lines(gate)
    assert [line["path"] for line in lines] == [f"/items/{i}" for i in range(count)]
    assert all(line["status"] == 200 and line["decision"] == "allow" for line in lines)


def test_decision_log_sigterm_under_load_writes_a_line_for_every_answer(scopegate: Callable[..., RunningScopegate],
                                                                       upstream: RecordingUpstream) -> None:
    """SIGTERM while four clients keep sending: every request that got its answer, including those drained after
    the signal, has its line, whole, once."""
    gate = scopegate({"upstream": {"url": upstream.url}, "routes": [{"name": "public", "path": "/", "public": True}]},
                     env={"PYTHONUNBUFFERED": "1"})
    answered: list[str] = []
    stop = threading.Event()

    def client(name: str) -> None:
        with httpx.Client(base_url=gate.proxy, timeout=10) as http:
            for i in range(100_000):
                if stop.is_set():
                    return
                path = f"/{name}/{i}"
                try:
                    if http.get(path).status_code == 200:
                        answered.append(path)
                except httpx.HTTPError:
                    return  # the listener closed

    threads = [threading.Thread(target=client, args=(f"c{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)
    gate.signal(signal.SIGTERM)
    assert gate.process.wait(30) == 0
    stop.set()
    for thread in threads:
        thread.join(10)
    paths = [line["path"] for line in decision_lines(gate)]
    assert len(answered) > 100
    assert len(paths) == len(set(paths))
    missing = set(answered) - set(paths)
    assert not missing, f"{len(missing)} answered requests without a line, e.g. {sorted(missing)[:3]}"

