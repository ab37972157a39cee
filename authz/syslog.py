"""The system log: Okta's LogEvent shape (spec §6.1), kept in the store and written to stdout.

Every event is appended inside the caller's transaction (``StoreTx.append_log``), so that an issued
token and the event that records it are committed together or not at all (DESIGN §5), and is written
as one JSON line to a stream (stdout by default) for log shippers.

Issue 3: "Nothing in the log holds a secret or a token value." ``redact_secrets`` enforces it on every
event that ``SystemLog.record`` writes, whatever the caller put in it: values under secret-bearing keys
are replaced, and JWT-shaped strings anywhere are cut out.
"""

from __future__ import annotations

import json
import re
import secrets
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, TextIO

from cachetools import LRUCache

from authz.store.base import StoreTx
from config.schema import CoreSettings

SEVERITIES = frozenset({"DEBUG", "INFO", "WARN", "ERROR"})
"""Spec §6.1: "severity ∈ DEBUG, INFO, WARN, ERROR"."""

RESULTS = frozenset({"SUCCESS", "FAILURE", "SKIPPED", "ALLOW", "DENY", "CHALLENGE", "UNKNOWN"})
"""Spec §6.1: the values of ``outcome.result``."""

REASON_MAX = 255
"""Spec §6.1: "outcome.reason is up to 255 characters"."""

REDACTED = "[REDACTED]"

FIELD_MAX = 1024
"""Issue 8 item 7: the longest string an event keeps (Okta's ``scope`` parameter is at most 1024 characters,
spec §7); a longer one is cut and ends with ``TRUNCATED``. Applies to every string of every event, wherever
the caller put it: client-controlled values (scope, user agent, client_id, username, redirect_uri) reach
events through many paths."""
LIST_MAX = 100
"""The most items an event keeps in one list; more end with ``TRUNCATED_ITEMS``."""
TRUNCATED = "…[truncated {} chars]"
TRUNCATED_ITEMS = "…[truncated {} items]"

# Keys whose values are credentials or token values, compared after lowering and dropping '_' and '-'
# (so ``client_secret``, ``clientSecret`` and ``client-secret`` are one key).
_SECRET_KEYS = frozenset(
    k.replace("_", "")
    for k in (
        "client_secret", "secret", "password", "passwd", "new_password", "old_password",
        "access_token", "refresh_token", "id_token", "token", "code", "device_code", "user_code",
        "code_verifier", "client_assertion", "assertion", "id_token_hint", "subject_token",
        "actor_token", "device_secret", "private_key", "private_pem", "secret_hash", "authorization",
        "admin_token", "api_token", "ssws",
    )
)

# A compact JWS/JWE (RFC 7515 §7.1, RFC 7516 §7.1): a base64url JSON header, which always starts with "eyJ"
# ('{"'), then two (JWS) or four (JWE) more dot-separated base64url segments. The scan works on maximal runs
# of base64url characters and dots, found by one greedy character class (linear: no alternation, nothing to
# backtrack into). Issue 8 item 4: the former single regex, eyJ[...]{2,}\.[...]*\.[...]*, retried from
# every "eyJ" of a dot-less run and rescanned the run each time: O(n²), holding the GIL (a 120 KiB scope
# stalled every listener for 3.6 s).
_DOTTED_RUN = re.compile(r"[A-Za-z0-9_.-]+")
_DOTTED_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-"
_JWT_MARK = "eyJ"

SYSTEM_ACTOR: dict[str, Any] = {
    "id": "scopegate",
    "type": "SystemPrincipal",
    "alternateId": "system@scopegate",
    "displayName": "scopegate",
    "detailEntry": None,
}


class SecretInLogError(ValueError):
    """An event carried a secret or token value (raised by ``check_no_secrets``)."""


def format_published(now: float) -> str:
    """RFC 3339 UTC with milliseconds and ``Z``, as Okta writes ``published`` (spec §6.1)."""
    dt = datetime.fromtimestamp(now, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def parse_published(value: str) -> float:
    """The epoch seconds of an RFC 3339 timestamp (``Z`` or an offset; naive times are UTC)."""
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    dt = datetime.fromisoformat(text)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def jwt_spans(text: str) -> list[tuple[int, int]]:
    """The ``(start, end)`` of every JWT-shaped substring of ``text``, left to right; linear in ``len(text)``.

    A span starts at the first "eyJ" of a segment that has at least two more base64url characters after it
    and is followed by at least two more segments in the same run; it takes the rest of that segment and the
    next two segments, or the next four when there are (a JWE). Scanning resumes after the span.
    """
    if _JWT_MARK not in text:
        return []
    spans: list[tuple[int, int]] = []
    for run in _DOTTED_RUN.finditer(text):
        chunk = run.group()
        if _JWT_MARK not in chunk or chunk.count(".") < 2:
            continue
        segments = chunk.split(".")
        starts: list[int] = []
        offset = 0
        for segment in segments:
            starts.append(offset)
            offset += len(segment) + 1
        i = 0
        while i + 2 < len(segments):
            segment = segments[i]
            at = segment.find(_JWT_MARK)
            if at < 0 or len(segment) - at < len(_JWT_MARK) + 2:
                i += 1
                continue
            last = i + 4 if i + 4 < len(segments) else i + 2
            spans.append((run.start() + starts[i] + at, run.start() + starts[last] + len(segments[last])))
            i = last + 1
    return spans


def has_jwt(text: str) -> bool:
    """True if ``text`` holds a JWT-shaped substring (see ``jwt_spans``)."""
    return bool(jwt_spans(text))


def scrub_jwts(text: str) -> str:
    """``text`` with every JWT-shaped substring replaced by ``[REDACTED]``."""
    spans = jwt_spans(text)
    if not spans:
        return text
    parts: list[str] = []
    last = 0
    for start, end in spans:
        parts += [text[last:start], REDACTED]
        last = end
    parts.append(text[last:])
    return "".join(parts)


def _is_secret_key(key: object) -> bool:
    return isinstance(key, str) and key.lower().replace("_", "").replace("-", "") in _SECRET_KEYS


def _is_secret_value(key: object, item: Any) -> bool:
    """A credential is a scalar under a secret-bearing key. Objects under such keys are configuration
    (a rule's ``actions.token`` lifetimes, an app's ``refreshToken`` rotation settings) and are searched
    inside instead."""
    if not _is_secret_key(key) or item is None or isinstance(item, (bool, Mapping, list, tuple)):
        return False
    return item not in ("", REDACTED)


def _secret_paths(value: Any, path: str, found: list[str]) -> None:
    if isinstance(value, Mapping):
        for key, item in value.items():
            sub = f"{path}.{key}" if path else str(key)
            if _is_secret_value(key, item):
                found.append(sub)
            else:
                _secret_paths(item, sub, found)
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _secret_paths(item, f"{path}[{i}]", found)
    elif isinstance(value, str) and has_jwt(value):
        found.append(path)


_SECRET_KEY_MEMO: dict[str, bool] = {}
_SECRET_KEY_MEMO_MAX = 4096
"""Event keys are mostly the code's own field names; the memo stops growing at this size, so keys a client
chose (a config document's, in ``changeDetails``) cannot grow it without bound."""


def _is_secret_key_memo(key: str) -> bool:
    known = _SECRET_KEY_MEMO.get(key)
    if known is None:
        known = _is_secret_key(key)
        if len(_SECRET_KEY_MEMO) < _SECRET_KEY_MEMO_MAX:
            _SECRET_KEY_MEMO[key] = known
    return known


def _is_clean(value: Any) -> bool:
    """True when ``value`` holds no secret (``find_secrets`` would find nothing). One walk by exact type, with
    no path strings built and no ABC ``isinstance`` on the common JSON types: this runs for every event, in
    the token endpoint's transaction (issue 11: ``find_secrets`` cost more than the RS256 signature). Anything
    it does not recognise goes to ``find_secrets``, which decides."""
    kind = type(value)
    if kind is str:
        return _JWT_MARK not in value or not jwt_spans(value)
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str or (_is_secret_key_memo(key) and _is_secret_value(key, item)):
                return not find_secrets({key: item})
            if type(item) in _PLAIN:
                continue
            if not _is_clean(item):
                return False
        return True
    if kind is list or kind is tuple:
        for item in value:  # noqa: SIM110 (a loop: a generator costs a frame per item on this path)
            if type(item) not in _PLAIN and not _is_clean(item):
                return False
        return True
    if kind in _PLAIN:
        return True
    return not find_secrets({"value": value})


_PLAIN = frozenset({type(None), int, float, bool})
"""Scalars that can be neither a credential by shape nor too long to keep."""


def _within_bounds(value: Any) -> bool:
    """True when ``bound_strings`` would change nothing (no string over ``FIELD_MAX``, no list over ``LIST_MAX``)."""
    kind = type(value)
    if kind is str:
        return len(value) <= FIELD_MAX
    if kind is dict:
        items = value.values()
    elif kind is list or kind is tuple:
        if len(value) > LIST_MAX:
            return False
        items = value
    else:
        return kind in _PLAIN
    for item in items:
        kind = type(item)
        if kind is str:
            if len(item) > FIELD_MAX:
                return False
        elif kind not in _PLAIN and not _within_bounds(item):
            return False
    return True


def find_secrets(event: Mapping[str, Any]) -> list[str]:
    """Dotted paths of every secret-bearing value in ``event`` (empty when the event is clean)."""
    found: list[str] = []
    _secret_paths(event, "", found)
    return found


def check_no_secrets(event: Mapping[str, Any]) -> None:
    """Raise ``SecretInLogError`` naming the paths (never the values) if the event holds a secret."""
    found = find_secrets(event)
    if found:
        raise SecretInLogError("secret-bearing values in a log event at: " + ", ".join(found))


def _redact(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {
            key: (REDACTED if _is_secret_value(key, item) else _redact(item))
            for key, item in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [_redact(item) for item in value]
    if isinstance(value, str):
        return scrub_jwts(value)
    return value


def redact_secrets(event: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``event`` with secret-bearing values replaced by ``[REDACTED]``."""
    result = _redact(event)
    assert isinstance(result, dict)
    return result


def _actor(actor: Mapping[str, Any] | None) -> dict[str, Any]:
    if actor is None:
        return dict(SYSTEM_ACTOR)
    return {
        "id": actor.get("id"),
        "type": actor.get("type", "User"),
        "alternateId": actor.get("alternateId"),
        "displayName": actor.get("displayName"),
        "detailEntry": actor.get("detailEntry"),
    }


def _client(client: Mapping[str, Any] | None) -> dict[str, Any]:
    client = client or {}
    user_agent = client.get("userAgent")
    if isinstance(user_agent, str):
        user_agent = {"rawUserAgent": user_agent, "os": None, "browser": None}
    return {
        # Spec §6.1: "client.id is the OAuth client_id for OAuth requests".
        "id": client.get("id"),
        "userAgent": user_agent or {"rawUserAgent": None, "os": None, "browser": None},
        "zone": client.get("zone", "null"),
        "device": client.get("device"),
        "ipAddress": client.get("ipAddress"),
        "geographicalContext": client.get("geographicalContext"),
    }


def _target(target: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": target.get("id"),
        "type": target.get("type"),
        "alternateId": target.get("alternateId"),
        "displayName": target.get("displayName"),
        "detailEntry": target.get("detailEntry"),
    }
    if "changeDetails" in target:
        out["changeDetails"] = target["changeDetails"]
    return out


def make_event(
    event_type: str,
    *,
    now: float,
    result: str = "SUCCESS",
    reason: str | None = None,
    display_message: str = "",
    severity: str = "INFO",
    actor: dict[str, Any] | None = None,
    client: dict[str, Any] | None = None,
    targets: list[dict[str, Any]] | None = None,
    debug_data: dict[str, Any] | None = None,
    transaction_id: str | None = None,
) -> dict[str, Any]:
    """A LogEvent in Okta's shape (spec §6.1). ``actor`` None is scopegate itself (a system principal)."""
    if severity not in SEVERITIES:
        raise ValueError(f"severity {severity!r} is not one of {sorted(SEVERITIES)}")
    if result not in RESULTS:
        raise ValueError(f"outcome result {result!r} is not one of {sorted(RESULTS)}")
    client_part = _client(client)
    ip = client_part["ipAddress"]
    return {
        "uuid": str(uuid.uuid4()),
        "published": format_published(now),
        "eventType": event_type,
        "version": "0",
        "severity": severity,
        "legacyEventType": None,
        "displayMessage": display_message,
        "actor": _actor(actor),
        "client": client_part,
        "outcome": {"result": result, "reason": reason[:REASON_MAX] if reason is not None else None},
        "target": [_target(t) for t in targets or ()],
        "transaction": {"type": "WEB", "id": transaction_id or secrets.token_urlsafe(20), "detail": {}},
        "debugContext": {"debugData": dict(debug_data or {})},
        "authenticationContext": {"authenticationStep": 0, "externalSessionId": None},
        "securityContext": {},
        "request": {"ipChain": [{"ip": ip, "version": "V6" if ":" in ip else "V4"}] if ip else []},
    }


def _cut(text: str) -> str:
    """``text`` cut to ``FIELD_MAX`` characters plus the truncation marker. A base64url run at the cut that
    holds "eyJ" may be the head of a token whose dots fell past the cut (so no longer JWT-shaped): it goes."""
    head = text[:FIELD_MAX]
    kept = head.rstrip(_DOTTED_CHARS)
    if _JWT_MARK in head[len(kept):]:
        head = kept + REDACTED
    return f"{head}{TRUNCATED.format(len(text) - FIELD_MAX)}"


def bound_strings(value: Any) -> Any:
    """A copy of ``value`` with every string over ``FIELD_MAX`` characters and every list over ``LIST_MAX``
    items cut, each cut marked (``…[truncated N chars]``, ``…[truncated N items]``)."""
    if isinstance(value, str):
        return _cut(value) if len(value) > FIELD_MAX else value
    if isinstance(value, Mapping):
        return {key: bound_strings(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        items = [bound_strings(item) for item in value[:LIST_MAX]]
        if len(value) > LIST_MAX:
            items.append(TRUNCATED_ITEMS.format(len(value) - LIST_MAX))
        return items
    return value


class FailureEventLimiter:
    """Issue 8 item 7: FAILURE and DENY events per source address, a token bucket of ``burst`` refilled at
    ``rate`` per second. A refused event is counted for its source (reported as ``suppressedEvents`` in the
    next event written for that source) and in ``suppressed`` (exported as a metric), so that no decision to
    drop an event is silent. At most ``size`` sources are tracked (the least recently seen are forgotten;
    their counts stay in ``suppressed``)."""

    def __init__(self, rate: float = 5.0, burst: int = 60, size: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._buckets: LRUCache[str, list[float]] = LRUCache(maxsize=size)
        """source → [tokens, last refill, suppressed since the last written event]"""
        self._lock = threading.Lock()
        self.suppressed = 0

    def _bucket(self, source: str) -> list[float]:
        now = self._clock()
        bucket = self._buckets.get(source)
        if bucket is None:
            bucket = [float(self.burst), now, 0.0]
        else:
            bucket[0] = min(float(self.burst), bucket[0] + (now - bucket[1]) * self.rate)
            bucket[1] = now
        self._buckets[source] = bucket
        return bucket

    def admit(self, source: str, failure: bool) -> int | None:
        """None if the event must not be written; else how many events of ``source`` were suppressed since
        the last one written (to be reported in this one)."""
        with self._lock:
            bucket = self._bucket(source)
            if failure:
                if bucket[0] < 1:
                    bucket[2] += 1
                    self.suppressed += 1
                    return None
                bucket[0] -= 1
            pending, bucket[2] = int(bucket[2]), 0.0
            return pending


class SystemLog:
    """Records events in the store (within the caller's transaction) and as JSON lines on ``stream``."""

    def __init__(self, stream: TextIO | None = sys.stdout, *, failure_rate: float = 5.0, failure_burst: int = 60,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._stream = stream
        self._lock = threading.Lock()
        self.redactions = 0
        """Events that needed scrubbing: each one is a bug in the caller (tests assert it stays 0)."""
        self.limiter = FailureEventLimiter(failure_rate, failure_burst, clock=clock)

    @classmethod
    def from_settings(cls, settings: CoreSettings, stream: TextIO | None = sys.stdout) -> SystemLog:
        return cls(stream, failure_rate=settings.failure_event_rate, failure_burst=settings.failure_event_burst)

    @property
    def suppressed(self) -> int:
        """FAILURE/DENY events not written because their source was over its rate (``FailureEventLimiter``)."""
        return self.limiter.suppressed

    def record(self, tx: StoreTx, event: dict[str, Any], *, published: float | None = None) -> None:
        """Append ``event`` in ``tx`` and write it to the stream; bounded and scrubbed of secrets first.

        Every string is cut to ``FIELD_MAX`` characters and every list to ``LIST_MAX`` items *before* the
        secret scan (issue 8 items 4 and 7: a 1 MB ``scope`` stored a 1 MB event for 90 days and wrote 1 MB
        to stdout). A FAILURE or DENY event over its source's rate is not written (``FailureEventLimiter``).
        ``published`` is the event's epoch seconds; by default it is read back from ``event["published"]``.
        The stdout line is written when the event is appended, before the caller commits: a rolled-back
        transaction can leave a line on stdout that the store does not hold, never the reverse.
        """
        outcome = event.get("outcome") or {}
        client = event.get("client") or {}
        source = client.get("ipAddress") if isinstance(client, Mapping) else None
        pending = 0
        if isinstance(source, str) and source:
            admitted = self.limiter.admit(source, outcome.get("result") in ("FAILURE", "DENY"))
            if admitted is None:
                return
            pending = admitted
        if pending or not _within_bounds(event):
            event = bound_strings(event)  # a copy: the caller's event is never changed
        if pending:
            debug = event.setdefault("debugContext", {}).setdefault("debugData", {})
            debug["suppressedEvents"] = pending
        if not _is_clean(event):
            self.redactions += 1
            event = redact_secrets(event)
        epoch = published if published is not None else parse_published(str(event["published"]))
        tx.append_log(event, epoch)
        if self._stream is not None:
            line = json.dumps(event, separators=(",", ":"), default=str)
            with self._lock:
                self._stream.write(line + "\n")
                self._stream.flush()


__all__ = [
    "FIELD_MAX",
    "LIST_MAX",
    "REDACTED",
    "SYSTEM_ACTOR",
    "TRUNCATED",
    "FailureEventLimiter",
    "SecretInLogError",
    "SystemLog",
    "bound_strings",
    "check_no_secrets",
    "find_secrets",
    "format_published",
    "has_jwt",
    "jwt_spans",
    "make_event",
    "parse_published",
    "redact_secrets",
    "scrub_jwts",
]
