"""Bring the store in line with the config file, at start and on SIGHUP.

The file is the source of truth for what it declares (DESIGN §6): its objects are written with
``origin = "config"``; a management-API change to one of them is overwritten here, and the overwrite is
logged. Objects created through the API (``origin = "api"``) are left alone. Objects the file used to
declare and no longer does are deleted.

A change to an object revokes the tokens it governs, as an API change would (brief, "Limits"): an
authorization server changed or deleted → all its tokens; an app changed or deleted → all its tokens;
a user deactivated or deleted → all the user's tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from authz.documents import dump, ensure_ids
from authz.keys import ensure_signing_keys
from authz.management.revoking import Watermark, has_access, watermark_entry
from authz.passwords import hash_secret, verify_secret
from authz.store.base import ObjectKind, Store, StoredObject, StoreTx
from authz.syslog import SystemLog, make_event
from config.schema import AuthorizationServerConfig, ScopegateConfig

# Longest an access token can live (spec §1.5: 1440 minutes): a watermark can be forgotten after it.
WATERMARK_TTL = 1440 * 60

_EVENT = {
    "authorization_server": ("oauth2.as", "AuthorizationServer"),
    "app": ("app.oauth2.client.lifecycle", "AppInstance"),
    "user": ("user.lifecycle", "User"),
    "group": ("group.lifecycle", "UserGroup"),
}
_VERBS = {
    "authorization_server": {"create": "created", "update": "updated", "delete": "deleted"},
    "app": {"create": "create", "update": "update", "delete": "delete"},
    "user": {"create": "create", "update": "update", "delete": "delete"},
    "group": {"create": "create", "update": "update", "delete": "delete"},
}


@dataclass
class ReconcileReport:
    created: list[tuple[str, str]] = field(default_factory=list)
    updated: list[tuple[str, str]] = field(default_factory=list)
    overwritten: list[tuple[str, str]] = field(default_factory=list)
    """Objects the file declares whose stored version had been changed through the management API."""
    deleted: list[tuple[str, str]] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.created or self.updated or self.deleted)


def server_document(server: AuthorizationServerConfig) -> dict[str, Any]:
    """The stored document of a config-declared AS, with the same stable ids the management API gives."""
    return ensure_ids(server.id, dump(server))


def reconcile(store: Store, cfg: ScopegateConfig, now: float, syslog: SystemLog | None = None) -> ReconcileReport:
    """Write the config's objects into the store in one transaction; create missing signing keys."""
    report = ReconcileReport()
    desired: dict[tuple[ObjectKind, str], tuple[dict[str, Any], str | None]] = {}
    for server in cfg.authorization_servers:
        desired[("authorization_server", server.id)] = (server_document(server), None)
    for app in cfg.apps:
        desired[("app", app.client_id)] = (dump(app, exclude={"client_secret"}), app.client_secret)
    for user in cfg.users:
        desired[("user", user.id)] = (dump(user, exclude={"password"}), user.password)
    for group in cfg.groups:
        desired[("group", group.id)] = (dump(group), None)

    kinds: tuple[ObjectKind, ...] = ("group", "user", "app", "authorization_server")
    existing = {(kind, obj.id): obj for kind in kinds for obj in store.list_objects(kind)}
    # Hash outside the transaction: scrypt is deliberately slow, the write lock should not wait on it.
    hashes = {key: _secret_hash(secret, existing.get(key)) for key, (_, secret) in desired.items() if secret is not None}

    with store.transaction() as tx:
        # Read again under the transaction's lock on the objects (``StoreTx.list_objects``): a change
        # another process made since the read above is then compared, overwritten and logged, not missed.
        existing = {(kind, obj.id): obj for kind in kinds for obj in tx.list_objects(kind)}
        for key, (document, secret) in desired.items():
            kind, id = key
            before = existing.get(key)
            secret_hash = hashes.get(key)
            secret_changed = before is not None and secret is not None and secret_hash != before.secret_hash
            if before is not None and before.document == document and before.origin == "config" and not secret_changed:
                continue
            tx.put_object(kind, id, document, "config", secret_hash=secret_hash, keep_secret=secret is None)
            if before is None:
                report.created.append(key)
                _log(tx, syslog, kind, id, "create", None, document, now)
                continue
            report.updated.append(key)
            if before.origin == "api":
                report.overwritten.append(key)
            _log(tx, syslog, kind, id, "update", before.document, document, now, overwrite=before.origin == "api")
            _revoke_for_change(tx, kind, id, before.document, document, now)
        _revoke_lost_access(tx, existing, desired, report, now)
        for key, before in existing.items():
            if before.origin == "config" and key not in desired:
                kind, id = key
                tx.delete_object(kind, id)
                report.deleted.append(key)
                _log(tx, syslog, kind, id, "delete", before.document, None, now)
                _revoke_for_change(tx, kind, id, before.document, None, now)
        if report.changed:
            tx.append_change("config", {"kind": "reconcile", "id": "*"})

    for server in cfg.authorization_servers:
        if server.remote is None:
            ensure_signing_keys(store, server.id, now)
    return report


def _secret_hash(secret: str, before: StoredObject | None) -> str:
    if before is not None and before.secret_hash and verify_secret(secret, before.secret_hash, shed=False):
        return before.secret_hash
    return hash_secret(secret)


def _revoke_for_change(tx: StoreTx, kind: ObjectKind, id: str, before: dict[str, Any],
                       after: dict[str, Any] | None, now: float) -> None:
    """The brief's implicit revocation, for changes that arrive through the config file."""
    scope: str | None = None
    if kind == "authorization_server":
        scope = "as"
    elif kind == "app":
        scope = "client"
    elif kind == "user" and (after is None or after.get("status", "ACTIVE") not in ("ACTIVE",)):
        scope = "user"
    if scope is None:
        return
    tx.append_change("watermark", {"scope": scope, "key": id, "before_seq": tx.current_token_seq(),
                                   "exp": now + WATERMARK_TTL})


def _revoke_lost_access(tx: StoreTx, existing: dict[tuple[ObjectKind, str], StoredObject],
                        desired: dict[tuple[ObjectKind, str], tuple[dict[str, Any], str | None]],
                        report: ReconcileReport, now: float) -> None:
    """A user+client watermark for each user the file's changes leave without access to a client (removed
    from the assigned group, or the direct assignment dropped), as the management API writes (``lost_access``).

    A changed app already gets a client watermark, so only changed users need the pairwise check here; a user
    who keeps access another way keeps their tokens.
    """
    changed_users = [id for kind, id in report.updated if kind == "user"]
    if not changed_users:
        return
    apps = {id: obj.document for (kind, id), obj in existing.items() if kind == "app"}
    for user_id in changed_users:
        before, after = existing[("user", user_id)].document, desired[("user", user_id)][0]
        for client_id, app in apps.items():
            app_after = desired.get(("app", client_id), (app, None))[0]
            if has_access(app, before) and not has_access(app_after, after):
                tx.append_change("watermark", watermark_entry(Watermark.user_client(user_id, client_id),
                                                              tx.current_token_seq(), now))


def _log(tx: StoreTx, syslog: SystemLog | None, kind: ObjectKind, id: str, verb: str,
         before: dict[str, Any] | None, after: dict[str, Any] | None, now: float, overwrite: bool = False) -> None:
    if syslog is None:
        return
    prefix, target_type = _EVENT[kind]
    name = (after or before or {}).get("name") or (after or before or {}).get("login") or id
    message = f"{target_type} {verb}d from the config file"
    if overwrite:
        message += ": a management-API change to this object was overwritten by the config file"
    event = make_event(
        f"{prefix}.{_VERBS[kind][verb]}",
        now=now,
        display_message=message,
        actor={"id": "scopegate-config", "type": "SystemPrincipal", "alternateId": "config file", "displayName": "config file"},
        targets=[{"id": id, "type": target_type, "alternateId": str(name), "displayName": str(name),
                  "changeDetails": {"from": before or {}, "to": after or {}}}],
        debug_data={"source": "config", "overwrite": overwrite},
    )
    syslog.record(tx, event)


__all__ = ["ReconcileReport", "reconcile", "server_document"]

