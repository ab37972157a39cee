"""The Store contract (``authz.store.base``): every implementation passes these, SQLite and PostgreSQL."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import replace
from typing import get_args

import pytest

from authz.keys import ensure_signing_keys
from authz.store.base import (
    AuthorizationCode,
    IssuedToken,
    LogQuery,
    ObjectKind,
    RefreshToken,
    SigningKey,
    Store,
)
from authz.store.errors import StoreConflict, StoreError

NOW = 1_700_000_000.0

StoreFactory = Callable[[], Store]


class Boom(Exception):
    pass


def token(jti: str, seq: int, **changes: object) -> IssuedToken:
    base = IssuedToken(jti=jti, as_id="orders", client_id="web", user_id="alice", scopes=("openid", "orders:read"),
                       issued_at=NOW, expires_at=NOW + 3600, seq=seq)
    return replace(base, **changes)  # type: ignore[arg-type]


def refresh(id: str, **changes: object) -> RefreshToken:
    base = RefreshToken(id=id, token_hash=f"hash-{id}", as_id="orders", client_id="web", user_id="alice",
                        scopes=("offline_access", "orders:read"), issued_at=NOW, expires_at=NOW + 86400,
                        window_seconds=3600, last_used_at=NOW, access_lifetime_seconds=1800, chain_id="chain-1",
                        policy_id="00p1", rule_id="0pr1", auth_time=NOW - 10, seq=7)
    return replace(base, **changes)  # type: ignore[arg-type]


def code(code_hash: str, **changes: object) -> AuthorizationCode:
    base = AuthorizationCode(code_hash=code_hash, as_id="orders", client_id="web", user_id="alice",
                             redirect_uri="http://127.0.0.1:5000/callback", scopes=("openid",), issued_at=NOW,
                             expires_at=NOW + 300, auth_time=NOW - 5, nonce="n-1", code_challenge="abc",
                             code_challenge_method="S256", policy_id="00p1", rule_id="0pr1",
                             access_lifetime_seconds=1800, refresh_lifetime_seconds=0, refresh_window_seconds=86400)
    return replace(base, **changes)  # type: ignore[arg-type]


def signing_key(kid: str, status: str = "ACTIVE", created: float = NOW) -> SigningKey:
    return SigningKey(kid=kid, as_id="orders", status=status, private_pem=b"-----BEGIN PRIVATE KEY-----\n\x00\xff",  # type: ignore[arg-type]
                      public_jwk={"kty": "RSA", "n": "abc", "e": "AQAB", "kid": kid, "alg": "RS256", "use": "sig"},
                      created=created)


class TestObjects:
    @pytest.mark.parametrize("kind", get_args(ObjectKind))
    def test_every_kind_round_trips(self, store: Store, kind: ObjectKind) -> None:
        """Each object kind comes back with its document, origin and secret hash exactly as written."""
        document = {"id": "x1", "name": "Ünïcode", "nested": {"list": [1, 2.5, None, True]}, "empty": []}
        store.put_object(kind, "x1", document, "api", secret_hash="scrypt$abc")
        got = store.get_object(kind, "x1")
        assert got is not None
        assert (got.kind, got.id, got.document, got.origin, got.secret_hash) == (kind, "x1", document, "api",
                                                                                  "scrypt$abc")
        assert got.created <= got.last_updated
        assert [o.id for o in store.list_objects(kind)] == ["x1"]

    def test_kinds_are_separate_namespaces(self, store: Store) -> None:
        """The same id under two kinds is two objects."""
        store.put_object("user", "same", {"v": "user"}, "config")
        store.put_object("group", "same", {"v": "group"}, "config")
        assert store.get_object("user", "same").document == {"v": "user"}  # type: ignore[union-attr]
        assert store.get_object("group", "same").document == {"v": "group"}  # type: ignore[union-attr]

    def test_replace_keeps_created_and_secret_unless_told(self, store: Store) -> None:
        """A replace updates the document; the secret hash stays unless a new one is given or keep_secret is off."""
        store.put_object("app", "web", {"v": 1}, "config", secret_hash="h1")
        created = store.get_object("app", "web").created  # type: ignore[union-attr]
        store.put_object("app", "web", {"v": 2}, "api")
        got = store.get_object("app", "web")
        assert got is not None
        assert (got.document, got.origin, got.secret_hash, got.created) == ({"v": 2}, "api", "h1", created)
        store.put_object("app", "web", {"v": 3}, "api", secret_hash="h2")
        assert store.get_object("app", "web").secret_hash == "h2"  # type: ignore[union-attr]
        store.put_object("app", "web", {"v": 4}, "api", keep_secret=False)
        assert store.get_object("app", "web").secret_hash is None  # type: ignore[union-attr]

    def test_delete(self, store: Store) -> None:
        """Deleting reports whether the object existed; afterwards it is gone."""
        store.put_object("user", "alice", {"id": "alice"}, "config")
        assert store.delete_object("user", "alice") is True
        assert store.delete_object("user", "alice") is False
        assert store.get_object("user", "alice") is None
        assert store.list_objects("user") == []

    def test_secrets_are_never_in_documents(self, store: Store) -> None:
        """The secret hash is kept beside the document, never inside it."""
        store.put_object("user", "alice", {"id": "alice", "login": "alice@example.com"}, "config",
                         secret_hash="scrypt$n=16384$salt$digest")
        got = store.get_object("user", "alice")
        assert got is not None
        assert "scrypt" not in json.dumps(got.document)
        assert got.secret_hash == "scrypt$n=16384$salt$digest"


class TestSigningKeys:
    def test_round_trip_and_status(self, store: Store) -> None:
        """Keys come back in creation order with their PEM bytes and JWK; set_key_status changes one key."""
        store.add_signing_key(signing_key("k2", "NEXT", created=NOW + 1))
        store.add_signing_key(signing_key("k1", "ACTIVE", created=NOW))
        keys = store.list_signing_keys("orders")
        assert [k.kid for k in keys] == ["k1", "k2"]
        assert keys[0] == signing_key("k1", "ACTIVE")
        store.set_key_status("orders", "k1", "EXPIRED")
        assert [k.status for k in store.list_signing_keys("orders")] == ["EXPIRED", "NEXT"]
        assert store.list_signing_keys("other") == []

    def test_unknown_key_status_change_is_an_error(self, store: Store) -> None:
        """Changing the status of a key that does not exist raises instead of silently doing nothing."""
        with pytest.raises(StoreError):
            store.set_key_status("orders", "nope", "ACTIVE")

    def test_concurrent_first_starts_create_one_pair(self, open_more: StoreFactory) -> None:
        """Processes that start at once on an empty store create exactly one ACTIVE and one NEXT key."""
        stores = [open_more() for _ in range(4)]
        barrier = threading.Barrier(len(stores))
        errors: list[BaseException] = []

        def start(s: Store) -> None:
            barrier.wait()
            try:
                ensure_signing_keys(s, "orders", NOW)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=start, args=(s,)) for s in stores]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert sorted(k.status for k in stores[0].list_signing_keys("orders")) == ["ACTIVE", "NEXT"]

    def test_key_reads_in_a_transaction_serialize(self, store: Store, open_more: StoreFactory) -> None:
        """A transaction that read an AS's keys holds them: another writer of that AS's keys waits for its
        commit and then sees what it wrote (even when the AS had no key to lock yet)."""
        other = open_more()
        seen: list[int] = []

        def second() -> None:
            with other.transaction() as tx2:
                seen.append(len(tx2.list_signing_keys("orders")))

        with store.transaction() as tx:
            assert tx.list_signing_keys("orders") == []
            thread = threading.Thread(target=second)
            thread.start()
            thread.join(0.3)
            assert thread.is_alive(), "the second reader must wait for the first transaction"
            tx.add_signing_key(signing_key("k1"))
        thread.join(30)
        assert seen == [1]

    def test_object_reads_in_a_transaction_serialize(self, store: Store, open_more: StoreFactory) -> None:
        """A transaction that read a configuration object holds the objects: another process's
        read-modify-write waits for its commit and then reads what it wrote (no lost update)."""
        store.put_object("authorization_server", "orders", {"v": 1}, "api")
        other = open_more()
        seen: list[object] = []

        def second() -> None:
            with other.transaction() as tx2:
                obj = tx2.get_object("authorization_server", "orders")
                seen.append(obj.document["v"] if obj else None)

        with store.transaction() as tx:
            obj = tx.get_object("authorization_server", "orders")
            assert obj is not None
            assert [o.id for o in tx.list_objects("authorization_server")] == ["orders"]
            thread = threading.Thread(target=second)
            thread.start()
            thread.join(0.3)
            assert thread.is_alive(), "the second reader must wait for the first transaction"
            tx.put_object("authorization_server", "orders", {"v": obj.document["v"] + 1}, "api")
        thread.join(30)
        assert seen == [2]

    def test_duplicate_kid_conflicts(self, store: Store) -> None:
        """Two keys with one kid on one AS are a conflict."""
        store.add_signing_key(signing_key("k1"))
        with pytest.raises(StoreConflict):
            store.add_signing_key(signing_key("k1"))


class TestTokens:
    def test_issued_token_round_trip_and_filters(self, store: Store) -> None:
        """Issued-token records round-trip and list by AS, client, user and refresh token, in seq order."""
        store.record_token(token("AT.2", 2, refresh_id="r1"))
        store.record_token(token("AT.1", 1))
        store.record_token(token("ID.3", 3, token_type="id_token", client_id="other", user_id=None, scopes=()))
        assert store.get_token("AT.2") == token("AT.2", 2, refresh_id="r1")
        assert store.get_token("ID.3") == token("ID.3", 3, token_type="id_token", client_id="other", user_id=None,
                                                scopes=())
        assert store.get_token("nope") is None
        assert [t.jti for t in store.list_tokens()] == ["AT.1", "AT.2", "ID.3"]
        assert [t.jti for t in store.list_tokens(client_id="web")] == ["AT.1", "AT.2"]
        assert [t.jti for t in store.list_tokens(user_id="alice", refresh_id="r1")] == ["AT.2"]
        assert store.list_tokens(as_id="other") == []

    def test_duplicate_jti_conflicts(self, store: Store) -> None:
        """A jti is recorded once."""
        store.record_token(token("AT.1", 1))
        with pytest.raises(StoreConflict):
            store.record_token(token("AT.1", 1))

    def test_refresh_token_round_trip_upsert_and_filters(self, store: Store) -> None:
        """Refresh tokens round-trip by id and by hash, replace by id, and list by chain."""
        store.put_refresh_token(refresh("r1"))
        store.put_refresh_token(refresh("r2", token_hash="hash-r2", chain_id="chain-2", expires_at=None, user_id=None,
                                        policy_id=None, rule_id=None, auth_time=None, seq=8))
        assert store.get_refresh_token("r1") == refresh("r1")
        assert store.get_refresh_token_by_hash("hash-r2") == store.get_refresh_token("r2")
        assert store.get_refresh_token("r2").expires_at is None  # type: ignore[union-attr]
        rotated = refresh("r1", status="ROTATED", rotated_at=NOW + 5, last_used_at=NOW + 5)
        store.put_refresh_token(rotated)
        assert store.get_refresh_token("r1") == rotated
        assert [t.id for t in store.list_refresh_tokens(chain_id="chain-1")] == ["r1"]
        assert [t.id for t in store.list_refresh_tokens(as_id="orders")] == ["r1", "r2"]
        assert store.get_refresh_token_by_hash("nope") is None


class TestTokenSequence:
    def test_strictly_increasing(self, store: Store, open_more: StoreFactory) -> None:
        """Every allocation is above every earlier one, across store instances (processes)."""
        other = open_more()
        seen = [store.allocate_token_seq(), other.allocate_token_seq(), store.allocate_token_seq()]
        with store.transaction() as tx:
            seen.append(tx.allocate_token_seq())
            seen.append(tx.allocate_token_seq())
        seen.append(other.allocate_token_seq())
        assert seen == sorted(seen) and len(set(seen)) == len(seen)
        assert store.current_token_seq() == seen[-1]

    def test_current_seq_starts_at_zero(self, store: Store) -> None:
        """A new store has allocated nothing: a watermark taken now revokes no token."""
        assert store.current_token_seq() == 0

    def test_concurrent_threads_never_share_a_seq(self, store: Store) -> None:
        """Worker threads allocating at once get distinct, per-thread increasing numbers."""
        results: list[list[int]] = [[] for _ in range(4)]

        def work(out: list[int]) -> None:
            for _ in range(25):
                out.append(store.allocate_token_seq())

        threads = [threading.Thread(target=work, args=(out,)) for out in results]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        every = [n for out in results for n in out]
        assert len(set(every)) == 100
        assert all(out == sorted(out) for out in results)


class TestCodes:
    def test_consume_is_single_use(self, store: Store) -> None:
        """The first consume returns the unused code and marks it; the second sees used_at set."""
        store.put_code(code("c1"))
        first = store.consume_code("c1", NOW + 1)
        assert first == code("c1")
        second = store.consume_code("c1", NOW + 2)
        assert second is not None and second.used_at == NOW + 1
        assert store.consume_code("unknown", NOW) is None

    def test_put_code_replaces_to_record_issued_tokens(self, store: Store) -> None:
        """After redemption the code is rewritten with what it issued, so a replay can revoke it."""
        store.put_code(code("c1"))
        used = store.consume_code("c1", NOW + 1)
        assert used is not None
        store.put_code(replace(used, used_at=NOW + 1, issued_jtis=("AT.1", "ID.2"), issued_refresh_ids=("r1",)))
        replay = store.consume_code("c1", NOW + 3)
        assert replay is not None
        assert (replay.used_at, replay.issued_jtis, replay.issued_refresh_ids) == (NOW + 1, ("AT.1", "ID.2"), ("r1",))

    def test_concurrent_consumers_one_wins(self, store: Store, open_more: StoreFactory) -> None:
        """Of many concurrent redemptions of one code, exactly one sees it unused."""
        store.put_code(code("c1"))
        stores = [store, open_more()]
        outcomes: list[float | None] = []
        lock = threading.Lock()

        def redeem(s: Store) -> None:
            got = s.consume_code("c1", NOW + 1)
            with lock:
                outcomes.append(got.used_at if got else -1)

        threads = [threading.Thread(target=redeem, args=(stores[i % 2],)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(outcomes, key=lambda v: v is not None) == [None] + [NOW + 1] * 7

    def test_assertion_jti_single_use(self, store: Store) -> None:
        """A client's assertion jti is accepted once; another client may use the same jti."""
        assert store.use_assertion_jti("web", "j1", NOW + 60) is True
        assert store.use_assertion_jti("web", "j1", NOW + 60) is False
        assert store.use_assertion_jti("reporting", "j1", NOW + 60) is True


class TestChangeFeed:
    def test_order_and_changes_since(self, store: Store, open_more: StoreFactory) -> None:
        """Entries get increasing seqs; changes_since returns those after a seq, in order, up to limit."""
        assert store.last_change_seq() == 0
        s1 = store.append_change("revoke_jti", {"as_id": "orders", "jti": "AT.1", "exp": NOW + 60})
        s2 = open_more().append_change("watermark", {"scope": "user", "key": "alice", "before_seq": 9, "exp": NOW})
        s3 = store.append_change("config", {"kind": "app", "id": "web"})
        assert s1 < s2 < s3
        assert store.last_change_seq() == s3
        changes = store.changes_since(0)
        assert [(c.seq, c.kind) for c in changes] == [(s1, "revoke_jti"), (s2, "watermark"), (s3, "config")]
        assert changes[1].data == {"scope": "user", "key": "alice", "before_seq": 9, "exp": NOW}
        assert [c.seq for c in store.changes_since(s1)] == [s2, s3]
        assert [c.seq for c in store.changes_since(0, limit=2)] == [s1, s2]
        assert store.changes_since(s3) == []

    def test_wait_for_change_wakes_on_commit(self, store: Store) -> None:
        """A waiter returns True as soon as a change is committed, and False when nothing happens."""
        assert store.wait_for_change(0) is False
        result: list[bool] = []
        started = threading.Event()

        def waiter() -> None:
            started.set()
            result.append(store.wait_for_change(30))

        thread = threading.Thread(target=waiter)
        thread.start()
        started.wait()
        # The waiter may not be waiting yet: append until it has returned.
        while thread.is_alive():
            store.append_change("config", {"kind": "app", "id": "web"})
            thread.join(0.05)
        assert result == [True]


    def test_close_releases_a_waiter(self, open_more: StoreFactory) -> None:
        """close() makes a blocked wait_for_change return False promptly, and later calls return at once."""
        store = open_more()
        assert store.wait_for_change(0) is False
        result: list[bool] = []
        waiting = threading.Event()

        def waiter() -> None:
            waiting.set()
            result.append(store.wait_for_change(60))

        thread = threading.Thread(target=waiter)
        thread.start()
        waiting.wait()
        store.close()
        thread.join(30)
        assert not thread.is_alive() and result == [False]
        assert store.wait_for_change(60) is False


class TestLogs:
    @pytest.fixture
    def logged(self, store: Store) -> list[int]:
        return [store.append_log({"uuid": f"e{i}", "eventType": "app.oauth2.as.token.grant"}, NOW + i)
                for i in range(10)]

    def test_round_trip_and_order(self, store: Store, logged: list[int]) -> None:
        """Events come back with their seq, published time and JSON, oldest first by default."""
        records = store.query_logs(LogQuery())
        assert [r.seq for r in records] == logged
        assert records[3].event == {"uuid": "e3", "eventType": "app.oauth2.as.token.grant"}
        assert records[3].published == NOW + 3
        assert [r.seq for r in store.iter_logs()] == logged

    def test_since_until(self, store: Store, logged: list[int]) -> None:
        """since is inclusive, until exclusive."""
        records = store.query_logs(LogQuery(since=NOW + 2, until=NOW + 5))
        assert [r.event["uuid"] for r in records] == ["e2", "e3", "e4"]

    def test_cursor_pages(self, store: Store, logged: list[int]) -> None:
        """Paging with the last seq as cursor visits every event once, both directions."""
        pages: list[list[str]] = []
        after = None
        while True:
            page = store.query_logs(LogQuery(after=after, limit=4))
            if not page:
                break
            pages.append([r.event["uuid"] for r in page])
            after = page[-1].seq
        assert pages == [["e0", "e1", "e2", "e3"], ["e4", "e5", "e6", "e7"], ["e8", "e9"]]
        newest = store.query_logs(LogQuery(descending=True, limit=3))
        assert [r.event["uuid"] for r in newest] == ["e9", "e8", "e7"]
        older = store.query_logs(LogQuery(descending=True, limit=3, after=newest[-1].seq, since=NOW + 5))
        assert [r.event["uuid"] for r in older] == ["e6", "e5"]


class TestTransactions:
    def test_exception_rolls_everything_back(self, store: Store) -> None:
        """An exception inside transaction() leaves no trace of any write made in it."""
        store.put_code(code("c1"))

        def write_everything_then_fail() -> None:
            with store.transaction() as tx:
                tx.put_object("app", "web", {"v": 1}, "api", secret_hash="h")
                tx.add_signing_key(signing_key("k1"))
                tx.record_token(token("AT.1", 1))
                tx.put_refresh_token(refresh("r1"))
                tx.put_code(code("c2"))
                assert tx.consume_code("c1", NOW) is not None
                assert tx.use_assertion_jti("web", "j1", NOW + 60)
                tx.append_change("revoke_jti", {"jti": "AT.1"})
                tx.append_log({"uuid": "e"}, NOW)
                raise Boom

        with pytest.raises(Boom):
            write_everything_then_fail()
        assert store.get_object("app", "web") is None
        assert store.list_signing_keys("orders") == []
        assert store.get_token("AT.1") is None
        assert store.get_refresh_token("r1") is None
        assert store.consume_code("c2", NOW) is None
        assert store.consume_code("c1", NOW) == code("c1")
        assert store.use_assertion_jti("web", "j1", NOW + 60) is True
        assert store.changes_since(0) == []
        assert store.query_logs(LogQuery()) == []

    def test_writes_commit_together(self, store: Store, open_more: StoreFactory) -> None:
        """Writes of one transaction are visible elsewhere only after it commits, and then all of them."""
        other = open_more()
        with store.transaction() as tx:
            seq = tx.allocate_token_seq()
            tx.record_token(token("AT.x", seq))
            tx.append_log({"uuid": "grant"}, NOW)
            assert other.get_token("AT.x") is None
            assert tx.current_token_seq() == seq
        assert other.get_token("AT.x") == token("AT.x", seq)
        assert [r.event for r in other.query_logs(LogQuery())] == [{"uuid": "grant"}]

    def test_reads_inside_a_transaction_see_its_writes(self, store: Store) -> None:
        """Within the thread that holds a transaction, reads see its uncommitted writes."""
        with store.transaction() as tx:
            tx.put_object("group", "g", {"id": "g"}, "api")
            assert store.get_object("group", "g") is not None

    def test_nested_block_rolls_back_alone(self, store: Store) -> None:
        """A nested transaction that fails undoes only its own writes; the outer one still commits."""
        def fail_inside() -> None:
            with store.transaction() as inner:
                inner.put_object("group", "undone", {}, "api")
                raise Boom

        with store.transaction() as outer:
            outer.put_object("group", "kept", {}, "api")
            with pytest.raises(Boom):
                fail_inside()
            store.put_object("group", "bare", {}, "api")
        assert [o.id for o in store.list_objects("group")] == ["kept", "bare"]


class TestPrune:
    def test_removes_only_what_expired(self, store: Store) -> None:
        """prune deletes expired codes, assertion jtis, token records, dead refresh chains and expired feed
        entries (not the newest), counts them, and keeps everything still live."""
        store.put_code(code("old", expires_at=NOW - 1))
        store.put_code(code("live", expires_at=NOW + 1))
        store.use_assertion_jti("web", "old", NOW - 1)
        store.use_assertion_jti("web", "live", NOW + 1)
        store.record_token(token("AT.old", 1, expires_at=NOW - 1))
        store.record_token(token("AT.live", 2, expires_at=NOW + 1))
        store.put_refresh_token(refresh("r-abs", token_hash="h1", chain_id="a", expires_at=NOW - 1))
        # Chain b: the rotated member is idle, but its successor is live, so both stay (reuse detection).
        store.put_refresh_token(refresh("r-b1", token_hash="h2", chain_id="b", status="ROTATED",
                                        last_used_at=NOW - 7200, window_seconds=3600))
        store.put_refresh_token(refresh("r-b2", token_hash="h3", chain_id="b", last_used_at=NOW - 60,
                                        window_seconds=3600))
        store.put_refresh_token(refresh("r-idle", token_hash="h4", chain_id="c", last_used_at=NOW - 7200,
                                        window_seconds=3600))
        first = store.append_change("revoke_jti", {"jti": "AT.old", "exp": NOW - 1})
        store.append_change("config", {"kind": "app", "id": "web"})
        last = store.append_change("revoke_jti", {"jti": "AT.gone", "exp": NOW - 1})

        assert store.prune(NOW) == 6
        assert store.consume_code("old", NOW) is None and store.consume_code("live", NOW) is not None
        assert store.use_assertion_jti("web", "old", NOW + 5) is True
        assert store.use_assertion_jti("web", "live", NOW + 5) is False
        assert [t.jti for t in store.list_tokens()] == ["AT.live"]
        assert sorted(t.id for t in store.list_refresh_tokens()) == ["r-b1", "r-b2"]
        assert first not in [c.seq for c in store.changes_since(0)]
        assert store.last_change_seq() == last
        assert store.prune(NOW) == 0

    def test_log_retention(self, store: Store) -> None:
        """System-log events older than the retention go; newer ones and the rest of the log stay. Without a
        retention nothing in the log is deleted."""
        old = store.append_log({"eventType": "old"}, NOW - 91 * 86400)
        kept = store.append_log({"eventType": "kept"}, NOW - 89 * 86400)
        assert store.prune(NOW) == 0
        assert store.prune(NOW, log_retention=90 * 86400) == 1
        seqs = [r.seq for r in store.query_logs(LogQuery(since=0, limit=10))]
        assert old not in seqs and kept in seqs
