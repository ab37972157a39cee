"""One JSON line per proxied request: the decision log (DESIGN §7, issue 5 step 11).

Never a token: the record holds only the fields below. Every client-controlled value (path, subject,
client id) is length-capped and escaped by ``json.dumps`` with ``ensure_ascii``, so a CR, LF, ANSI escape
or quote in it cannot forge a second line or a field (uvicorn CVE-2020-7694, Envoy CVE-2024-45808).
"""

from __future__ import annotations

import json
import time
from typing import TextIO

from proxy.decision import Decision

_CAP = 256
_PATH_CAP = 1024


def _cap(value: str, limit: int = _CAP) -> str:
    return value if len(value) <= limit else value[:limit] + "…"


class DecisionLog:
    def __init__(self, stream: TextIO | None) -> None:
        self.stream = stream

    def record(self, decision: Decision) -> None:
        if self.stream is None:
            return
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(decision.time)) + f".{int(decision.time % 1 * 1000):03d}Z",
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
            "durationMs": round(decision.duration * 1000, 3),
            "upstreamMs": None if decision.upstream_duration is None else round(decision.upstream_duration * 1000, 3),
        }
        self.stream.write(json.dumps(entry, separators=(",", ":")) + "\n")
