"""``/api/v1/authorizationServers``: servers, scopes, claims, policies, rules and signing keys (spec §1.1-1.5).

Every change to a server's configuration (the server itself, its resource, scopes, claims, policies or
rules) revokes the server's tokens (spec §5.2: "Configuration in the authorization server is changed or
deleted"); key rotation does not.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute

from authz.context import CoreContext
from authz.documents import Doc, dump, ensure_ids
from authz.errors import OktaApiError
from authz.keys import ensure_signing_keys, public_jwk, published_keys, rotate_keys
from authz.management.audit import Caller, change_event, server_target
from authz.management.changes import Change, Snapshot, apply_change, read_object, read_snapshot
from authz.management.revoking import Watermark
from authz.management.routing import admin_route, json_response, no_content, paginate, read_json
from authz.management.shapes import (
    claim_from_okta,
    claim_to_okta,
    new_id,
    policy_from_okta,
    policy_to_okta,
    rule_from_okta,
    rule_to_okta,
    scope_from_okta,
    scope_to_okta,
    server_from_okta,
    server_to_okta,
    system_scopes,
    validate,
)
from authz.store.base import StoredObject
from config.schema import OIDC_SCOPES, AuthorizationServerConfig

BASE = "/api/v1/authorizationServers"
KIND: Final = "authorization_server"


@dataclass
class Edit:
    """What an edit of one server's nested object did, for the event and the response."""

    event_type: str
    target_type: str
    target_id: str
    name: str
    before: Doc | None
    after: Doc | None
    message: str


def management_server_routes(ctx: CoreContext) -> list[BaseRoute]:
    api = _ServerApi(ctx)
    return [
        admin_route(ctx, BASE, {"GET": api.list_servers, "POST": api.create_server}),
        admin_route(ctx, BASE + "/{as_id}", {"GET": api.get_server, "PUT": api.replace_server,
                                              "DELETE": api.delete_server}),
        admin_route(ctx, BASE + "/{as_id}/lifecycle/{action}", {"POST": api.server_lifecycle}),
        admin_route(ctx, BASE + "/{as_id}/scopes", {"GET": api.list_scopes, "POST": api.create_scope}),
        admin_route(ctx, BASE + "/{as_id}/scopes/{item_id}", {"GET": api.get_scope, "PUT": api.replace_scope,
                                                               "DELETE": api.delete_scope}),
        admin_route(ctx, BASE + "/{as_id}/claims", {"GET": api.list_claims, "POST": api.create_claim}),
        admin_route(ctx, BASE + "/{as_id}/claims/{item_id}", {"GET": api.get_claim, "PUT": api.replace_claim,
                                                               "DELETE": api.delete_claim}),
        admin_route(ctx, BASE + "/{as_id}/policies", {"GET": api.list_policies, "POST": api.create_policy}),
        admin_route(ctx, BASE + "/{as_id}/policies/{policy_id}", {"GET": api.get_policy, "PUT": api.replace_policy,
                                                                   "DELETE": api.delete_policy}),
        admin_route(ctx, BASE + "/{as_id}/policies/{policy_id}/lifecycle/{action}", {"POST": api.policy_lifecycle}),
        admin_route(ctx, BASE + "/{as_id}/policies/{policy_id}/rules", {"GET": api.list_rules,
                                                                         "POST": api.create_rule}),
        admin_route(ctx, BASE + "/{as_id}/policies/{policy_id}/rules/{rule_id}",
                    {"GET": api.get_rule, "PUT": api.replace_rule, "DELETE": api.delete_rule}),
        admin_route(ctx, BASE + "/{as_id}/policies/{policy_id}/rules/{rule_id}/lifecycle/{action}",
                    {"POST": api.rule_lifecycle}),
        admin_route(ctx, BASE + "/{as_id}/credentials/keys", {"GET": api.list_keys}),
        admin_route(ctx, BASE + "/{as_id}/credentials/lifecycle/keyRotate", {"POST": api.rotate_keys}),
    ]


def _status_for(action: str) -> str:
    if action not in ("activate", "deactivate"):
        raise OktaApiError(404, "E0000007", f"Not found: Resource not found: {action} (lifecycle operation)")
    return "ACTIVE" if action == "activate" else "INACTIVE"


def _find(items: list[Doc], item_id: str, label: str) -> Doc:
    for item in items:
        if item.get("id") == item_id:
            return item
    raise OktaApiError.not_found(item_id, label)


def _place(items: list[Doc], item: Doc, priority: int | None) -> None:
    """Okta keeps priorities contiguous from 1: an object put at priority p moves the others down; one
    without a priority goes last ("A newly created rule gets the lowest priority", spec §1.5)."""
    ordered = sorted((i for i in items if i is not item), key=lambda i: int(i.get("priority", 1)))
    index = len(ordered) if priority is None else max(0, min(priority - 1, len(ordered)))
    ordered.insert(index, item)
    for position, each in enumerate(ordered, 1):
        each["priority"] = position
    items[:] = ordered


def _priority(body: dict[str, Any]) -> int | None:
    value = body.get("priority")
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise OktaApiError.validation(["priority: must be an integer of at least 1"])
    return value


def _unique_name(items: list[Doc], name: object, own_id: str | None, what: str, why: str = "") -> None:
    if any(i.get("name") == name and i.get("id") != own_id for i in items):
        raise OktaApiError.validation([f"name: duplicate {what} name {name!r}{why}"])


class _ServerApi:
    def __init__(self, ctx: CoreContext) -> None:
        self.ctx = ctx
        self.base = ctx.config.issuer

    # ------------------------------------------------------------------------------------------ servers

    async def _server(self, request: Request) -> StoredObject:
        return await read_object(self.ctx, KIND, request.path_params["as_id"], "AuthorizationServer")

    async def _active_kid(self, as_id: str) -> str | None:
        keys = await asyncio.to_thread(self.ctx.store.list_signing_keys, as_id)
        return next((k.kid for k in keys if k.status == "ACTIVE"), None)

    async def _server_out(self, obj: StoredObject) -> Doc:
        return server_to_okta(self.ctx.issuer_for(obj.id), self.base, obj.document, obj.created, obj.last_updated,
                              await self._active_kid(obj.id))

    async def list_servers(self, request: Request) -> Response:
        servers = sorted((await read_snapshot(self.ctx)).objects[KIND].values(), key=lambda o: (o.created, o.id))
        servers = [s for s in servers if "remote" not in s.document]
        q = request.query_params.get("q", "").lower()
        if q:
            servers = [s for s in servers if q in s.document.get("name", "").lower()
                       or any(q in a.lower() for a in s.document.get("audiences", []))]
        return paginate(request, [await self._server_out(s) for s in servers])

    async def create_server(self, request: Request) -> Response:
        body = await read_json(request)
        caller = Caller.of(request)
        as_id = new_id("aus")

        def build(snapshot: Snapshot, now: float) -> tuple[Change, None]:
            doc = ensure_ids(as_id, dump(server_from_okta(body, as_id, None)))
            change = Change()
            change.put(KIND, as_id, doc)
            change.events.append(change_event(caller, "oauth2.as.created", now, target_type="AuthorizationServer",
                                              target_id=as_id, name=doc["name"], before=None, after=doc,
                                              message="Create authorization server"))
            return change, None

        await apply_change(self.ctx, build)
        await self._ensure_keys(as_id)
        return json_response(await self._server_out(await read_object(self.ctx, KIND, as_id, "AuthorizationServer")),
                             201)

    async def _ensure_keys(self, as_id: str) -> None:
        await asyncio.to_thread(ensure_signing_keys, self.ctx.store, as_id, self.ctx.now())

    async def get_server(self, request: Request) -> Response:
        return json_response(await self._server_out(await self._server(request)))

    async def replace_server(self, request: Request) -> Response:
        body = await read_json(request)

        def edit(doc: Doc, snapshot: Snapshot) -> Edit:
            before = {k: v for k, v in doc.items() if k not in ("scopes", "claims", "policies")}
            new = dump(server_from_okta(body, doc["id"], doc))
            doc.clear()
            doc.update(new)
            after = {k: v for k, v in doc.items() if k not in ("scopes", "claims", "policies")}
            return Edit("oauth2.as.updated", "AuthorizationServer", doc["id"], doc["name"], before, after,
                        "Update authorization server")

        obj = await self._edit(request, edit)
        return json_response(await self._server_out(obj))

    async def delete_server(self, request: Request) -> Response:
        as_id = request.path_params["as_id"]
        caller = Caller.of(request)

        def build(snapshot: Snapshot, now: float) -> tuple[Change, None]:
            doc = snapshot.require(KIND, as_id, "AuthorizationServer").document
            change = Change()
            change.delete(KIND, as_id)
            change.watermarks.append(Watermark.server(as_id))
            change.events.append(change_event(caller, "oauth2.as.deleted", now, target_type="AuthorizationServer",
                                              target_id=as_id, name=doc.get("name"), before=doc, after=None,
                                              message="Delete authorization server"))
            return change, None

        await apply_change(self.ctx, build)
        return no_content()

    async def server_lifecycle(self, request: Request) -> Response:
        status = _status_for(request.path_params["action"])

        def edit(doc: Doc, snapshot: Snapshot) -> Edit:
            before = doc.get("status", "ACTIVE")
            doc["status"] = status
            verb = "activated" if status == "ACTIVE" else "deactivated"
            return Edit(f"oauth2.as.{verb}", "AuthorizationServer", doc["id"], doc["name"], {"status": before},
                        {"status": status}, f"{verb.capitalize()} authorization server")

        await self._edit(request, edit)
        return no_content()

    async def _edit(self, request: Request, edit: Callable[[Doc, Snapshot], Edit]) -> StoredObject:
        """Change one server's document; the whole server is validated with the config model, and its
        tokens are revoked (spec §5.2)."""
        as_id = request.path_params["as_id"]
        caller = Caller.of(request)

        def build(snapshot: Snapshot, now: float) -> tuple[Change, None]:
            doc = snapshot.server_document(as_id)
            if "remote" in doc:
                raise OktaApiError.not_found(as_id, "AuthorizationServer")
            done = edit(doc, snapshot)
            server = validate(AuthorizationServerConfig, doc)
            change = Change()
            change.put(KIND, as_id, ensure_ids(as_id, dump(server)))
            change.watermarks.append(Watermark.server(as_id))
            parent = None if done.target_type == "AuthorizationServer" else server_target(as_id, doc["name"])
            change.events.append(change_event(caller, done.event_type, now, target_type=done.target_type,
                                              target_id=done.target_id, name=done.name, before=done.before,
                                              after=done.after, message=done.message, parent=parent))
            return change, None

        await apply_change(self.ctx, build)
        return await read_object(self.ctx, KIND, as_id, "AuthorizationServer")

    # ------------------------------------------------------------------------------------------ scopes

    async def list_scopes(self, request: Request) -> Response:
        obj = await self._server(request)
        doc = ensure_ids(obj.id, dict(obj.document))
        items = [scope_to_okta(self.base, obj.id, s) for s in doc.get("scopes", [])]
        items += system_scopes(self.base, obj.id)
        q = request.query_params.get("q")
        if q:
            items = [i for i in items if q.lower() in i["name"].lower()]
        return paginate(request, items)

    def _system_scope(self, as_id: str, scope_id: str) -> Doc | None:
        return next((s for s in system_scopes(self.base, as_id) if s["id"] == scope_id), None)

    async def get_scope(self, request: Request) -> Response:
        obj = await self._server(request)
        scope_id = request.path_params["item_id"]
        system = self._system_scope(obj.id, scope_id)
        if system is not None:
            return json_response(system)
        doc = ensure_ids(obj.id, dict(obj.document))
        return json_response(scope_to_okta(self.base, obj.id, _find(doc.get("scopes", []), scope_id, "OAuth2Scope")))

    async def create_scope(self, request: Request) -> Response:
        return await self._put_scope(request, None)

    async def replace_scope(self, request: Request) -> Response:
        return await self._put_scope(request, request.path_params["item_id"])

    async def _put_scope(self, request: Request, scope_id: str | None) -> Response:
        body = await read_json(request)
        new = scope_id or new_id("scp")
        out: list[Doc] = []

        def edit(doc: Doc, snapshot: Snapshot) -> Edit:
            scopes: list[Doc] = doc.setdefault("scopes", [])
            self._refuse_system(doc["id"], new, body.get("name"))
            before = _find(scopes, new, "OAuth2Scope") if scope_id else None
            scope = dump(scope_from_okta(body, new))
            _unique_name(scopes, scope["name"], new, "scope", ": scopes are unique per authorization server")
            if before is None:
                scopes.append(scope)
            else:
                scopes[scopes.index(before)] = scope
            out.append(scope)
            return Edit("oauth2.scope.updated" if before else "oauth2.scope.created", "OAuth2Scope", new,
                        scope["name"], before, scope, "Update scope" if before else "Create scope")

        obj = await self._edit(request, edit)
        return json_response(scope_to_okta(self.base, obj.id, out[0]), 200 if scope_id else 201)

    def _refuse_system(self, as_id: str, scope_id: str, name: object) -> None:
        if self._system_scope(as_id, scope_id) is not None:
            raise OktaApiError.validation(["system: the OpenID Connect scopes exist on every authorization server "
                                           "and cannot be changed or deleted"])
        if name in OIDC_SCOPES:
            raise OktaApiError.validation([f"name: {name!r} is an OpenID Connect scope that exists on every "
                                           "authorization server; do not declare it"])

    async def delete_scope(self, request: Request) -> Response:
        scope_id = request.path_params["item_id"]

        def edit(doc: Doc, snapshot: Snapshot) -> Edit:
            self._refuse_system(doc["id"], scope_id, None)
            scopes: list[Doc] = doc.get("scopes", [])
            before = _find(scopes, scope_id, "OAuth2Scope")
            scopes.remove(before)
            return Edit("oauth2.scope.deleted", "OAuth2Scope", scope_id, before["name"], before, None, "Delete scope")

        await self._edit(request, edit)
        return no_content()

    # ------------------------------------------------------------------------------------------ claims

    async def list_claims(self, request: Request) -> Response:
        obj = await self._server(request)
        doc = ensure_ids(obj.id, dict(obj.document))
        return paginate(request, [claim_to_okta(self.base, obj.id, c) for c in doc.get("claims", [])])

    async def get_claim(self, request: Request) -> Response:
        obj = await self._server(request)
        doc = ensure_ids(obj.id, dict(obj.document))
        claim = _find(doc.get("claims", []), request.path_params["item_id"], "OAuth2Claim")
        return json_response(claim_to_okta(self.base, obj.id, claim))

    async def create_claim(self, request: Request) -> Response:
        return await self._put_claim(request, None)

    async def replace_claim(self, request: Request) -> Response:
        return await self._put_claim(request, request.path_params["item_id"])

    async def _put_claim(self, request: Request, claim_id: str | None) -> Response:
        body = await read_json(request)
        new = claim_id or new_id("ocl")
        out: list[Doc] = []

        def edit(doc: Doc, snapshot: Snapshot) -> Edit:
            claims: list[Doc] = doc.setdefault("claims", [])
            before = _find(claims, new, "OAuth2Claim") if claim_id else None
            claim = dump(claim_from_okta(body, new))
            same_type = [c for c in claims if c.get("claimType", "RESOURCE") == claim.get("claimType", "RESOURCE")]
            _unique_name(same_type, claim["name"], new, "claim", " for this claimType")
            if before is None:
                claims.append(claim)
            else:
                claims[claims.index(before)] = claim
            out.append(claim)
            return Edit("oauth2.claim.updated" if before else "oauth2.claim.created", "OAuth2Claim", new,
                        claim["name"], before, claim, "Update claim" if before else "Create claim")

        obj = await self._edit(request, edit)
        return json_response(claim_to_okta(self.base, obj.id, out[0]), 200 if claim_id else 201)

    async def delete_claim(self, request: Request) -> Response:
        claim_id = request.path_params["item_id"]

        def edit(doc: Doc, snapshot: Snapshot) -> Edit:
            claims: list[Doc] = doc.get("claims", [])
            before = _find(claims, claim_id, "OAuth2Claim")
            claims.remove(before)
            return Edit("oauth2.claim.deleted", "OAuth2Claim", claim_id, before["name"], before, None, "Delete claim")

        await self._edit(request, edit)
        return no_content()

    # ------------------------------------------------------------------------------------------ policies

    def _policy_out(self, obj: StoredObject, policy: Doc) -> Doc:
        return policy_to_okta(self.base, obj.id, policy, obj.created, obj.last_updated)

    async def list_policies(self, request: Request) -> Response:
        obj = await self._server(request)
        doc = ensure_ids(obj.id, dict(obj.document))
        policies = sorted(doc.get("policies", []), key=lambda p: int(p.get("priority", 1)))
        return paginate(request, [self._policy_out(obj, p) for p in policies])

    async def get_policy(self, request: Request) -> Response:
        obj = await self._server(request)
        doc = ensure_ids(obj.id, dict(obj.document))
        return json_response(self._policy_out(obj, _find(doc.get("policies", []), request.path_params["policy_id"],
                                                         "AuthorizationServerPolicy")))

    async def create_policy(self, request: Request) -> Response:
        return await self._put_policy(request, None)

    async def replace_policy(self, request: Request) -> Response:
        return await self._put_policy(request, request.path_params["policy_id"])

    async def _put_policy(self, request: Request, policy_id: str | None) -> Response:
        body = await read_json(request)
        new = policy_id or new_id("00p")
        priority = _priority(body)

        def edit(doc: Doc, snapshot: Snapshot) -> Edit:
            policies: list[Doc] = doc.setdefault("policies", [])
            before = _find(policies, new, "AuthorizationServerPolicy") if policy_id else None
            rules = before.get("rules", []) if before else []
            policy = dump(policy_from_okta(body, new, priority or len(policies) + 1, rules))
            _unique_name(policies, policy["name"], new, "policy")
            if before is not None:
                policies[policies.index(before)] = policy
            else:
                policies.append(policy)
            _place(policies, policy, priority)
            summary = {k: v for k, v in policy.items() if k != "rules"}
            was = {k: v for k, v in before.items() if k != "rules"} if before else None
            return Edit("policy.lifecycle.update" if before else "policy.lifecycle.create",
                        "AuthorizationServerPolicy", new, policy["name"], was, summary,
                        "Update policy" if before else "Create policy")

        obj = await self._edit(request, edit)
        doc = ensure_ids(obj.id, dict(obj.document))
        return json_response(self._policy_out(obj, _find(doc["policies"], new, "AuthorizationServerPolicy")),
                             200 if policy_id else 201)

    async def delete_policy(self, request: Request) -> Response:
        policy_id = request.path_params["policy_id"]

        def edit(doc: Doc, snapshot: Snapshot) -> Edit:
            policies: list[Doc] = doc.get("policies", [])
            before = _find(policies, policy_id, "AuthorizationServerPolicy")
            policies.remove(before)
            for position, each in enumerate(sorted(policies, key=lambda p: int(p["priority"])), 1):
                each["priority"] = position
            return Edit("policy.lifecycle.delete", "AuthorizationServerPolicy", policy_id, before["name"],
                        {k: v for k, v in before.items() if k != "rules"}, None, "Delete policy")

        await self._edit(request, edit)
        return no_content()

    async def policy_lifecycle(self, request: Request) -> Response:
        policy_id = request.path_params["policy_id"]
        status = _status_for(request.path_params["action"])

        def edit(doc: Doc, snapshot: Snapshot) -> Edit:
            policy = _find(doc.get("policies", []), policy_id, "AuthorizationServerPolicy")
            before = policy.get("status", "ACTIVE")
            policy["status"] = status
            verb = "activate" if status == "ACTIVE" else "deactivate"
            return Edit(f"policy.lifecycle.{verb}", "AuthorizationServerPolicy", policy_id, policy["name"],
                        {"status": before}, {"status": status}, f"{verb.capitalize()} policy")

        await self._edit(request, edit)
        return no_content()

    # ------------------------------------------------------------------------------------------ rules

    def _rule_out(self, obj: StoredObject, policy_id: str, rule: Doc) -> Doc:
        return rule_to_okta(self.base, obj.id, policy_id, rule, obj.created, obj.last_updated)

    async def list_rules(self, request: Request) -> Response:
        obj = await self._server(request)
        policy_id = request.path_params["policy_id"]
        doc = ensure_ids(obj.id, dict(obj.document))
        policy = _find(doc.get("policies", []), policy_id, "AuthorizationServerPolicy")
        rules = sorted(policy.get("rules", []), key=lambda r: int(r.get("priority", 1)))
        return paginate(request, [self._rule_out(obj, policy_id, r) for r in rules])

    async def get_rule(self, request: Request) -> Response:
        obj = await self._server(request)
        policy_id = request.path_params["policy_id"]
        doc = ensure_ids(obj.id, dict(obj.document))
        policy = _find(doc.get("policies", []), policy_id, "AuthorizationServerPolicy")
        rule = _find(policy.get("rules", []), request.path_params["rule_id"], "AuthorizationServerPolicyRule")
        return json_response(self._rule_out(obj, policy_id, rule))

    async def create_rule(self, request: Request) -> Response:
        return await self._put_rule(request, None)

    async def replace_rule(self, request: Request) -> Response:
        return await self._put_rule(request, request.path_params["rule_id"])

    async def _put_rule(self, request: Request, rule_id: str | None) -> Response:
        body = await read_json(request)
        policy_id = request.path_params["policy_id"]
        new = rule_id or new_id("0pr")
        priority = _priority(body)

        def edit(doc: Doc, snapshot: Snapshot) -> Edit:
            policy = _find(doc.get("policies", []), policy_id, "AuthorizationServerPolicy")
            rules: list[Doc] = policy.setdefault("rules", [])
            before = _find(rules, new, "AuthorizationServerPolicyRule") if rule_id else None
            rule = dump(rule_from_okta(body, new, priority or len(rules) + 1))
            _unique_name(rules, rule["name"], new, "rule", " in this policy")
            if before is not None:
                rules[rules.index(before)] = rule
            else:
                rules.append(rule)
            _place(rules, rule, priority)
            return Edit("policy.rule.update" if before else "policy.rule.add", "AuthorizationServerPolicyRule",
                        new, rule["name"], before, rule, "Update policy rule" if before else "Add policy rule")

        obj = await self._edit(request, edit)
        doc = ensure_ids(obj.id, dict(obj.document))
        policy = _find(doc["policies"], policy_id, "AuthorizationServerPolicy")
        return json_response(self._rule_out(obj, policy_id, _find(policy["rules"], new, "AuthorizationServerPolicyRule")),
                             200 if rule_id else 201)

    async def delete_rule(self, request: Request) -> Response:
        policy_id, rule_id = request.path_params["policy_id"], request.path_params["rule_id"]

        def edit(doc: Doc, snapshot: Snapshot) -> Edit:
            policy = _find(doc.get("policies", []), policy_id, "AuthorizationServerPolicy")
            rules: list[Doc] = policy.get("rules", [])
            before = _find(rules, rule_id, "AuthorizationServerPolicyRule")
            rules.remove(before)
            for position, each in enumerate(sorted(rules, key=lambda r: int(r["priority"])), 1):
                each["priority"] = position
            return Edit("policy.rule.delete", "AuthorizationServerPolicyRule", rule_id, before["name"], before, None,
                        "Delete policy rule")

        await self._edit(request, edit)
        return no_content()

    async def rule_lifecycle(self, request: Request) -> Response:
        policy_id, rule_id = request.path_params["policy_id"], request.path_params["rule_id"]
        status = _status_for(request.path_params["action"])

        def edit(doc: Doc, snapshot: Snapshot) -> Edit:
            policy = _find(doc.get("policies", []), policy_id, "AuthorizationServerPolicy")
            rule = _find(policy.get("rules", []), rule_id, "AuthorizationServerPolicyRule")
            before = rule.get("status", "ACTIVE")
            rule["status"] = status
            verb = "activate" if status == "ACTIVE" else "deactivate"
            return Edit(f"policy.rule.{verb}", "AuthorizationServerPolicyRule", rule_id, rule["name"],
                        {"status": before}, {"status": status}, f"{verb.capitalize()} policy rule")

        await self._edit(request, edit)
        return no_content()

    # ------------------------------------------------------------------------------------------ keys

    async def _keys_out(self, as_id: str) -> list[Doc]:
        keys = await asyncio.to_thread(self.ctx.store.list_signing_keys, as_id)
        return [{**public_jwk(k), "status": k.status} for k in published_keys(keys)]

    async def list_keys(self, request: Request) -> Response:
        obj = await self._server(request)
        return json_response(await self._keys_out(obj.id))

    async def rotate_keys(self, request: Request) -> Response:
        """Spec §1.1: ACTIVE → EXPIRED, NEXT → ACTIVE; "any other use value gets 400 E0000001 'Api
        validation failed: rotateKeys'". Not a revocation: EXPIRED keys stay published (spec §5.2)."""
        obj = await self._server(request)
        body = await read_json(request)
        if body.get("use") != "sig":
            raise OktaApiError.validation(["use: must be sig"], summary="Api validation failed: rotateKeys")
        caller = Caller.of(request)

        def rotate() -> None:
            now = self.ctx.now()
            with self.ctx.store.transaction() as tx:
                rotate_keys(tx, obj.id, now)
                self.ctx.syslog.record(tx, change_event(
                    caller, "app.oauth2.as.key.rollover", now, target_type="AuthorizationServer", target_id=obj.id,
                    name=obj.document.get("name"), before=None, after=None, message="Rotate signing keys"))
                tx.append_change("config", {"kind": "signing_keys", "id": obj.id})

        await asyncio.to_thread(rotate)
        return json_response(await self._keys_out(obj.id))
