"""Issue 8 item 14: the management API's JSON bodies are bounded in nesting depth and size.

Deeply nested JSON made ``json.loads`` raise RecursionError, which escaped as a 500 with a traceback.
Okta answers a body it cannot read with 400 E0000003 "The request body was not well-formed."
"""

from __future__ import annotations

import httpx
import pytest

from authz.management.routing import MAX_JSON_BODY_BYTES, MAX_JSON_DEPTH
from tests.authz.management.kit import Api

AS = "/api/v1/authorizationServers"
JSON = {"Content-Type": "application/json"}


def assert_not_well_formed(response: httpx.Response, status: int = 400) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["errorCode"] == "E0000003"
    assert body["errorSummary"] == "The request body was not well-formed."
    assert "Traceback" not in response.text


@pytest.mark.parametrize("depth", [100_000, 2_000])
async def test_deeply_nested_json_array_is_e0000003(api: Api, depth: int) -> None:
    """Arrays nested deeper than the interpreter's recursion limit are 400 E0000003, not a 500."""
    body = b'{"name":' + b"[" * depth + b"]" * depth + b"}"
    response = await api.client.post(AS, content=body, headers=JSON)
    assert_not_well_formed(response)


async def test_deeply_nested_json_object_is_e0000003(api: Api) -> None:
    """Objects nested deeper than ``MAX_JSON_DEPTH`` (but parseable) are refused before any handler sees them."""
    depth = MAX_JSON_DEPTH + 1
    body = ('{"a":' * depth + "1" + "}" * depth).encode()
    response = await api.client.post(AS, content=body, headers=JSON)
    assert_not_well_formed(response)
    assert any(str(MAX_JSON_DEPTH) in c["errorSummary"] for c in response.json()["errorCauses"])


async def test_deeply_nested_json_at_the_limit_reaches_validation(api: Api) -> None:
    """Nesting up to the limit is read; the handler then answers for the content (E0000001)."""
    depth = MAX_JSON_DEPTH - 1
    body = ('{"profile":' + '{"a":' * (depth - 1) + "1" + "}" * depth).encode()
    response = await api.client.post(AS, content=body, headers=JSON)
    assert response.status_code == 400
    assert response.json()["errorCode"] == "E0000001"


async def test_oversized_json_body_is_refused_with_413(api: Api) -> None:
    """A body over ``MAX_JSON_BODY_BYTES`` is refused without being parsed."""
    body = b'{"name":"' + b"x" * MAX_JSON_BODY_BYTES + b'"}'
    response = await api.client.post(AS, content=body, headers=JSON)
    assert_not_well_formed(response, status=413)
