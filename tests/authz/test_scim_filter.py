"""The SCIM filter subset of the System Log API (spec §6.3, RFC 7644 §3.4.2.2)."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from authz.scim_filter import And, Compare, FilterError, Not, Or, Present, matches, parse_filter

EVENT: dict[str, Any] = {
    "eventType": "app.oauth2.as.token.grant",
    "outcome": {"result": "FAILURE", "reason": "no_matching_policy"},
    "actor": {"id": "0oa1", "type": "PublicClientApp"},
    "client": {"id": "svc", "ipAddress": "10.0.0.1"},
    "target": [{"id": "aus1", "type": "AuthorizationServer"}, {"id": "AT.1f.x", "type": "access_token"}],
    "severity": "WARN",
    "debugContext": {"debugData": {"grant_type": "client_credentials", "requestUri": "/oauth2/aus1/v1/token",
                                   "count": 3}},
}


def check(text: str, event: dict[str, Any] = EVENT) -> bool:
    return matches(parse_filter(text), event)


class TestParse:
    def test_comparison_and_precedence(self) -> None:
        """and binds tighter than or (RFC 7644 §3.4.2.2 precedence)."""
        tree = parse_filter('eventType eq "a" or actor.id eq "b" and client.id eq "c"')
        assert tree == Or(Compare("eventType", "eq", "a"),
                          And(Compare("actor.id", "eq", "b"), Compare("client.id", "eq", "c")))

    def test_parentheses_and_not(self) -> None:
        """Parentheses group and not negates a group."""
        tree = parse_filter('not (eventType eq "a" or eventType eq "b") and severity pr')
        assert tree == And(Not(Or(Compare("eventType", "eq", "a"), Compare("eventType", "eq", "b"))),
                           Present("severity"))

    def test_attribute_names_and_operators_are_case_insensitive(self) -> None:
        """Attribute names and operators are case-insensitive (RFC 7644 §3.4.2.2)."""
        assert parse_filter('EVENTTYPE EQ "x" AND Outcome.Result Sw "F"') == And(
            Compare("eventType", "eq", "x"), Compare("outcome.result", "sw", "F"))

    def test_values_are_json_literals(self) -> None:
        """Values are JSON strings (with escapes), numbers, booleans or null."""
        assert parse_filter(r'displayMessage eq "say \"hi\" \u00e9"') == Compare("displayMessage", "eq", 'say "hi" é')
        assert parse_filter("debugContext.debugData.count gt 2") == Compare("debugContext.debugData.count", "gt", 2)
        assert parse_filter("outcome.reason eq null") == Compare("outcome.reason", "eq", None)

    @pytest.mark.parametrize("text", [
        "", "   ", 'eventType eq', 'eventType "x"', 'eventType lk "x"', 'eventType eq "x" and',
        '(eventType eq "x"', 'eventType eq "x")', 'target[id eq "x"]', 'eventType eq x', "eventType co 3",
        'eventType eq "unterminated', 'unknown.attr eq "x"', 'published gt "2020-01-01T00:00:00Z"',
        "not eventType eq \"x\"", 'eventType eq "x" eventType eq "y"', 'debugContext.debugData. eq "x"',
        "(" * 40 + 'eventType eq "x"' + ")" * 40, 'eventType gt true',
    ])
    def test_invalid_filters_are_rejected_with_e0000053(self, text: str) -> None:
        """Malformed filters, unknown attributes, published and value paths are E0000053 (spec §6.3)."""
        with pytest.raises(FilterError) as info:
            parse_filter(text)
        assert info.value.code == "E0000053"

    def test_contains_on_request_uri_is_e0000031(self) -> None:
        """co on debugData url or requestUri is rejected with E0000031 (spec §6.3)."""
        for path in ("debugContext.debugData.requestUri", "debugContext.debugData.url"):
            with pytest.raises(FilterError) as info:
                parse_filter(f'{path} co "/token"')
            assert info.value.code == "E0000031"
        assert check('debugContext.debugData.requestUri eq "/oauth2/aus1/v1/token"')

    def test_overlong_filter_is_rejected(self) -> None:
        """A filter beyond the length bound is refused before parsing."""
        with pytest.raises(FilterError):
            parse_filter('eventType eq "' + "x" * 5000 + '"')


class TestMatch:
    @pytest.mark.parametrize(("text", "expected"), [
        ('eventType eq "app.oauth2.as.token.grant"', True),
        ('eventType eq "APP.OAUTH2.AS.TOKEN.GRANT"', False),
        ('eventType sw "app.oauth2.as."', True),
        ('eventType ew ".grant"', True),
        ('eventType co "token"', True),
        ('eventType co "revoke"', False),
        ('outcome.result eq "FAILURE"', True),
        ('outcome.reason eq "no_matching_policy"', True),
        ('actor.id eq "0oa1"', True),
        ('client.id eq "svc"', True),
        ('client.id ne "svc"', False),
        ('target.id eq "aus1"', True),
        ('target.id eq "AT.1f.x"', True),
        ('target.id eq "other"', False),
        ('target.id ne "aus1"', False),
        ('target.type sw "access"', True),
        ('eventType eq "x" or client.id eq "svc"', True),
        ('eventType sw "app" and outcome.result eq "SUCCESS"', False),
        ('not (outcome.result eq "SUCCESS")', True),
        ("debugContext.debugData.count ge 3", True),
        ("debugContext.debugData.count lt 3", False),
        ('debugContext.debugData.grant_type eq "client_credentials"', True),
        ("debugContext.debugData.missing pr", False),
        ("severity pr", True),
        ("outcome.reason eq null", False),
        ('client.ipAddress eq "10.0.0.1"', True),
    ])
    def test_matches_event(self, text: str, expected: bool) -> None:
        """Each operator and attribute matches the LogEvent as SCIM defines it."""
        assert check(text) is expected

    def test_missing_attribute_equals_null(self) -> None:
        """An absent attribute matches eq null and no string comparison."""
        event = {"eventType": "x", "outcome": {"result": "SUCCESS", "reason": None}}
        assert check("outcome.reason eq null", event)
        assert not check('outcome.reason sw ""', event)
        assert not check('actor.id eq "a"', event)


_values = st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=20)
_paths = st.sampled_from(["eventType", "outcome.result", "outcome.reason", "actor.id", "client.id", "target.id"])
_ops = st.sampled_from(["eq", "ne", "sw", "co", "ew"])


def _leaf(path: str, op: str, value: str) -> str:
    return f"{path} {op} {json.dumps(value)}"


_filters = st.recursive(
    st.builds(_leaf, _paths, _ops, _values),
    lambda inner: st.one_of(
        st.builds(lambda a, b: f"({a}) and ({b})", inner, inner),
        st.builds(lambda a, b: f"({a}) or ({b})", inner, inner),
        st.builds(lambda a: f"not ({a})", inner),
    ),
    max_leaves=8,
)


class TestProperties:
    @given(_paths, _ops, _values, _values)
    def test_string_operators_agree_with_python(self, path: str, op: str, value: str, actual: str) -> None:
        """eq, ne, sw, co and ew on a string attribute behave as Python's ==, startswith, in, endswith."""
        event: dict[str, Any] = {}
        node: Any = event
        parts = path.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        if path == "target.id":
            event["target"] = [{"id": actual}]
        else:
            node[parts[-1]] = actual
        expected = {"eq": actual == value, "ne": actual != value, "sw": actual.startswith(value),
                    "co": value in actual, "ew": actual.endswith(value)}[op]
        assert check(_leaf(path, op, value), event) is expected

    @given(_filters)
    def test_generated_filters_parse(self, text: str) -> None:
        """Every filter built from the grammar parses, and its negation matches the complement."""
        tree = parse_filter(text)
        negated = parse_filter(f"not ({text})")
        assert matches(negated, EVENT) is not matches(tree, EVENT)

    @given(st.text(max_size=60))
    def test_arbitrary_text_never_crashes(self, text: str) -> None:
        """Any input either parses or raises FilterError, never another exception."""
        with contextlib.suppress(FilterError):
            parse_filter(text)
