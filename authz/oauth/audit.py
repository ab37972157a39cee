"""System-log events of the protocol endpoints (spec §6.2): what was asked, decided and why.

An ``Audit`` travels with one request and collects what the handler learns (client, user, scopes,
the policy evaluation). A grant writes its events in the transaction that records its tokens; a
denial writes one FAILURE event whose ``outcome.reason`` is the stable internal code and whose
debugData says what to change. No token value or secret is ever put in an event.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from authz.context import CoreContext
from authz.errors import OAuthError, ScopegateError
from authz.model import App, User
from authz.policy import Evaluation
from authz.store.base import StoreTx
from authz.syslog import make_event
from config.schema import AuthorizationServerConfig


class RecordedOAuthError(OAuthError):
    """An OAuthError whose FAILURE event was already written in the handler's own transaction."""


@dataclass
class Audit:
    as_id: str
    event_type: str
    """The base event type; failures are this type with outcome FAILURE (spec §9 D10)."""
    client: dict[str, Any] = field(default_factory=dict)
    server: AuthorizationServerConfig | None = None
    app: App | None = None
    client_auth_type: str | None = None
    user: User | None = None
    grant_type: str | None = None
    response_type: str | None = None
    redirect_uri: str | None = None
    requested_scopes: str | None = None
    evaluation: Evaluation | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    revoked: bool = False
    """Set when the handler committed revocations (the endpoint then refreshes the revocation state)."""

    def debug_data(self) -> dict[str, Any]:
        data: dict[str, Any] = {"authorization_server": self.as_id}
        if self.server is not None:
            data["authorization_server_name"] = self.server.name
            data["authorization_server_audience"] = self.server.resource
        if self.app is not None:
            data["client_id"] = self.app.client_id
        elif self.client.get("id"):
            data["client_id"] = self.client["id"]
        for key, value in (("client_auth_type", self.client_auth_type), ("grant_type", self.grant_type),
                           ("response_type", self.response_type), ("redirect_uri", self.redirect_uri)):
            if value is not None:
                data[key] = value
        if self.user is not None:
            data["user_id"] = self.user.id
        if self.evaluation is not None:
            data.update(self.evaluation.debug_data())
        elif self.requested_scopes is not None:
            data["requested_scopes"] = self.requested_scopes
        data.update(self.extra)
        return data

    def actor(self) -> dict[str, Any] | None:
        if self.user is not None:
            return {"id": self.user.id, "type": "User", "alternateId": self.user.login,
                    "displayName": _display_name(self.user)}
        if self.app is not None:
            return {"id": self.app.client_id, "type": "PublicClientApp", "alternateId": self.app.client_id,
                    "displayName": self.app.config.name}
        client_id = self.client.get("id")
        if client_id:
            return {"id": client_id, "type": "PublicClientApp", "alternateId": client_id, "displayName": client_id}
        return None

    def client_part(self) -> dict[str, Any]:
        part = dict(self.client)
        if self.app is not None:
            part["id"] = self.app.client_id
        return part

    def event(self, event_type: str, now: float, *, result: str = "SUCCESS", reason: str | None = None,
              message: str = "", targets: list[dict[str, Any]] | None = None,
              severity: str = "INFO", extra: dict[str, Any] | None = None) -> dict[str, Any]:
        debug = self.debug_data()
        debug.update(extra or {})
        return make_event(event_type, now=now, result=result, reason=reason, display_message=message,
                          severity=severity, actor=self.actor(), client=self.client_part(), targets=targets,
                          debug_data=debug)

    def failure(self, exc: ScopegateError, now: float) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        if isinstance(exc, OAuthError):
            extra = {"error": exc.error, "error_description": exc.description}
        return self.event(self.event_type, now, result="FAILURE", reason=exc.reason,
                          message=_failure_message(self.event_type), severity="WARN", extra=extra)


def record_failure(ctx: CoreContext, audit: Audit, exc: ScopegateError) -> None:
    """A denial in its own transaction: it decides nothing else."""
    with ctx.store.transaction() as tx:
        ctx.syslog.record(tx, audit.failure(exc, ctx.now()))


def record(ctx: CoreContext, tx: StoreTx, event: dict[str, Any]) -> None:
    ctx.syslog.record(tx, event)


def token_target(kind: str, jti: str, *, expires: float | None, scopes: tuple[str, ...], subject: str,
                 audience: str, as_id: str, client_id: str, user_id: str | None) -> dict[str, Any]:
    """Spec §6.2 OAuth2ResourceDetails; the jti identifies the token without being it."""
    return {"id": jti, "type": kind, "alternateId": jti, "displayName": kind,
            "detailEntry": {"expires": expires, "scope": " ".join(scopes), "subject": subject, "audience": audience,
                            "AuthorizationServer": as_id, "PublicClientApp": client_id, "User": user_id}}


def _display_name(user: User) -> str:
    names = [n for n in (user.config.profile.first_name, user.config.profile.last_name) if n]
    return " ".join(names) or user.login


def _failure_message(event_type: str) -> str:
    return {"app.oauth2.as.authorize": "OAuth2 authorization request failed",
            "app.oauth2.as.token.grant": "OAuth2 token request failed",
            "app.oauth2.as.token.revoke": "OAuth2 token revocation request failed"}.get(event_type, "Request failed")


__all__ = ["Audit", "RecordedOAuthError", "record", "record_failure", "token_target"]
