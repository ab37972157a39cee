"""The change-feed poller keeps the revocation state in step with a real SQLite store (DESIGN §4)."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator
from pathlib import Path

import pytest

from authz.feed import FeedPoller
from authz.jti import make_jti
from authz.revocation import RevocationState
from authz.store.base import Change
from authz.store.errors import StoreError
from authz.store.sqlite import SqliteStore
from tests.clock import Clock

ISS = "https://id.example.com/oauth2/aus1"
T0 = 1_800_000_000.0


class BreakableStore(SqliteStore):
    """The real SQLite store whose feed reads can be made to fail, as an unreachable database would."""

    broken = False

    def changes_since(self, seq: int, limit: int = 10000) -> list[Change]:
        if self.broken:
            raise StoreError("database is locked")
        return super().changes_since(seq, limit)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[BreakableStore]:
    s = BreakableStore(f"sqlite:///{tmp_path / 'feed.db'}")
    yield s
    s.close()


def token(seq: int, **extra: str) -> dict[str, str]:
    return {"iss": ISS, "jti": make_jti("AT", seq), "cid": "c1", "uid": "u1", **extra}


def poller_for(store: BreakableStore, clock: Clock, **kwargs: object) -> tuple[FeedPoller, RevocationState, io.StringIO]:
    state = RevocationState({ISS: "aus1"}, now=clock, max_staleness=5.0)
    log = io.StringIO()
    return FeedPoller(store, state, interval=0.01, log_stream=log, **kwargs), state, log  # type: ignore[arg-type]


class TestPollOnce:
    def test_applies_revocations_committed_in_the_store(self, store: BreakableStore) -> None:
        """A revocation committed in the store is revoked after one poll, and the state is fresh."""
        clock = Clock()
        poller, state, _ = poller_for(store, clock)
        assert poller.poll_once() == 0
        t = token(3)
        with store.transaction() as tx:
            tx.append_change("revoke_jti", {"as_id": "aus1", "jti": t["jti"], "exp": T0 + 3600})
        assert not state.is_revoked(t)
        clock.t += 1
        assert poller.poll_once() == 1
        assert state.is_revoked(t)
        assert state.last_seq == store.last_change_seq()
        assert state.age(T0 + 1) == 0

    def test_start_loads_the_whole_live_feed_across_pages(self, store: BreakableStore) -> None:
        """At start the poller reads every page of the feed; expired entries are read but not kept."""
        clock = Clock()
        with store.transaction() as tx:
            for i in range(25):
                tx.append_change("revoke_jti", {"as_id": "aus1", "jti": make_jti("AT", i),
                                                "exp": T0 + (3600 if i % 5 else -3600)})
            tx.append_change("watermark", {"scope": "user", "key": "u1", "before_seq": 100, "exp": T0 + 7200})
        poller, state, _ = poller_for(store, clock, page_size=4)
        assert poller.poll_once() == 26
        assert state.size() == 20 + 1
        assert state.is_revoked(token(200, uid="u2")) is False
        assert state.is_revoked(token(100))

    def test_watermark_then_fresh_token_is_valid(self, store: BreakableStore) -> None:
        """A token minted right after a watermark stays valid: no false positives."""
        clock = Clock()
        poller, state, _ = poller_for(store, clock)
        before = store.allocate_token_seq()
        with store.transaction() as tx:
            tx.append_change("watermark", {"scope": "client", "key": "c1",
                                           "before_seq": tx.current_token_seq(), "exp": T0 + 3600})
        after = store.allocate_token_seq()
        poller.poll_once()
        assert state.is_revoked(token(before))
        assert not state.is_revoked(token(after))

    def test_config_changes_reach_the_hook_and_are_not_revocations(self, store: BreakableStore) -> None:
        """A config entry is handed to on_config_change and revokes nothing."""
        seen: list[Change] = []
        poller, state, _ = poller_for(store, Clock(), on_config_change=seen.append)
        store.append_change("config", {"kind": "app", "id": "c1"})
        poller.poll_once()
        assert [c.data for c in seen] == [{"kind": "app", "id": "c1"}]
        assert state.size() == 0

    def test_failing_hook_does_not_stop_revocations(self, store: BreakableStore) -> None:
        """A hook that raises is logged; the revocation after it is still applied."""
        def hook(change: Change) -> None:
            raise RuntimeError("reload failed")

        poller, state, log = poller_for(store, Clock(), on_config_change=hook)
        t = token(1)
        store.append_change("config", {"kind": "app", "id": "c1"})
        store.append_change("revoke_jti", {"as_id": "aus1", "jti": t["jti"], "exp": T0 + 60})
        poller.poll_once()
        assert state.is_revoked(t)
        assert "reload failed" in log.getvalue()


class TestFailure:
    async def test_failing_read_keeps_state_and_goes_stale(self, store: BreakableStore) -> None:
        """An unreadable feed leaves the state as it was, logs one line, and the state goes stale."""
        clock = Clock()
        poller, state, log = poller_for(store, clock)
        t = token(1)
        store.append_change("revoke_jti", {"as_id": "aus1", "jti": t["jti"], "exp": T0 + 3600})
        await poller.poll_now()
        assert state.is_revoked(t)
        store.broken = True
        for _ in range(3):
            clock.t += 2
            await poller.poll_now()
        assert state.is_revoked(t)
        assert state.is_stale(clock.t)
        assert poller.failures == 3
        assert log.getvalue().count("\n") == 1, "one line when reads start failing, not one per attempt"
        store.broken = False
        await poller.poll_now()
        assert not state.is_stale(clock.t)
        assert "readable again" in log.getvalue()

    def test_poll_once_raises_for_its_caller(self, store: BreakableStore) -> None:
        """poll_once reports the failure to a caller who must know (the process start)."""
        poller, state, _ = poller_for(store, Clock())
        store.broken = True
        with pytest.raises(StoreError):
            poller.poll_once()
        assert state.is_stale(T0)


class TestRun:
    async def test_run_loop_applies_changes_and_stops(self, store: BreakableStore) -> None:
        """The loop picks up a change committed while it runs, and ends on stop()."""
        poller, state, _ = poller_for(store, Clock())
        task = asyncio.create_task(poller.run())
        t = token(4)
        await asyncio.to_thread(store.append_change, "revoke_jti",
                                {"as_id": "aus1", "jti": t["jti"], "exp": T0 + 3600})
        for _ in range(500):
            if state.is_revoked(t):
                break
            await asyncio.sleep(0.005)
        assert state.is_revoked(t)
        poller.stop()
        await asyncio.wait_for(task, 5)

    async def test_run_survives_failures(self, store: BreakableStore) -> None:
        """Read failures never end the loop; it recovers when the store does."""
        poller, state, _ = poller_for(store, Clock())
        store.broken = True
        task = asyncio.create_task(poller.run())
        for _ in range(500):
            if poller.failures >= 2:
                break
            await asyncio.sleep(0.005)
        assert not task.done()
        store.broken = False
        t = token(9)
        await asyncio.to_thread(store.append_change, "revoke_jti",
                                {"as_id": "aus1", "jti": t["jti"], "exp": T0 + 3600})
        for _ in range(500):
            if state.is_revoked(t):
                break
            await asyncio.sleep(0.005)
        assert state.is_revoked(t)
        poller.stop()
        await asyncio.wait_for(task, 5)
