"""``GET /api/v1/logs``: the System Log query API (spec §6.3), over the store's log table.

Events are read in the order they were persisted (the store's ``seq``), which is also ``published``
order except for events committed concurrently; Okta documents the same for polling requests ("may be
out of order by published"). ``filter`` and ``q`` are applied here, over pages of ``Store.query_logs``;
the cursor is the position of the last event *examined*, so a page cut short by the scan budget or by
``limit`` resumes exactly where it stopped and never skips or repeats an event.

Two modes, as Okta's (spec §6.3):

- Polling (no ``until``, ``ASCENDING``): ``rel="next"`` is always present, possibly leading to an empty
  page; a client follows it to receive events persisted later.
- Bounded (``until`` given, or ``DESCENDING``): finite pages; the last page has no ``rel="next"``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute

from authz.context import CoreContext
from authz.errors import OktaApiError
from authz.management.routing import admin_route
from authz.scim_filter import Filter, FilterError, matches, parse_filter
from authz.store.base import LogQuery, LogRecord, Store
from authz.syslog import format_published, parse_published

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
"""Spec §6.3: "limit 0–1000, default 100"."""
DEFAULT_WINDOW = 7 * 86400
"""Spec §6.3: since defaults to "7 days before until"."""
MAX_AGE = 180 * 86400
"""Spec §6.3: a since "> 180 days ago is an error (E0000053)"."""
MAX_KEYWORDS = 10
MAX_KEYWORD_LENGTH = 40
"""Spec §6.3: q has "≤ 10 keywords, ≤ 40 chars each (E0000001 otherwise)"."""
SCAN_BUDGET = 20_000
"""Events examined per request at most; a sparse filter answers a short page with a cursor instead of
reading the whole log in one request."""
STORE_PAGE = 500

_PARAMS = ("since", "until", "after", "filter", "q", "limit", "sortOrder")


def _invalid(param: str, message: str) -> OktaApiError:
    return OktaApiError.validation([f"{param}: {message}"], summary=f"Api validation failed: {param}")


def _search_error(message: str, code: str = "E0000053") -> OktaApiError:
    return OktaApiError(400, code, "Invalid search criteria.", [message])


@dataclass(frozen=True)
class LogSearch:
    """A validated ``/api/v1/logs`` request."""

    since: float | None
    until: float | None
    after: int | None
    filter: Filter | None
    keywords: tuple[str, ...]
    limit: int
    descending: bool
    polling: bool


def encode_cursor(seq: int, since: float | None) -> str:
    """An opaque cursor: the last examined position, and the lower time bound it keeps applying.

    Okta's ``after`` is "mutually exclusive with since", so the cursor carries the original ``since``
    (a descending or bounded search must keep its lower bound on later pages).
    """
    raw = f"{seq}:{'' if since is None else repr(since)}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, float | None]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        seq_text, since_text = raw.split(":", 1)
        seq = int(seq_text)
        since = float(since_text) if since_text else None
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise _invalid("after", "not a cursor returned by this API") from None
    if seq < 0:
        raise _invalid("after", "not a cursor returned by this API")
    return seq, since


def _time(param: str, value: str) -> float:
    try:
        return parse_published(value)
    except ValueError:
        raise _invalid(param, "must be an RFC 3339 date-time, e.g. 2024-01-31T12:00:00.000Z") from None


def parse_search(params: dict[str, str], now: float) -> LogSearch:
    """Validate the query parameters (spec §6.3); raise OktaApiError with Okta's codes."""
    sort = params.get("sortOrder", "ASCENDING")
    if sort not in ("ASCENDING", "DESCENDING"):
        raise _invalid("sortOrder", "must be ASCENDING or DESCENDING")
    descending = sort == "DESCENDING"

    limit_text = params.get("limit", str(DEFAULT_LIMIT))
    if not limit_text.isdigit() or not 0 <= int(limit_text) <= MAX_LIMIT:
        raise _invalid("limit", f"must be an integer from 0 to {MAX_LIMIT}")
    limit = int(limit_text)

    until = _time("until", params["until"]) if "until" in params else None
    since = _time("since", params["since"]) if "since" in params else None
    after: int | None = None
    if "after" in params:
        if since is not None:
            raise _invalid("after", "cannot be combined with since")
        after, since = decode_cursor(params["after"])
    elif since is None:
        since = (until if until is not None else now) - DEFAULT_WINDOW
    if since is not None and since < now - MAX_AGE:
        raise _search_error("since: must be within the last 180 days")
    if since is not None and until is not None and since > until:
        raise _invalid("since", "must not be after until")

    text = params.get("filter")
    tree: Filter | None = None
    if text is not None and text.strip():
        try:
            tree = parse_filter(text)
        except FilterError as exc:
            raise _search_error(f"filter: {exc}", exc.code) from None

    keywords = tuple(params.get("q", "").split())
    if len(keywords) > MAX_KEYWORDS:
        raise _invalid("q", f"at most {MAX_KEYWORDS} keywords")
    if any(len(k) > MAX_KEYWORD_LENGTH for k in keywords):
        raise _invalid("q", f"each keyword is at most {MAX_KEYWORD_LENGTH} characters")

    polling = until is None and not descending
    return LogSearch(since=since, until=until if until is not None or polling else now, after=after,
                     filter=tree, keywords=tuple(k.lower() for k in keywords), limit=limit,
                     descending=descending, polling=polling)


def _strings(value: Any, out: list[str]) -> None:
    if isinstance(value, str):
        out.append(value.lower())
    elif isinstance(value, dict):
        for item in value.values():
            _strings(item, out)
    elif isinstance(value, list):
        for item in value:
            _strings(item, out)


def matches_keywords(event: dict[str, Any], keywords: tuple[str, ...]) -> bool:
    """Every keyword occurs, case-insensitively, in some string value of the event (spec §6.3: "all
    must match, case-insensitive"). Matching within values also finds the parts of hyphenated values."""
    if not keywords:
        return True
    values: list[str] = []
    _strings(event, values)
    return all(any(k in v for v in values) for k in keywords)


def _selected(search: LogSearch, record: LogRecord) -> bool:
    if search.filter is not None and not matches(search.filter, record.event):
        return False
    return matches_keywords(record.event, search.keywords)


def run_search(store: Store, search: LogSearch, budget: int = SCAN_BUDGET) -> tuple[list[dict[str, Any]], int | None, bool]:
    """The page of events, the cursor (last examined seq), and whether a next page may exist."""
    found: list[dict[str, Any]] = []
    cursor = search.after
    examined = 0
    while True:
        page = store.query_logs(LogQuery(since=search.since, until=search.until, after=cursor,
                                         limit=STORE_PAGE, descending=search.descending))
        for record in page:
            if _selected(search, record):
                if len(found) == search.limit:
                    # One match beyond the page: the next page starts with it (the position just before it
                    # in scan order; events in between did not match).
                    return found, record.seq + 1 if search.descending else record.seq - 1, True
                found.append(record.event)
            cursor = record.seq
            examined += 1
            if examined >= budget and len(found) < search.limit:
                return found, cursor, True
        if len(page) < STORE_PAGE:
            return found, cursor, False


def _link(request: Request, params: dict[str, str]) -> str:
    url = request.url.replace(query=urlencode(params))
    return f"<{url}>"


def logs_routes(ctx: CoreContext) -> list[BaseRoute]:
    """``/api/v1/logs`` behind the admin token (E0000011 otherwise, E0000022 for other methods)."""

    async def get_logs(request: Request) -> Response:
        params = {k: v for k, v in request.query_params.items() if k in _PARAMS}
        search = parse_search(params, ctx.now())
        events, cursor, more = await asyncio.to_thread(run_search, ctx.store, search)
        response = Response(json.dumps(events, separators=(",", ":")), media_type="application/json")
        response.headers.append("Link", _link(request, params) + '; rel="self"')
        if more or search.polling:
            # Polling without any event examined yet: start from the beginning (bounded by since).
            position = cursor if cursor is not None else 0
            following = {k: v for k, v in params.items() if k != "since"}
            following["after"] = encode_cursor(position, search.since)
            response.headers.append("Link", _link(request, following) + '; rel="next"')
        return response

    return [admin_route(ctx, "/api/v1/logs", {"GET": get_logs})]


__all__ = ["LogSearch", "decode_cursor", "encode_cursor", "format_published", "logs_routes", "matches_keywords",
           "parse_search", "run_search"]
