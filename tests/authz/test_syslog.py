"""The system log's event shape (spec §6.1) and its refusal to hold secrets (issue 3)."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from authz.store.base import LogRecord
from authz.store.sqlite import SqliteStore
from authz.syslog import (
    REDACTED,
    SecretInLogError,
    SystemLog,
    check_no_secrets,
    find_secrets,
    format_published,
    make_event,
    parse_published,
    redact_secrets,
)

NOW = 1_700_000_000.123456
JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    s = SqliteStore(f"sqlite:///{tmp_path / 'log.db'}")
    yield s
    s.close()


def stored(store: SqliteStore) -> list[LogRecord]:
    return list(store.iter_logs())


class TestMakeEvent:
    def test_has_every_top_level_field_of_okta_logevent(self) -> None:
        """An event carries the fields of Okta's LogEvent (spec §6.1)."""
        event = make_event("app.oauth2.as.token.grant", now=NOW)
        for key in ("uuid", "published", "eventType", "version", "severity", "displayMessage", "actor",
                    "client", "outcome", "target", "transaction", "debugContext", "authenticationContext",
                    "securityContext", "request", "legacyEventType"):
            assert key in event
        assert event["version"] == "0"
        assert event["eventType"] == "app.oauth2.as.token.grant"
        assert set(event["actor"]) >= {"id", "type", "alternateId", "displayName"}
        assert event["debugContext"] == {"debugData": {}}

    def test_published_is_rfc3339_utc_with_milliseconds(self) -> None:
        """``published`` is RFC 3339 in UTC with milliseconds and a Z (spec §6.1's example)."""
        event = make_event("x", now=NOW)
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", event["published"])
        assert event["published"] == "2023-11-14T22:13:20.123Z"
        assert parse_published(event["published"]) == pytest.approx(1_700_000_000.123)

    def test_parse_published_accepts_offsets(self) -> None:
        """An RFC 3339 time with an offset means the same instant as its UTC form."""
        assert parse_published("2023-11-14T23:13:20+01:00") == parse_published("2023-11-14T22:13:20Z")
        assert format_published(0) == "1970-01-01T00:00:00.000Z"

    def test_outcome_reason_is_cut_to_255_characters(self) -> None:
        """``outcome.reason`` is at most 255 characters (spec §6.1)."""
        event = make_event("x", now=NOW, result="FAILURE", reason="r" * 400)
        assert event["outcome"] == {"result": "FAILURE", "reason": "r" * 255}

    def test_rejects_unknown_severity_and_result(self) -> None:
        """Severity and result take only the values Okta documents."""
        with pytest.raises(ValueError, match="severity"):
            make_event("x", now=NOW, severity="FATAL")
        with pytest.raises(ValueError, match="outcome result"):
            make_event("x", now=NOW, result="OK")

    def test_client_actor_targets_and_debug_data_are_carried(self) -> None:
        """The caller's actor, client, targets and debugData appear in Okta's shape."""
        event = make_event(
            "app.oauth2.as.token.grant.access_token", now=NOW,
            actor={"id": "0oa1", "type": "PublicClientApp", "alternateId": "c1", "displayName": "Orders"},
            client={"id": "c1", "ipAddress": "10.0.0.1", "userAgent": "curl/8"},
            targets=[{"id": "AT.1.x", "type": "access_token", "detailEntry": {"expires": "..."}}],
            debug_data={"grant_type": "client_credentials"},
        )
        assert event["actor"]["type"] == "PublicClientApp"
        assert event["client"]["id"] == "c1"
        assert event["client"]["userAgent"]["rawUserAgent"] == "curl/8"
        assert event["request"]["ipChain"] == [{"ip": "10.0.0.1", "version": "V4"}]
        assert event["target"][0]["id"] == "AT.1.x"
        assert event["target"][0]["alternateId"] is None
        assert event["debugContext"]["debugData"] == {"grant_type": "client_credentials"}

    def test_uuid_is_unique_per_event(self) -> None:
        """Two events never share a uuid."""
        assert make_event("x", now=NOW)["uuid"] != make_event("x", now=NOW)["uuid"]


class TestRedaction:
    @pytest.mark.parametrize("key", ["client_secret", "password", "access_token", "refresh_token", "id_token",
                                     "code", "client_assertion", "clientSecret", "code_verifier"])
    def test_secret_keys_are_found_anywhere(self, key: str) -> None:
        """A secret-bearing key is found at any depth, in dicts and lists."""
        event = make_event("x", now=NOW, debug_data={"nested": [{"ok": 1, key: "s3cr3t-value"}]})
        assert find_secrets(event) == [f"debugContext.debugData.nested[0].{key}"]
        with pytest.raises(SecretInLogError) as info:
            check_no_secrets(event)
        assert "s3cr3t-value" not in str(info.value)

    def test_jwt_values_are_found_under_any_key(self) -> None:
        """A JWT-shaped string is a token value wherever it appears."""
        event = make_event("x", now=NOW, display_message=f"got {JWT} from client")
        assert find_secrets(event) == ["displayMessage"]
        assert redact_secrets(event)["displayMessage"] == f"got {REDACTED} from client"

    def test_clean_event_has_no_findings(self) -> None:
        """Token ids, scopes and grant types are not secrets."""
        event = make_event("x", now=NOW, targets=[{"id": "AT.1f.abc", "type": "access_token"}],
                           debug_data={"grant_type": "password", "requested_scopes": "a b",
                                       "code_challenge_method": "S256", "password": None})
        assert find_secrets(event) == []
        check_no_secrets(event)

    def test_configuration_objects_under_token_keys_are_not_secrets(self) -> None:
        """A rule's actions.token and an app's refreshToken settings are configuration, not secrets."""
        change = {"from": {"actions": {"token": {"accessTokenLifetimeMinutes": 60}}},
                  "to": {"refreshToken": {"rotationType": "ROTATE", "leeway": 0}, "code": {"client_secret": "s"}}}
        event = make_event("policy.rule.update", now=NOW, targets=[{"id": "0pr1", "changeDetails": change}])
        assert find_secrets(event) == ["target[0].changeDetails.to.code.client_secret"]
        clean = redact_secrets(event)["target"][0]["changeDetails"]
        assert clean["from"]["actions"]["token"] == {"accessTokenLifetimeMinutes": 60}
        assert clean["to"]["refreshToken"] == {"rotationType": "ROTATE", "leeway": 0}
        assert clean["to"]["code"] == {"client_secret": REDACTED}

    def test_redaction_replaces_values_and_keeps_the_rest(self) -> None:
        """Redaction replaces only the secret values and leaves the input untouched."""
        event = make_event("x", now=NOW, debug_data={"client_secret": "abc", "grant_type": "password"})
        clean = redact_secrets(event)
        assert clean["debugContext"]["debugData"] == {"client_secret": REDACTED, "grant_type": "password"}
        assert event["debugContext"]["debugData"]["client_secret"] == "abc"


class TestSystemLog:
    def test_record_appends_in_the_transaction_and_writes_one_json_line(self, store: SqliteStore) -> None:
        """record() stores the event with its epoch and writes the same event as one JSON line."""
        stream = io.StringIO()
        log = SystemLog(stream)
        event = make_event("app.oauth2.as.token.grant", now=NOW)
        with store.transaction() as tx:
            log.record(tx, event)
        records = stored(store)
        assert len(records) == 1
        assert records[0].event == event
        assert records[0].published == pytest.approx(NOW, abs=0.001)
        lines = stream.getvalue().splitlines()
        assert len(lines) == 1
        assert json.loads(lines[0]) == event

    def test_event_rolls_back_with_its_transaction(self, store: SqliteStore) -> None:
        """An event recorded in a transaction that fails is not kept (it belongs to the decision)."""
        log = SystemLog(None)

        def failing_decision() -> None:
            with store.transaction() as tx:
                log.record(tx, make_event("x", now=NOW))
                raise RuntimeError("boom")

        with pytest.raises(RuntimeError, match="boom"):
            failing_decision()
        assert stored(store) == []

    def test_record_scrubs_secrets_before_storing_or_printing(self, store: SqliteStore) -> None:
        """A secret handed to record() reaches neither the store nor stdout."""
        stream = io.StringIO()
        log = SystemLog(stream)
        event = make_event("x", now=NOW, debug_data={"refresh_token": "rt-value", "note": JWT})
        with store.transaction() as tx:
            log.record(tx, event, published=NOW)
        assert "rt-value" not in stream.getvalue() and JWT not in stream.getvalue()
        record = stored(store)[0]
        assert find_secrets(record.event) == []
        assert "rt-value" not in json.dumps(record.event)
        assert log.redactions == 1

    def test_stream_none_only_stores(self, store: SqliteStore) -> None:
        """With no stream the event is still stored."""
        with store.transaction() as tx:
            SystemLog(None).record(tx, make_event("x", now=NOW))
        assert len(stored(store)) == 1


# The fast checks ``SystemLog.record`` runs on every event (issue 11: the full scan cost more than the RS256
# signature of the token it logs) must agree with the full ones on every shape an event can take.
_JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"
_keys = st.sampled_from(["id", "type", "client_secret", "clientSecret", "Client-Secret", "TOKEN", "code",
                         "scope", "returned_token_types", "password", "detailEntry"]) | st.text(max_size=6)
_scalars = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
            | st.sampled_from(["", "[REDACTED]", _JWT, f"Bearer {_JWT}", "eyJ.eyJ.x", "x" * 1025])
            | st.text(max_size=8))
_events = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4) | st.tuples(inner, inner)
                       | st.dictionaries(_keys, inner, max_size=4), max_leaves=25)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(_events)
def test_the_fast_secret_check_agrees_with_find_secrets(value: object) -> None:
    from authz.syslog import _is_clean, find_secrets
    assert _is_clean(value) == (not find_secrets({"value": value}))


@settings(max_examples=300, deadline=None, derandomize=True)
@given(_events, st.integers(min_value=0, max_value=120))
def test_the_fast_bounds_check_agrees_with_bound_strings(value: object, items: int) -> None:
    from authz.syslog import _within_bounds, bound_strings
    wide = [value] * items
    # bound_strings turns tuples into lists: compare what is written, the JSON
    assert _within_bounds(wide) == (json.dumps(bound_strings(wide)) == json.dumps(wide))
