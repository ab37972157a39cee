"""System-log events for management-API changes (spec §6.2): who changed what, from what, to what."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from starlette.requests import Request

from authz.syslog import make_event


@dataclass(frozen=True)
class Caller:
    """The admin behind a request: which configured token, from where."""

    token_index: int
    ip: str | None
    user_agent: str | None

    @classmethod
    def of(cls, request: Request) -> Caller:
        index = getattr(request.state, "admin_token_index", -1)
        ip = request.client.host if request.client else None
        return cls(int(index), ip, request.headers.get("user-agent"))

    def actor(self) -> dict[str, Any]:
        # Never the token itself: only its position in adminTokens.
        name = f"admin token #{self.token_index + 1}"
        return {"id": f"admin-token-{self.token_index + 1}", "type": "SystemPrincipal", "alternateId": name,
                "displayName": name}


def change_event(caller: Caller, event_type: str, now: float, *, target_type: str, target_id: str,
                 name: str | None, before: dict[str, Any] | None, after: dict[str, Any] | None,
                 message: str, parent: dict[str, Any] | None = None) -> dict[str, Any]:
    """A LogEvent whose first target is the changed object, with ``changeDetails {from, to}``."""
    targets = [{"id": target_id, "type": target_type, "alternateId": name or target_id,
                "displayName": name or target_id, "changeDetails": {"from": before or {}, "to": after or {}}}]
    if parent is not None:
        targets.append(parent)
    return make_event(event_type, now=now, display_message=message, actor=caller.actor(),
                      client={"ipAddress": caller.ip, "userAgent": caller.user_agent}, targets=targets,
                      debug_data={"source": "management-api"})


def server_target(as_id: str, name: str) -> dict[str, Any]:
    return {"id": as_id, "type": "AuthorizationServer", "alternateId": name, "displayName": name}
