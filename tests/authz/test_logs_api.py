"""``GET /api/v1/logs`` in-process against a real SQLite store (spec §6.3, issue 3 "System log")."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from starlette.applications import Starlette

from authz.context import CoreContext
from authz.errors import ScopegateError
from authz.logs_api import encode_cursor, logs_routes, parse_search, run_search
from authz.responses import handle_scopegate_error
from authz.revocation import RevocationState
from authz.store.sqlite import SqliteStore
from authz.syslog import SystemLog, make_event
from config.loader import parse_config
from tests.clock import Clock

TOKEN = "admin-token-0123456789abcdef"
T0 = 1_800_000_000.0
AUTH = {"Authorization": f"SSWS {TOKEN}"}


class Env:
    def __init__(self, store: SqliteStore, client: httpx.AsyncClient, clock: Clock) -> None:
        self.store = store
        self.client = client
        self.clock = clock
        self.log = SystemLog(None)

    def add(self, event_type: str, at: float, **kwargs: Any) -> dict[str, Any]:
        event = make_event(event_type, now=at, **kwargs)
        with self.store.transaction() as tx:
            self.log.record(tx, event)
        return event

    async def get(self, **params: str) -> httpx.Response:
        return await self.client.get("/api/v1/logs", params=params, headers=AUTH)


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    store = SqliteStore(f"sqlite:///{tmp_path / 'logs.db'}")
    clock = Clock(T0)
    config = parse_config(f"issuer: http://core.test\nadminTokens: [{TOKEN}]\n", "test", {})
    ctx = CoreContext(config=config, store=store, syslog=SystemLog(None), revocation=RevocationState({}), now=clock)
    app = Starlette(routes=logs_routes(ctx), exception_handlers={ScopegateError: handle_scopegate_error})
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://core.test") as client:
        yield Env(store, client, clock)
    store.close()


def links(response: httpx.Response) -> dict[str, str]:
    out: dict[str, str] = {}
    for value in response.headers.get_list("link"):
        match = re.fullmatch(r'<([^>]*)>; rel="(\w+)"', value)
        assert match, value
        out[match.group(2)] = match.group(1)
    return out


def next_params(response: httpx.Response) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(links(response)["next"]).query).items()}


def types(response: httpx.Response) -> list[str]:
    return [e["eventType"] for e in response.json()]


def seed(env: Env) -> None:
    env.add("app.oauth2.as.token.grant", T0 - 50, result="FAILURE", reason="no_matching_policy",
            client={"id": "svc"}, actor={"id": "0oa1", "type": "PublicClientApp"},
            display_message="Policy evaluation failed")
    env.add("app.oauth2.as.token.grant.access_token", T0 - 40, client={"id": "svc"},
            targets=[{"id": "AT.1.x", "type": "access_token"}])
    env.add("app.oauth2.as.token.revoke", T0 - 30, client={"id": "web"}, targets=[{"id": "AT.1.x"}])
    env.add("app.oauth2.as.authorize.code", T0 - 20, client={"id": "web"}, display_message="user-agent e2e-check")
    env.add("oauth2.as.updated", T0 - 10, targets=[{"id": "aus1", "type": "AuthorizationServer"}])


class TestAuthentication:
    @pytest.mark.parametrize("header", [None, "SSWS wrong-token-0123456789", "Bearer " + TOKEN, "SSWS", TOKEN])
    async def test_missing_or_bad_admin_token_is_e0000011(self, env: Env, header: str | None) -> None:
        """Without the admin token the API answers 401 E0000011 in Okta's error shape."""
        headers = {"Authorization": header} if header is not None else {}
        response = await env.client.get("/api/v1/logs", headers=headers)
        assert response.status_code == 401
        body = response.json()
        assert body["errorCode"] == "E0000011"
        assert set(body) == {"errorCode", "errorSummary", "errorLink", "errorId", "errorCauses"}

    async def test_sdk_form_without_space_is_accepted(self, env: Env) -> None:
        """Okta's SDK sends ``SSWS<token>`` with no space; it is accepted."""
        response = await env.client.get("/api/v1/logs", headers={"Authorization": f"SSWS{TOKEN}"})
        assert response.status_code == 200
        assert response.json() == []

    async def test_other_methods_are_e0000022(self, env: Env) -> None:
        """POST is not a method of the logs API."""
        response = await env.client.post("/api/v1/logs", headers=AUTH)
        assert response.status_code == 405
        assert response.json()["errorCode"] == "E0000022"


class TestQuery:
    async def test_default_returns_events_ascending_with_self_and_next(self, env: Env) -> None:
        """Without parameters: the last 7 days ascending, a self link, and (polling) a next link."""
        seed(env)
        env.add("too.old", T0 - 8 * 86400)
        response = await env.get()
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/json")
        assert types(response) == ["app.oauth2.as.token.grant", "app.oauth2.as.token.grant.access_token",
                                   "app.oauth2.as.token.revoke", "app.oauth2.as.authorize.code",
                                   "oauth2.as.updated"]
        assert set(links(response)) == {"self", "next"}

    async def test_polling_next_link_delivers_later_events(self, env: Env) -> None:
        """Following next while polling gives an empty page, then the events persisted since."""
        seed(env)
        first = await env.get()
        empty = await env.client.get(links(first)["next"], headers=AUTH)
        assert empty.json() == []
        assert "next" in links(empty)
        env.add("app.oauth2.as.token.revoke", T0 - 1)
        later = await env.client.get(links(empty)["next"], headers=AUTH)
        assert types(later) == ["app.oauth2.as.token.revoke"]

    async def test_bounded_pages_end_without_next(self, env: Env) -> None:
        """With since and until, pages are finite and the last one has no next link."""
        seed(env)
        params = {"since": "2027-01-15T07:00:00Z", "until": "2027-01-15T08:00:00Z", "limit": "2"}
        pages: list[list[str]] = []
        response = await env.get(**params)
        while True:
            assert response.status_code == 200
            pages.append(types(response))
            if "next" not in links(response):
                break
            response = await env.client.get(links(response)["next"], headers=AUTH)
        assert [len(p) for p in pages] == [2, 2, 1]
        assert pages[0][0] == "app.oauth2.as.token.grant"

    async def test_exact_multiple_of_limit_has_no_empty_last_page(self, env: Env) -> None:
        """A bounded result of exactly limit events is one page without next."""
        env.add("a", T0 - 5)
        env.add("b", T0 - 4)
        response = await env.get(since="2027-01-15T07:00:00Z", until="2027-01-15T08:00:00Z", limit="2")
        assert types(response) == ["a", "b"]
        assert "next" not in links(response)

    async def test_descending_order_and_paging(self, env: Env) -> None:
        """DESCENDING returns newest first, and its next page continues downwards within since."""
        seed(env)
        env.add("too.old", T0 - 3600)
        response = await env.get(sortOrder="DESCENDING", limit="3", since="2027-01-15T07:50:00Z")
        assert types(response) == ["oauth2.as.updated", "app.oauth2.as.authorize.code", "app.oauth2.as.token.revoke"]
        follow = next_params(response)
        assert "since" not in follow and follow["sortOrder"] == "DESCENDING"
        second = await env.client.get(links(response)["next"], headers=AUTH)
        assert types(second) == ["app.oauth2.as.token.grant.access_token", "app.oauth2.as.token.grant"]
        assert "next" not in links(second)

    async def test_since_and_until_bound_published(self, env: Env) -> None:
        """since is inclusive and until exclusive on published."""
        seed(env)
        since = "2027-01-15T07:59:20.000Z"  # T0 - 40
        until = "2027-01-15T07:59:40.000Z"  # T0 - 20
        response = await env.get(since=since, until=until)
        assert types(response) == ["app.oauth2.as.token.grant.access_token", "app.oauth2.as.token.revoke"]

    async def test_limit_zero_returns_an_empty_page(self, env: Env) -> None:
        """limit=0 answers an empty array and a next link to the first event."""
        seed(env)
        response = await env.get(limit="0", until="2027-01-15T08:00:00Z")
        assert response.json() == []
        nxt = await env.client.get(links(response)["next"].replace("limit=0", "limit=1"), headers=AUTH)
        assert types(nxt) == ["app.oauth2.as.token.grant"]


class TestFilterAndKeywords:
    @pytest.mark.parametrize(("expression", "expected"), [
        ('eventType eq "app.oauth2.as.token.revoke"', ["app.oauth2.as.token.revoke"]),
        ('outcome.result eq "FAILURE"', ["app.oauth2.as.token.grant"]),
        ('outcome.reason eq "no_matching_policy"', ["app.oauth2.as.token.grant"]),
        ('actor.id eq "0oa1"', ["app.oauth2.as.token.grant"]),
        ('client.id eq "web" and eventType sw "app.oauth2.as.authorize"', ["app.oauth2.as.authorize.code"]),
        ('target.id eq "AT.1.x"', ["app.oauth2.as.token.grant.access_token", "app.oauth2.as.token.revoke"]),
        ('eventType ew ".updated" or eventType co "revoke"', ["app.oauth2.as.token.revoke", "oauth2.as.updated"]),
    ])
    async def test_filter_selects_events(self, env: Env, expression: str, expected: list[str]) -> None:
        """A SCIM filter selects the events it describes."""
        seed(env)
        response = await env.get(filter=expression)
        assert response.status_code == 200
        assert types(response) == expected

    async def test_filtered_paging_neither_skips_nor_repeats(self, env: Env) -> None:
        """Pages of a filtered search, followed by next, give every match exactly once."""
        for i in range(30):
            env.add("match" if i % 3 == 0 else "other", T0 - 100 + i, display_message=str(i))
        seen: list[str] = []
        response = await env.get(filter='eventType eq "match"', limit="3", until="2027-01-15T08:00:00Z")
        while True:
            seen += [e["displayMessage"] for e in response.json()]
            if "next" not in links(response):
                break
            response = await env.client.get(links(response)["next"], headers=AUTH)
        assert seen == [str(i) for i in range(0, 30, 3)]

    async def test_q_keywords_all_match_case_insensitively(self, env: Env) -> None:
        """q keywords must all occur, case-insensitively; hyphenated values match by their parts."""
        seed(env)
        assert types(await env.get(q="POLICY evaluation")) == ["app.oauth2.as.token.grant"]
        assert types(await env.get(q="policy revoke")) == []
        assert types(await env.get(q="e2e")) == ["app.oauth2.as.authorize.code"]

    async def test_invalid_filter_is_e0000053(self, env: Env) -> None:
        """A filter that does not parse is 400 E0000053 with the reason in errorCauses."""
        response = await env.get(filter='eventType eq "x" and')
        assert response.status_code == 400
        body = response.json()
        assert body["errorCode"] == "E0000053"
        assert body["errorCauses"][0]["errorSummary"].startswith("filter:")

    async def test_published_in_filter_is_e0000053(self, env: Env) -> None:
        """published cannot be used in a filter (spec §6.3)."""
        response = await env.get(filter='published gt "2027-01-01T00:00:00Z"')
        assert response.json()["errorCode"] == "E0000053"

    async def test_contains_on_request_uri_is_e0000031(self, env: Env) -> None:
        """co on debugData.requestUri is E0000031 (spec §6.3)."""
        response = await env.get(filter='debugContext.debugData.requestUri co "/token"')
        assert response.status_code == 400
        assert response.json()["errorCode"] == "E0000031"


class TestBadParameters:
    @pytest.mark.parametrize("params", [
        {"limit": "1001"}, {"limit": "-1"}, {"limit": "ten"}, {"sortOrder": "UP"},
        {"since": "yesterday"}, {"until": "2027-13-01T00:00:00Z"},
        {"q": " ".join(["k"] * 11)}, {"q": "x" * 41},
        {"after": "!!not-a-cursor"}, {"since": "2027-01-15T07:00:00Z", "after": encode_cursor(1, None)},
        {"since": "2027-01-15T08:00:00Z", "until": "2027-01-15T07:00:00Z"},
    ])
    async def test_bad_parameters_are_e0000001(self, env: Env, params: dict[str, str]) -> None:
        """Out-of-range or malformed parameters are 400 E0000001 naming the parameter."""
        response = await env.get(**params)
        assert response.status_code == 400
        body = response.json()
        assert body["errorCode"] == "E0000001"
        assert body["errorCauses"]

    async def test_since_older_than_180_days_is_e0000053(self, env: Env) -> None:
        """since more than 180 days ago is E0000053 (spec §6.3)."""
        response = await env.get(since="2026-01-01T00:00:00Z")
        assert response.status_code == 400
        assert response.json()["errorCode"] == "E0000053"

    async def test_ten_keywords_of_forty_characters_are_accepted(self, env: Env) -> None:
        """The q limits are inclusive: 10 keywords of 40 characters are fine."""
        response = await env.get(q=" ".join(["k" * 40] * 10))
        assert response.status_code == 200


class TestScanBudget:
    async def test_sparse_filter_pages_through_the_budget_without_losing_events(self, env: Env) -> None:
        """A filter that matches rarely answers short pages with a cursor; following it finds every match."""
        for i in range(40):
            env.add("needle" if i in (3, 37) else "hay", T0 - 100 + i)
        search = parse_search({"filter": 'eventType eq "needle"', "until": "2027-01-15T08:00:00Z"}, T0)
        found, cursor, more = run_search(env.store, search, budget=10)
        assert [e["eventType"] for e in found] == ["needle"]
        assert more and cursor is not None
        collected = list(found)
        while more:
            search = parse_search({"filter": 'eventType eq "needle"', "until": "2027-01-15T08:00:00Z",
                                   "after": encode_cursor(cursor or 0, search.since)}, T0)
            found, cursor, more = run_search(env.store, search, budget=10)
            collected += found
        assert len(collected) == 2
