"""The in-memory revocation state (DESIGN §4, issue 4 "Revocation state")."""

from __future__ import annotations

import os
import time
from typing import Any

import pytest

from authz.jti import make_jti
from authz.revocation import RevocationState, watermark_key
from authz.store.base import Change
from tests.clock import Clock

ISS = "https://id.example.com/oauth2/aus1"
ISS2 = "https://id.example.com/oauth2/aus2"
REMOTE = "https://remote.example.org/oauth2/default"
T0 = 1_800_000_000.0


def make_state(clock: Clock | None = None, leeway: float = 0.0) -> tuple[RevocationState, Clock]:
    clock = clock or Clock()
    return RevocationState({ISS: "aus1", ISS2: "aus2"}, now=clock, max_staleness=5.0, leeway=leeway), clock


class Feed:
    """Builds Change records with increasing seqs, as the store's feed would."""

    def __init__(self) -> None:
        self.seq = 0

    def change(self, change_kind: str, **data: Any) -> Change:
        self.seq += 1
        return Change(seq=self.seq, kind=change_kind, data=data, created=T0)  # type: ignore[arg-type]

    def revoke(self, jti: str, exp: float, as_id: str = "aus1") -> Change:
        return self.change("revoke_jti", as_id=as_id, jti=jti, exp=exp)

    def watermark(self, scope: str, key: str, before_seq: int, exp: float = T0 + 86400) -> Change:
        return self.change("watermark", scope=scope, key=key, before_seq=before_seq, exp=exp)


def claims(seq: int, *, iss: str = ISS, cid: str = "c1", uid: str | None = "u1",
           jti: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"iss": iss, "jti": jti or make_jti("AT", seq), "cid": cid, "exp": T0 + 3600}
    if uid is not None:
        out["uid"] = uid
    return out


class TestExplicit:
    def test_revoked_jti_is_revoked_and_others_are_not(self) -> None:
        """An explicitly revoked (AS, jti) is revoked; another jti of the same AS is not."""
        state, _ = make_state()
        feed = Feed()
        token = claims(5)
        state.apply([feed.revoke(token["jti"], T0 + 3600)])
        assert state.is_revoked(token)
        assert not state.is_revoked(claims(5))
        assert state.last_seq == 1

    def test_same_jti_at_another_as_is_not_revoked(self) -> None:
        """Revocations are keyed by (AS, jti): the same jti under another issuer stays valid."""
        state, _ = make_state()
        feed = Feed()
        token = claims(5)
        state.apply([feed.revoke(token["jti"], T0 + 3600)])
        assert not state.is_revoked({**token, "iss": ISS2})

    def test_explicit_entry_expires_with_the_token(self) -> None:
        """An explicit entry is forgotten once its token has expired (plus the leeway)."""
        state, clock = make_state(leeway=60)
        feed = Feed()
        token = claims(5)
        state.apply([feed.revoke(token["jti"], T0 + 100)])
        clock.t = T0 + 150
        state.purge()
        assert state.is_revoked(token), "within the leeway the entry must survive"
        clock.t = T0 + 162
        assert state.purge() == 1
        assert state.size() == 0
        assert not state.is_revoked(token)

    def test_already_expired_entries_are_not_stored(self) -> None:
        """A revocation of a token that has already expired costs no memory."""
        state, _ = make_state()
        feed = Feed()
        state.apply([feed.revoke(make_jti("AT", 1), T0 - 10)])
        assert state.size() == 0
        assert state.last_seq == 1

    def test_rerevocation_with_later_exp_survives_the_first_bucket(self) -> None:
        """A jti revoked again with a later expiry is kept until the later one."""
        state, clock = make_state()
        feed = Feed()
        jti = make_jti("AT", 1)
        state.apply([feed.revoke(jti, T0 + 10), feed.revoke(jti, T0 + 1000)])
        assert state.size() == 1
        clock.t = T0 + 20
        state.purge()
        assert state.is_revoked(claims(1, jti=jti))
        clock.t = T0 + 1002
        state.purge()
        assert state.size() == 0

    def test_changes_already_applied_are_skipped(self) -> None:
        """Applying the same feed entries twice changes nothing (seq ≤ last_seq is skipped)."""
        state, _ = make_state()
        feed = Feed()
        changes = [feed.revoke(make_jti("AT", i), T0 + 100) for i in range(3)]
        state.apply(changes)
        state.apply(changes)
        assert state.size() == 3
        assert state.last_seq == 3


class TestWatermarks:
    @pytest.mark.parametrize(("scope", "key", "matching", "other"), [
        ("as", "aus1", {}, {"iss": ISS2}),
        ("client", "c1", {}, {"cid": "c2"}),
        ("user", "u1", {}, {"uid": "u2"}),
        ("user_client", watermark_key("u1", "c1"), {}, {"cid": "c2"}),
        ("user_client", watermark_key("u1", "c1"), {}, {"uid": "u2"}),
    ])
    def test_watermark_revokes_earlier_tokens_of_its_subject_only(
            self, scope: str, key: str, matching: dict[str, Any], other: dict[str, Any]) -> None:
        """Tokens at or before the watermark are revoked; later ones and other subjects are not."""
        state, _ = make_state()
        feed = Feed()
        state.apply([feed.watermark(scope, key, before_seq=100)])
        assert state.is_revoked({**claims(99), **matching})
        assert state.is_revoked({**claims(100), **matching})
        assert not state.is_revoked({**claims(101), **matching}), "no false positives after the change"
        assert not state.is_revoked({**claims(50), **other})

    def test_client_watermark_reads_rfc9068_client_id(self) -> None:
        """A token carrying only RFC 9068's client_id (no cid) is matched by its client."""
        state, _ = make_state()
        feed = Feed()
        state.apply([feed.watermark("client", "c1", 10)])
        token = claims(3)
        del token["cid"]
        token["client_id"] = "c1"
        assert state.is_revoked(token)

    def test_client_credentials_token_without_uid_ignores_user_watermarks(self) -> None:
        """A token without uid is untouched by user watermarks but still by client ones."""
        state, _ = make_state()
        feed = Feed()
        state.apply([feed.watermark("user", "u1", 10)])
        assert not state.is_revoked(claims(3, uid=None))
        state.apply([feed.watermark("client", "c1", 10)])
        assert state.is_revoked(claims(3, uid=None))

    def test_later_watermark_raises_the_point_and_never_lowers_it(self) -> None:
        """Two watermarks on one key revoke the union: the higher point wins."""
        state, _ = make_state()
        feed = Feed()
        state.apply([feed.watermark("client", "c1", 50), feed.watermark("client", "c1", 20)])
        assert state.is_revoked(claims(50))
        assert not state.is_revoked(claims(51))
        assert state.size() == 1

    def test_watermark_expires(self) -> None:
        """A watermark is forgotten at its exp (every token it covered has expired by then)."""
        state, clock = make_state()
        feed = Feed()
        state.apply([feed.watermark("user", "u1", 10, exp=T0 + 500)])
        clock.t = T0 + 501
        assert state.purge() == 1
        assert not state.is_revoked(claims(3))

    def test_jti_without_sequence_is_revoked_by_a_matching_watermark(self) -> None:
        """A local token whose jti carries no sequence cannot be after a watermark: fail closed."""
        state, _ = make_state()
        feed = Feed()
        assert not state.is_revoked(claims(0, jti="opaque-id"))
        state.apply([feed.watermark("client", "c1", 10)])
        assert state.is_revoked(claims(0, jti="opaque-id"))
        assert not state.is_revoked(claims(0, jti="opaque-id", cid="c9"))

    def test_watermark_key_is_unambiguous(self) -> None:
        """The user_client key escapes '|' and '%' so different pairs never share a key."""
        assert watermark_key("00u1", "0oa2") == "00u1|0oa2"
        assert watermark_key("a|b", "c") != watermark_key("a", "b|c")
        assert watermark_key("a%7Cb", "c") != watermark_key("a|b", "c")

    def test_malformed_entries_are_ignored(self) -> None:
        """Entries of unknown scope or with missing fields add nothing."""
        state, _ = make_state()
        feed = Feed()
        state.apply([feed.change("watermark", scope="tenant", key="x", before_seq=1, exp=T0 + 9),
                     feed.change("watermark", scope="user", key="u1", before_seq="9", exp=T0 + 9),
                     feed.change("revoke_jti", as_id="aus1", exp=T0 + 9),
                     feed.change("config", kind="app", id="c1")])
        assert state.size() == 0
        assert state.last_seq == 4


class TestIssuers:
    def test_unknown_issuer_ignores_watermarks(self) -> None:
        """A remote issuer's token is never matched by a local watermark, even with the same cid."""
        state, _ = make_state()
        feed = Feed()
        state.apply([feed.watermark("client", "c1", 10**9), feed.watermark("user", "u1", 10**9)])
        assert not state.is_revoked(claims(3, iss=REMOTE))

    def test_unknown_issuer_matches_explicit_iss_jti(self) -> None:
        """A remote token is revoked by an explicit (iss, jti) entry, and only for that issuer."""
        state, _ = make_state()
        feed = Feed()
        state.apply([feed.change("revoke_jti", iss=REMOTE, jti="remote-1", exp=T0 + 60)])
        assert state.is_revoked({"iss": REMOTE, "jti": "remote-1"})
        assert not state.is_revoked({"iss": ISS, "jti": "remote-1"})
        assert not state.is_revoked({"iss": REMOTE, "jti": "remote-2"})

    def test_set_issuers_moves_watermarks_to_the_new_map(self) -> None:
        """After a reload adds an issuer, its tokens are subject to its AS's watermarks."""
        state, _ = make_state()
        feed = Feed()
        state.apply([feed.watermark("as", "aus3", 10)])
        iss3 = "https://id.example.com/oauth2/aus3"
        assert not state.is_revoked(claims(3, iss=iss3))
        state.set_issuers({ISS: "aus1", iss3: "aus3"})
        assert state.is_revoked(claims(3, iss=iss3))

    def test_claims_without_issuer_are_not_revoked(self) -> None:
        """Without an issuer there is nothing to look up (the validator refuses such tokens earlier)."""
        state, _ = make_state()
        assert not state.is_revoked({"jti": make_jti("AT", 1)})


class TestFreshness:
    def test_stale_until_first_read_then_after_max_staleness(self) -> None:
        """The state is stale before any read and again once max_staleness has passed since the last."""
        state, _ = make_state()
        assert state.is_stale(T0)
        state.mark_fresh(T0)
        assert not state.is_stale(T0 + 5.0)
        assert state.is_stale(T0 + 5.1)
        assert state.age(T0 + 2) == 2


def _rss_mib() -> float | None:
    """Resident set size from /proc (Linux); None elsewhere."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return None


class TestMemoryBound:
    def test_one_million_revocations_are_forgotten_as_they_expire(self) -> None:
        """A million revocations spread over an hour shrink back to nothing once they expire.

        Measured with bench/revocation_memory.py (tracemalloc, CPython 3.11 x86-64): 146 MiB held for
        the million entries including their jti strings, about 160 KiB left after they expired; here
        (without tracemalloc) about 4-7 s in all, the resident set growing ~150 MiB and falling back.
        """
        clock = Clock()
        state = RevocationState({ISS: "aus1"}, now=clock, leeway=60)
        n = 1_000_000
        suffix = "Qw3rTy8uIoP1aSdFgHjKlZ"  # the random part of a jti: 22 characters, as make_jti's
        rss_before = _rss_mib()
        started = time.perf_counter()
        for start in range(0, n, 10_000):
            state.apply([Change(seq=i + 1, kind="revoke_jti",
                                data={"as_id": "aus1", "jti": f"AT.{i:x}.{suffix}", "exp": T0 + 60 + (i % 3600)},
                                created=T0) for i in range(start, start + 10_000)])
        apply_seconds = time.perf_counter() - started
        assert state.size() == n
        rss_full = _rss_mib()
        assert state.is_revoked(claims(0, jti=f"AT.{12345:x}.{suffix}"))
        assert not state.is_revoked(claims(0, jti=f"AT.{n:x}.{suffix}"))

        clock.t = T0 + 60 + 1800 + 61
        state.purge()
        assert n * 0.45 < state.size() < n * 0.55, "half of them expired"
        clock.t = T0 + 60 + 3600 + 61
        started = time.perf_counter()
        state.purge()
        purge_seconds = time.perf_counter() - started
        assert state.size() == 0
        assert not state._explicit and not state._buckets and not state._bucket_heap
        assert not state.is_revoked(claims(0, jti=f"AT.{12345:x}.{suffix}"))
        rss_after = _rss_mib()
        if rss_before is not None and rss_full is not None and rss_after is not None:
            grown = rss_full - rss_before
            assert grown < 400, f"{grown:.0f} MiB for {n} entries"
            assert rss_after - rss_before < grown / 2, "memory is returned once the entries expire"
        print(f"\n1M revocations: apply {apply_seconds:.1f}s, final purge {purge_seconds:.2f}s, rss "
              f"{rss_before} -> {rss_full} -> {rss_after} MiB")
