"""Stored documents of config objects (``authz/store/base.py``): how a model is dumped, and the stable
ids of an authorization server's parts.

The config file and the management API both store servers through these, so a server declared in the
file and then read or changed through the API carries the same ids in every process and across restarts.
"""

from __future__ import annotations

import hashlib
from typing import Any

from pydantic import BaseModel

Doc = dict[str, Any]


def dump(model: BaseModel, exclude: set[str] | None = None) -> Doc:
    """The stored document of a config model: camelCase keys, no empty optionals, JSON types."""
    return model.model_dump(by_alias=True, exclude_none=True, mode="json", exclude=exclude)


def stable_id(prefix: str, *parts: str) -> str:
    """Okta-style id (``scp…``, ``ocl…``, ``00p…``, ``0pr…``) for an object that names none, derived from its
    names so that it is the same in every process and across restarts."""
    digest = hashlib.sha256("\0".join(parts).encode()).hexdigest()
    return prefix + digest[: 20 - len(prefix)]


def ensure_ids(server_id: str, doc: Doc) -> Doc:
    """Give every scope, claim, policy and rule of a server document its id (in place); returns ``doc``."""
    for scope in doc.get("scopes", []):
        scope.setdefault("id", stable_id("scp", server_id, scope["name"]))
    for claim in doc.get("claims", []):
        claim.setdefault("id", stable_id("ocl", server_id, claim.get("claimType", "RESOURCE"), claim["name"]))
    for policy in doc.get("policies", []):
        policy.setdefault("id", stable_id("00p", server_id, policy["name"]))
        for rule in policy.get("rules", []):
            rule.setdefault("id", stable_id("0pr", server_id, policy["name"], rule["name"]))
    return doc
