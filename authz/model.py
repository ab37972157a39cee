"""The protocol side's view of stored objects: the config models, read back from their documents.

The store keeps each object as its config model's JSON without secrets (``authz/store/base.py``); this
module turns documents back into those models, so that the policy engine and the endpoints work on
the one definition in ``config/schema.py``, and adds the few relations the protocol needs (a user's
groups, an app's assignments).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from cachetools import LRUCache

from authz.store.base import Store, StoredObject
from config.schema import AppConfig, AuthorizationServerConfig, UserConfig

M = TypeVar("M")


class ValidationMemo(Generic[M]):
    """Validated models by the exact JSON of the document they came from.

    The token endpoint reads the server, the app and the user on every request, twice (once before and once
    inside the minting transaction, issue 8 item 2), and pydantic's validation of a server document cost a
    third of an RS256 signature each time (issue 11). The key is the document itself, not an id or a
    timestamp, so a changed document is validated afresh on its first read, whatever its clock says; the
    models are frozen, so one instance can be shared. Bounded: least recently used documents go first.
    """

    def __init__(self, parse: Callable[[dict[str, Any]], M], size: int = 1024) -> None:
        self._parse = parse
        self._models: LRUCache[str, M] = LRUCache(maxsize=size)
        self._lock = threading.Lock()

    def __call__(self, document: dict[str, Any]) -> M:
        key = json.dumps(document, separators=(",", ":"), default=str)
        with self._lock:
            model = self._models.get(key)
        if model is None:
            model = self._parse(document)  # raises on an invalid document: nothing is remembered
            with self._lock:
                self._models[key] = model
        return model

# The app document never holds its secret; validating it needs one for client_secret_* apps
# (``AppConfig._credentials_fit_method``). The placeholder is dropped right after validation.
_SECRET_PLACEHOLDER = "stored-as-a-hash-only"


@dataclass(frozen=True)
class App:
    """An OAuth client and the scrypt hash of its secret (None for public and private_key_jwt clients)."""

    config: AppConfig
    secret_hash: str | None

    @property
    def client_id(self) -> str:
        return self.config.client_id

    @property
    def is_active(self) -> bool:
        return self.config.status == "ACTIVE"


@dataclass(frozen=True)
class User:
    config: UserConfig
    secret_hash: str | None

    @property
    def id(self) -> str:
        return self.config.id

    @property
    def login(self) -> str:
        return self.config.login

    @property
    def groups(self) -> frozenset[str]:
        return frozenset(self.config.groups)

    @property
    def is_active(self) -> bool:
        return self.config.status == "ACTIVE"


def _app_config(document: dict[str, Any]) -> AppConfig:
    document = dict(document)
    method = document.get("tokenEndpointAuthMethod", "client_secret_basic")
    if method in ("client_secret_basic", "client_secret_post"):
        document["clientSecret"] = _SECRET_PLACEHOLDER
    return AppConfig.model_validate(document).model_copy(update={"client_secret": None})


_servers = ValidationMemo(AuthorizationServerConfig.model_validate)
_apps = ValidationMemo(_app_config)
_users = ValidationMemo(UserConfig.model_validate)


def server_from_document(document: dict[str, Any]) -> AuthorizationServerConfig:
    return _servers(document)


def app_from_object(obj: StoredObject) -> App:
    return App(_apps(obj.document), obj.secret_hash)


def user_from_object(obj: StoredObject) -> User:
    return User(_users(obj.document), obj.secret_hash)


def get_server(store: Store, as_id: str) -> AuthorizationServerConfig | None:
    """A locally served authorization server (remote ones are the proxy's business), active or not."""
    obj = store.get_object("authorization_server", as_id)
    if obj is None:
        return None
    server = server_from_document(obj.document)
    return server if server.remote is None else None


def get_app(store: Store, client_id: str) -> App | None:
    obj = store.get_object("app", client_id)
    return app_from_object(obj) if obj is not None else None


def get_user(store: Store, user_id: str) -> User | None:
    obj = store.get_object("user", user_id)
    return user_from_object(obj) if obj is not None else None


def find_user_by_login(store: Store, login: str) -> User | None:
    """Okta logins are case-insensitive and unique (spec §1.7); the config enforces uniqueness."""
    wanted = login.casefold()
    for obj in store.list_objects("user"):
        if str(obj.document.get("login", "")).casefold() == wanted:
            return user_from_object(obj)
    return None


def is_assigned(app: App, user: User) -> bool:
    """The brief: 'You can assign the client directly (direct user assignment) or indirectly (group
    assignment).'"""
    assignments = app.config.assignments
    return user.id in assignments.users or bool(user.groups & set(assignments.groups))


__all__ = [
    "App",
    "User",
    "app_from_object",
    "find_user_by_login",
    "get_app",
    "get_server",
    "get_user",
    "is_assigned",
    "server_from_document",
    "user_from_object",
]
