"""Implicit revocation by configuration change (spec §5.2, DESIGN §4).

Okta: "Tokens can expire, be explicitly revoked at the endpoint, or implicitly revoked by a change in
configuration" — the user is deactivated or deleted; "Configuration in the authorization server is
changed or deleted"; "The client app is deactivated, changed, unassigned, or deleted". Each becomes a
watermark on the change feed: every token of that user / client / user+client / server issued at or
before the store's current token sequence is revoked, and tokens minted afterwards are not. Key
rotation is not a revocation (spec §5.2).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from authz.revocation import watermark_key
from authz.store.base import RefreshToken, Store, WatermarkScope

if TYPE_CHECKING:
    from authz.management.changes import Change, Snapshot

WATERMARK_TTL = 1440 * 60
"""The longest an access token lives (spec §1.5: 5–1440 minutes); after it a watermark covers nothing."""


@dataclass(frozen=True)
class Watermark:
    scope: WatermarkScope
    user_id: str | None = None
    client_id: str | None = None
    as_id: str | None = None

    @classmethod
    def user(cls, user_id: str) -> Watermark:
        return cls("user", user_id=user_id)

    @classmethod
    def client(cls, client_id: str) -> Watermark:
        return cls("client", client_id=client_id)

    @classmethod
    def user_client(cls, user_id: str, client_id: str) -> Watermark:
        return cls("user_client", user_id=user_id, client_id=client_id)

    @classmethod
    def server(cls, as_id: str) -> Watermark:
        return cls("as", as_id=as_id)

    @property
    def key(self) -> str:
        if self.scope == "user_client":
            assert self.user_id is not None
            assert self.client_id is not None
            return watermark_key(self.user_id, self.client_id)
        value = {"user": self.user_id, "client": self.client_id, "as": self.as_id}[self.scope]
        assert value is not None
        return value


def watermark_entry(mark: Watermark, before_seq: int, now: float) -> dict[str, Any]:
    """The change-feed data of a watermark (``authz.store.base.Change``)."""
    return {"scope": mark.scope, "key": mark.key, "before_seq": before_seq, "exp": now + WATERMARK_TTL}


def refresh_tokens_for(store: Store, mark: Watermark) -> Iterator[RefreshToken]:
    """The live refresh tokens a watermark covers, to be marked REVOKED with it (the refresh grant then
    answers ``invalid_grant`` even before it consults the watermark). Rotated ones too: within their grace
    period they still refresh, and a process whose feed lags would not see the watermark yet."""
    tokens = store.list_refresh_tokens(as_id=mark.as_id, client_id=mark.client_id, user_id=mark.user_id)
    return (rt for rt in tokens if rt.status != "REVOKED")


def has_access(app: dict[str, Any], user: dict[str, Any]) -> bool:
    """A user may use a client only when assigned to it, directly or through a group (spec §1.6)."""
    assignments = app.get("assignments", {})
    return user["id"] in assignments.get("users", []) or bool(
        set(user.get("groups", [])) & set(assignments.get("groups", [])))


def lost_access(snapshot: Snapshot, change: Change) -> list[Watermark]:
    """A user+client watermark for each user who could use a client before the change and cannot after:
    the user unassigned, the user's group unassigned, or the user removed from that group.

    A client or user that the change deletes is covered by its own watermark instead; a user who keeps
    access another way (another group, a direct assignment) keeps their tokens.
    """
    touched_apps = {id for kind, id in change.puts if kind == "app"}
    touched_users = {id for kind, id in change.puts if kind == "user"}
    if not (touched_apps or touched_users):
        return []
    apps_before, users_before = snapshot.docs("app"), snapshot.docs("user")
    apps_after, users_after = change.documents_after(snapshot, "app"), change.documents_after(snapshot, "user")
    pairs = {(u, a) for a in touched_apps for u in users_before} | {(u, a) for u in touched_users for a in apps_before}
    marks = []
    for user_id, client_id in sorted(pairs):
        app_after, user_after = apps_after.get(client_id), users_after.get(user_id)
        if app_after is None or user_after is None or client_id not in apps_before or user_id not in users_before:
            continue
        if has_access(apps_before[client_id], users_before[user_id]) and not has_access(app_after, user_after):
            marks.append(Watermark.user_client(user_id, client_id))
    return marks
