"""One JSON line per proxied request: the decision log (DESIGN §7, issue 5 step 11).

Never a token: the record holds only the fields below. Every client-controlled value (path, subject,
client id) is length-capped and escaped exactly as ``json.dumps`` with ``ensure_ascii`` escapes it, so a
CR, LF, ANSI escape or quote in it cannot forge a second line or a field (uvicorn CVE-2020-7694, Envoy
CVE-2024-45808).

The line is written on every request, so it is built without ``json.dumps`` in the common case: when every
string field is printable ASCII without ``"`` or ``\\`` (one regex over all of them), JSON escaping is the
identity and the line is formatted directly; otherwise the whole entry goes through ``json.dumps``. Both
paths produce the same bytes (tests/proxy/test_decisionlog.py checks it against ``json.dumps``).
"""

from __future__ import annotations

import json
import math
import re
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
