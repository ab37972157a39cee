"""The failure windows behind the client-authentication back-off and the sign-in throttle."""

from __future__ import annotations

from authz.authfailures import ClientAuthFailures
from authz.failurewindow import IN_FLIGHT_WAIT, FailureWindows
from authz.lockout import Attempt, Refusal, SignInThrottle


def test_failures_up_to_the_limit_refuse_until_the_oldest_deciding_one_ages_out() -> None:
    windows = FailureWindows(window=60.0)
    limits = [("k", 3)]
    for t in (0.0, 10.0, 20.0):
        assert windows.admit(limits, t) == []
        windows.settle(limits, t, failed=True)
    refused = windows.admit(limits, 30.0)
    assert [(r.key, r.wait) for r in refused] == [("k", 30.0)]  # the failure at 0 leaves at 60
    assert windows.admit(limits, 60.5) == []


def test_attempts_in_flight_fill_the_limit_and_a_success_gives_the_slot_back() -> None:
    windows = FailureWindows(window=60.0)
    limits = [("k", 2)]
    assert windows.admit(limits, 0.0) == [] and windows.admit(limits, 0.0) == []
    assert [r.wait for r in windows.admit(limits, 0.0)] == [IN_FLIGHT_WAIT]
    windows.settle(limits, 0.1, failed=False)
    assert windows.admit(limits, 0.2) == []


def test_a_refused_key_takes_no_slot_on_the_others() -> None:
    windows = FailureWindows(window=60.0)
    windows.admit([("busy", 1)], 0.0)
    assert windows.admit([("free", 5), ("busy", 1)], 0.0)
    assert windows.admit([("free", 1)], 0.0) == []  # "free" was not reserved by the refused attempt


def test_touching_many_other_usernames_cannot_evict_an_attempt_in_flight() -> None:
    """The sign-in throttle kept its in-flight counts inside the bounded cache: a guesser who tried enough
    other usernames evicted the target's window with its in-flight count, and got a burst past the limit."""
    throttle = SignInThrottle(limit=2, source_limit=0, size=4)
    held = [throttle.begin("alice", None, 0.0) for _ in range(2)]
    assert all(isinstance(a, Attempt) for a in held)
    for i in range(20):
        attempt = throttle.begin(f"user{i}", None, 0.0)
        assert isinstance(attempt, Attempt)
        throttle.finish(attempt, failed=True, now=0.0)
    assert isinstance(throttle.begin("alice", None, 0.0), Refusal)


def test_the_sign_in_lock_is_reported_once_when_the_limit_is_reached() -> None:
    throttle = SignInThrottle(limit=2, source_limit=0)
    outcomes = []
    for _ in range(2):
        attempt = throttle.begin("bob", "10.0.0.1", 0.0)
        assert isinstance(attempt, Attempt)
        outcomes.append(throttle.finish(attempt, failed=True, now=0.0))
    assert outcomes == [False, True]
    refusal = throttle.begin("bob", "10.0.0.1", 1.0)
    assert isinstance(refusal, Refusal) and refusal.scope == "user" and refusal.retry_after == 899


def test_client_auth_back_off_waits_for_the_longest_refusing_key() -> None:
    failures = ClientAuthFailures(limit=1, source_limit=1, window=60.0)
    assert failures.reserve("svc", "10.0.0.1", 0.0) is None
    failures.settle("svc", "10.0.0.1", 0.0, failed=True)
    assert failures.reserve("svc", "10.0.0.1", 30.0) == 30.0
    assert failures.reserve("other", "10.0.0.2", 30.0) is None
