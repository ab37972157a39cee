"""Apply one management-API change: validate the resulting state, then write it in one transaction.

A change is built from a snapshot of the stored objects, checked with the config's cross-object
invariants (``config.invariants.find_reference_errors``: the file and the API share one set of rules),
and committed together with its system-log events, its change-feed entries and the implicit
revocations it implies (DESIGN §4). After the commit the process applies the feed at once, so that the
proxy in this process refuses a revoked token before the API call returns.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar
from weakref import WeakKeyDictionary

from authz.context import CoreContext
from authz.documents import Doc, ensure_ids
from authz.errors import OktaApiError
from authz.management.revoking import Watermark, lost_access, refresh_tokens_for, watermark_entry
from authz.management.shapes import validate
from authz.store.base import ObjectKind, Store, StoredObject, StoreTx
from config.invariants import find_reference_errors
from config.loader import format_path
from config.schema import AppConfig, AuthorizationServerConfig, GroupConfig, ScopegateConfig, UserConfig

T = TypeVar("T")
Key = tuple[ObjectKind, str]
KINDS: tuple[ObjectKind, ...] = ("authorization_server", "app", "user", "group")
# A placeholder that satisfies AppConfig's "this method needs a secret" rule for a stored app whose
# secret exists only as a hash. It never leaves this module.
_SECRET_PLACEHOLDER = "stored-secret-placeholder-0000"

_locks: WeakKeyDictionary[Store, threading.Lock] = WeakKeyDictionary()
_locks_guard = threading.Lock()


@dataclass
class Snapshot:
    """Every stored configuration object, by kind and id."""

    objects: dict[ObjectKind, dict[str, StoredObject]]

    @classmethod
    def load(cls, reader: Store | StoreTx) -> Snapshot:
        """Read through ``reader``; a transaction's reads lock the objects until it commits."""
        return cls({kind: {obj.id: obj for obj in reader.list_objects(kind)} for kind in KINDS})

    def get(self, kind: ObjectKind, id: str) -> StoredObject | None:
        return self.objects[kind].get(id)

    def require(self, kind: ObjectKind, id: str, label: str) -> StoredObject:
        obj = self.get(kind, id)
        if obj is None:
            raise OktaApiError.not_found(id, label)
        return obj

    def docs(self, kind: ObjectKind) -> dict[str, Doc]:
        return {id: obj.document for id, obj in self.objects[kind].items()}

    def server_document(self, id: str) -> Doc:
        """A copy of the server's document with every nested object's id filled in."""
        obj = self.require("authorization_server", id, "AuthorizationServer")
        return ensure_ids(id, _deep_copy(obj.document))


@dataclass
class Change:
    """What one API call writes. ``puts`` replace whole documents (origin ``api``)."""

    puts: dict[Key, Doc] = field(default_factory=dict)
    secret_hashes: dict[Key, str] = field(default_factory=dict)
    deletes: set[Key] = field(default_factory=set)
    events: list[dict[str, Any]] = field(default_factory=list)
    watermarks: list[Watermark] = field(default_factory=list)
    check_references: bool = True

    def put(self, kind: ObjectKind, id: str, document: Doc, secret_hash: str | None = None) -> None:
        self.puts[(kind, id)] = document
        if secret_hash is not None:
            self.secret_hashes[(kind, id)] = secret_hash

    def delete(self, kind: ObjectKind, id: str) -> None:
        self.deletes.add((kind, id))
        self.puts.pop((kind, id), None)

    def documents_after(self, snapshot: Snapshot, kind: ObjectKind) -> dict[str, Doc]:
        docs = snapshot.docs(kind)
        for (k, id), doc in self.puts.items():
            if k == kind:
                docs[id] = doc
        for k, id in self.deletes:
            if k == kind:
                docs.pop(id, None)
        return docs


def check_state(ctx: CoreContext, snapshot: Snapshot, change: Change) -> None:
    """The config file's cross-object invariants, over the whole state the change would leave."""
    servers = [validate(AuthorizationServerConfig, d) for d in change.documents_after(snapshot, "authorization_server").values()]
    apps = []
    for id, doc in change.documents_after(snapshot, "app").items():
        stored = snapshot.get("app", id)
        has_secret = (("app", id) in change.secret_hashes) or (stored is not None and stored.secret_hash is not None)
        apps.append(validate(AppConfig, {**doc, **({"clientSecret": _SECRET_PLACEHOLDER} if has_secret else {})}))
    users = [validate(UserConfig, d) for d in change.documents_after(snapshot, "user").values()]
    groups = [validate(GroupConfig, d) for d in change.documents_after(snapshot, "group").values()]
    logins: dict[str, str] = {}
    for user in users:
        other = logins.setdefault(user.login.lower(), user.id)
        if other != user.id:
            raise OktaApiError.validation([f"login: An object with this field already exists in the current organization ({user.login})"])
    config = ScopegateConfig.model_construct(
        **{**dict(ctx.config), "authorization_servers": servers, "apps": apps, "users": users, "groups": groups})
    problems = find_reference_errors(config)
    if problems:
        raise OktaApiError.validation([f"{format_path(path)}: {rule}" for path, rule in problems])


def _lock_for(store: Store) -> threading.Lock:
    with _locks_guard:
        lock = _locks.get(store)
        if lock is None:
            lock = _locks[store] = threading.Lock()
        return lock


def commit_change(ctx: CoreContext, build: Callable[[Snapshot, float], tuple[Change, T]]) -> T:
    """Build a change from a fresh snapshot, validate it and write it in one transaction (blocking).

    Changes are serialized, so that two concurrent calls cannot both validate against the same
    snapshot and together leave a state neither checked, nor one overwrite the other's edit of the same
    document (a lost update). Within this process a lock does it; across processes sharing the store,
    the snapshot is read inside the write transaction (``StoreTx.list_objects`` locks the objects until
    commit), so another process's change waits and then builds on this one.
    """
    store = ctx.store
    with _lock_for(store), store.transaction() as tx:
        now = ctx.now()
        snapshot = Snapshot.load(tx)
        change, result = build(snapshot, now)
        if change.check_references:
            check_state(ctx, snapshot, change)
        watermarks = _dedupe([*change.watermarks, *lost_access(snapshot, change)])
        # The store's reads on this thread run on the transaction's connection, so they see its state.
        revoked = [rt for mark in watermarks for rt in refresh_tokens_for(store, mark)]
        for (kind, id), doc in change.puts.items():
            secret_hash = change.secret_hashes.get((kind, id))
            tx.put_object(kind, id, doc, "api", secret_hash=secret_hash, keep_secret=secret_hash is None)
        for kind, id in change.deletes:
            tx.delete_object(kind, id)
        for mark in watermarks:
            tx.append_change("watermark", watermark_entry(mark, tx.current_token_seq(), now))
        for rt in {rt.id: rt for rt in revoked}.values():
            tx.put_refresh_token(replace(rt, status="REVOKED"))
        for event in change.events:
            ctx.syslog.record(tx, event)
        for kind, id in sorted({*change.puts, *change.deletes}):
            tx.append_change("config", {"kind": kind, "id": id})
        return result


async def apply_change(ctx: CoreContext, build: Callable[[Snapshot, float], tuple[Change, T]]) -> T:
    """``commit_change`` off the event loop, then apply the change feed in this process."""
    result = await asyncio.to_thread(commit_change, ctx, build)
    await ctx.refresh_revocations()
    return result


async def read_snapshot(ctx: CoreContext) -> Snapshot:
    return await asyncio.to_thread(Snapshot.load, ctx.store)


async def read_object(ctx: CoreContext, kind: ObjectKind, id: str, label: str) -> StoredObject:
    obj = await asyncio.to_thread(ctx.store.get_object, kind, id)
    if obj is None:
        raise OktaApiError.not_found(id, label)
    return obj


def _dedupe(marks: Iterable[Watermark]) -> list[Watermark]:
    return list(dict.fromkeys(marks))


def _deep_copy(doc: Any) -> Any:
    if isinstance(doc, dict):
        return {k: _deep_copy(v) for k, v in doc.items()}
    if isinstance(doc, list):
        return [_deep_copy(v) for v in doc]
    return doc
