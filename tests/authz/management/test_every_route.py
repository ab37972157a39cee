"""Issue 4, "Done when": every management route refuses a missing or wrong admin token, answers Okta's
not-found error for an object that does not exist, and E0000022 for a method it lacks, always as
Okta's error object. The routes are read from ``management_routes`` itself, so a new route is covered."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import httpx
import pytest
from starlette.routing import Route

from authz.management import management_routes
from tests.authz.management.kit import ADMIN_TOKEN, Api, build_context

METHODS = ("GET", "POST", "PUT", "DELETE")
MISSING = "nope0000000000000"
ERROR_KEYS = {"errorCode", "errorSummary", "errorLink", "errorId", "errorCauses"}


def route_paths() -> list[str]:
    with tempfile.TemporaryDirectory() as folder:
        ctx, _, _ = build_context(Path(folder))
        paths = [r.path for r in management_routes(ctx) if isinstance(r, Route)]
        ctx.store.close()
    return paths


PATHS = route_paths()


def concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", MISSING, path)


def okta_error(response: httpx.Response) -> str:
    body = response.json()
    assert isinstance(body, dict) and set(body) >= ERROR_KEYS, response.text
    return str(body["errorCode"])


def test_the_route_table_is_not_empty() -> None:
    """The sweep below covers the API's routes (servers, apps, users, groups, tokens)."""
    assert len(PATHS) > 30
    for prefix in ("/api/v1/authorizationServers", "/api/v1/apps", "/api/v1/users", "/api/v1/groups"):
        assert prefix in PATHS


@pytest.mark.parametrize("path", PATHS)
async def test_every_route_needs_the_admin_token(api: Api, path: str) -> None:
    """No token, a wrong token or another scheme: 401 E0000011 for every method, before anything else."""
    for method in METHODS:
        for headers in ({"Authorization": ""}, {"Authorization": "SSWS wrong-token"},
                        {"Authorization": f"Bearer {ADMIN_TOKEN}"}):
            response = await api.client.request(method, concrete(path), json={}, headers=headers)
            assert response.status_code == 401, (method, headers, response.text)
            assert okta_error(response) == "E0000011"


@pytest.mark.parametrize("path", PATHS)
async def test_every_route_answers_missing_objects_and_wrong_methods_as_okta(api: Api, path: str) -> None:
    """With the admin token and ids that do not exist: each method answers 404 E0000007 (400 E0000001 when
    the body is checked first) or, for a method the route lacks, 405 E0000022; a route with an id answers
    404 to at least one method, and every route serves at least one method."""
    outcomes: dict[str, tuple[int, str]] = {}
    for method in METHODS:
        response = await api.client.request(method, concrete(path), json={})
        if response.status_code < 300:
            outcomes[method] = (response.status_code, "")
            continue
        outcomes[method] = (response.status_code, okta_error(response))
    assert set(outcomes.values()) <= {(404, "E0000007"), (405, "E0000022"), (400, "E0000001"), (200, "")}, outcomes
    assert any(status != 405 for status, _ in outcomes.values()), outcomes
    if "{" in path:
        assert (404, "E0000007") in outcomes.values(), outcomes
    assert api.watermarks() == [], "a refused request must change nothing"
