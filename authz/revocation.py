"""The in-memory revocation state every process applies the store's change feed to (DESIGN §4).

Two kinds of entries come from the feed (``authz.store.base.Change``):

- ``revoke_jti`` ``{as_id, jti, exp}``: one token explicitly revoked (RFC 7009 ``/revoke``, the admin
  API, a refresh-token chain, a reused authorization code). A remote issuer's token may be revoked as
  ``{iss, jti, exp}``. Keyed by ``(as_id or issuer, jti)``, never by the token string: a re-encoded or
  malleated signature is the same token.
- ``watermark`` ``{scope, key, before_seq, exp}``: "every token of this user / client / user+client /
  authorization server issued at or before ``before_seq`` is revoked" (spec §5.2: "implicitly revoked by
  a change in configuration"). A token's place in the issued-token order is read from its ``jti``
  (``authz.jti.seq_of``), so a token minted right after the change stays valid (issue 4: "no false
  positives"), even within the same second.

Both kinds carry ``exp``: the moment after which no token they cover can still be valid (the token's own
``exp``; for a watermark, its creation plus the longest token lifetime). Entries are forgotten then
(plus the validators' clock-skew leeway), so
memory stays bounded by the revocations of one token lifetime. Purging is incremental: explicit entries
sit in one-second expiry buckets (a heap of bucket times), so forgetting costs what was added, and an
entry costs a dict slot and a list slot, not a tuple per entry.

``is_revoked`` is called on the proxy's hot path: dict lookups only, no I/O, no lock.
"""

from __future__ import annotations

import heapq
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from authz.jti import seq_of
from authz.store.base import Change

WATERMARK_SCOPES = ("user", "client", "user_client", "as")

_ISSUER_NS = "iss:"
"""Prefix of explicit-revocation namespaces keyed by an issuer URL (remote or unmapped issuers)."""


def _escape(part: str) -> str:
    return part.replace("%", "%25").replace("|", "%7C")


def watermark_key(user_id: str, client_id: str) -> str:
    """The key of a ``user_client`` watermark: ``"<user_id>|<client_id>"``.

    '%' and '|' inside either id are percent-encoded (``%25``, ``%7C``) so that the encoding is
    unambiguous for any ids; ids without them (every Okta-style id) are used verbatim.
    """
    return f"{_escape(user_id)}|{_escape(client_id)}"


def _as_float(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


class RevocationState:
    """Revoked jtis and watermarks, applied from the change feed, queried with a token's claims."""

    def __init__(self, issuers: Mapping[str, str], now: Callable[[], float] = time.time,
                 max_staleness: float = 5.0, leeway: float = 300.0) -> None:
        self._issuers: dict[str, str] = dict(issuers)
        """Issuer URL → local authorization server id."""
        self._now = now
        self.clock = now
        """The clock this state expires entries by (the feed poller marks freshness with it too)."""
        self.max_staleness = max_staleness
        self.leeway = leeway
        """Entries are kept this long past their ``exp``: a validator that accepts an expired token within
        its clock-skew leeway (``validation.leeway`` is at most 300 s, RFC 9068 §4 "a small leeway") must
        still see it revoked."""
        self._explicit: dict[str, dict[str, int]] = {}
        """Namespace (an AS id, or ``iss:<issuer>``) → jti → expiry bucket (whole seconds, rounded up)."""
        self._buckets: dict[int, dict[str, list[str]]] = {}
        """Expiry bucket → namespace → jtis to forget then (a jti re-revoked later may sit in two buckets)."""
        self._bucket_heap: list[int] = []
        self._explicit_count = 0
        self._watermarks: dict[str, dict[str, int]] = {scope: {} for scope in WATERMARK_SCOPES}
        """Scope → key → before_seq (a later watermark for the same key only ever raises it)."""
        self._watermark_exp: dict[tuple[str, str], float] = {}
        self._watermark_heap: list[tuple[float, str, str]] = []
        self._last_seq = 0
        self._fresh_at = -math.inf
        self._lock = threading.Lock()
        """Serializes writers (apply, purge); readers never take it."""

    # ------------------------------------------------------------------------------------------ feed

    @property
    def last_seq(self) -> int:
        """The seq of the last change applied (``Store.changes_since`` continues from here)."""
        return self._last_seq

    def set_issuers(self, issuers: Mapping[str, str]) -> None:
        """Replace the issuer → AS id map (after a reload adds, removes or renames servers)."""
        self._issuers = dict(issuers)

    def apply(self, changes: Iterable[Change]) -> None:
        """Apply feed entries in order; entries already applied (seq ≤ ``last_seq``) are skipped.

        ``config`` entries are not revocations and are ignored here (the poller hands them to its
        ``on_config_change`` hook). Entries already expired are not stored at all.
        """
        with self._lock:
            now = self._now()
            for change in changes:
                if change.seq <= self._last_seq:
                    continue
                if change.kind == "revoke_jti":
                    self._add_explicit(change.data, now)
                elif change.kind == "watermark":
                    self._add_watermark(change.data, now)
                self._last_seq = change.seq
            self._purge(now)

    def _add_explicit(self, data: Mapping[str, Any], now: float) -> None:
        jti = data.get("jti")
        exp = _as_float(data.get("exp"))
        if not isinstance(jti, str) or exp is None or exp + self.leeway < now:
            return
        as_id = data.get("as_id")
        if not isinstance(as_id, str):
            iss = data.get("iss")
            if not isinstance(iss, str):
                return
            mapped = self._issuers.get(iss)
            as_id = mapped if mapped is not None else _ISSUER_NS + iss
        bucket = math.ceil(exp + self.leeway)
        jtis = self._explicit.setdefault(as_id, {})
        previous = jtis.get(jti)
        if previous is not None and previous >= bucket:
            return
        if previous is None:
            self._explicit_count += 1
        jtis[jti] = bucket
        by_ns = self._buckets.get(bucket)
        if by_ns is None:
            by_ns = self._buckets[bucket] = {}
            heapq.heappush(self._bucket_heap, bucket)
        by_ns.setdefault(as_id, []).append(jti)

    def _add_watermark(self, data: Mapping[str, Any], now: float) -> None:
        scope = data.get("scope")
        key = data.get("key")
        before = data.get("before_seq")
        exp = _as_float(data.get("exp"))
        if (scope not in self._watermarks or not isinstance(key, str) or not isinstance(before, int)
                or isinstance(before, bool) or exp is None or exp + self.leeway < now):
            return
        exp += self.leeway
        assert isinstance(scope, str)
        marks = self._watermarks[scope]
        # The union of two watermarks on one key: the higher point covers every token the lower one
        # did, and the later expiry outlives every token either covers.
        marks[key] = max(before, marks.get(key, before))
        ident = (scope, key)
        if exp > self._watermark_exp.get(ident, -math.inf):
            self._watermark_exp[ident] = exp
            heapq.heappush(self._watermark_heap, (exp, scope, key))

    # ------------------------------------------------------------------------------------------ expiry

    def purge(self, now: float | None = None, budget: int | None = None) -> int:
        """Forget entries whose expiry has passed; returns how many were forgotten.

        ``budget`` bounds the explicit entries examined in one call (the rest wait for the next), so a
        caller on a latency-sensitive thread can spread the work.
        """
        with self._lock:
            return self._purge(self._now() if now is None else now, budget)

    def _purge(self, now: float, budget: int | None = None) -> int:
        removed = 0
        examined = 0
        heap = self._bucket_heap
        # A bucket holds tokens expiring at or before its second; it is forgotten once that second is past.
        while heap and heap[0] < now and (budget is None or examined < budget):
            bucket = heapq.heappop(heap)
            by_ns = self._buckets.pop(bucket)
            for ns, jtis in by_ns.items():
                live = self._explicit.get(ns)
                if live is None:
                    continue
                for jti in jtis:
                    examined += 1
                    if live.get(jti) == bucket:
                        del live[jti]
                        removed += 1
                if not live:
                    del self._explicit[ns]
        self._explicit_count -= removed
        wheap = self._watermark_heap
        while wheap and wheap[0][0] < now:
            exp, scope, key = heapq.heappop(wheap)
            if self._watermark_exp.get((scope, key)) == exp:
                del self._watermark_exp[(scope, key)]
                del self._watermarks[scope][key]
                removed += 1
        return removed

    def size(self) -> int:
        """Entries held (explicit revocations plus watermarks)."""
        return self._explicit_count + len(self._watermark_exp)

    def __len__(self) -> int:
        return self.size()

    # ------------------------------------------------------------------------------------------ freshness

    def mark_fresh(self, now: float) -> None:
        """Record a successful read of the feed."""
        self._fresh_at = now

    def age(self, now: float) -> float:
        """Seconds since the last successful feed read (infinite before the first)."""
        return now - self._fresh_at

    def is_stale(self, now: float) -> bool:
        """True when the feed has not been read for longer than ``max_staleness`` (issue 4)."""
        return self.age(now) > self.max_staleness

    # ------------------------------------------------------------------------------------------ queries

    def is_revoked(self, claims: Mapping[str, Any], as_id: str | None = None) -> bool:
        """True when the token with these validated claims is revoked explicitly or by a watermark.

        Watermarks apply only to tokens of a local issuer (remote servers are not ours to watermark);
        a remote token is revoked only by an explicit ``(iss, jti)`` entry. A local token whose jti
        carries no sequence number cannot be placed after any watermark, so every watermark that
        matches it revokes it (fail closed).

        ``as_id``: the local server the caller verified the token for (the core's endpoints know it from
        their path). The issuer map holds the config file's servers only, so a server created through the
        management API is found this way or not at all (issue 12 item 1: its revoked tokens introspected
        active and its refresh tokens outlived their watermarks).
        """
        jti = claims.get("jti")
        iss = claims.get("iss")
        if not isinstance(iss, str):
            return False
        if as_id is None:
            as_id = self._issuers.get(iss)
        if isinstance(jti, str):
            if as_id is not None:
                jtis = self._explicit.get(as_id)
                if jtis is not None and jti in jtis:
                    return True
            jtis = self._explicit.get(_ISSUER_NS + iss)
            if jtis is not None and jti in jtis:
                return True
        if as_id is None:
            return False
        seq = seq_of(jti)
        position = -1 if seq is None else seq
        marks = self._watermarks
        before = marks["as"].get(as_id)
        if before is not None and position <= before:
            return True
        client_id = claims.get("cid")
        if not isinstance(client_id, str):
            client_id = claims.get("client_id")
        user_id = claims.get("uid")
        if isinstance(client_id, str):
            before = marks["client"].get(client_id)
            if before is not None and position <= before:
                return True
        if isinstance(user_id, str):
            before = marks["user"].get(user_id)
            if before is not None and position <= before:
                return True
            if isinstance(client_id, str):
                before = marks["user_client"].get(watermark_key(user_id, client_id))
                if before is not None and position <= before:
                    return True
        return False


__all__ = ["WATERMARK_SCOPES", "RevocationState", "watermark_key"]
