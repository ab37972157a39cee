"""``/api/v1/users`` and ``/api/v1/groups`` (spec §1.7).

"Deactivation sets DEPROVISIONED"; "Delete is allowed only when DEPROVISIONED; a first DELETE
deactivates" (spec §1.7). A user deactivated or deleted loses every token (spec §5.2). Suspension keeps
the tokens (spec §9 D5: "Keep existing refresh tokens, but fail them while the user is not ACTIVE").
Removing a user from a group revokes the user's tokens for the clients they could use only through it.
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute

from authz.context import CoreContext
from authz.documents import Doc, dump
from authz.errors import OktaApiError
from authz.management.audit import Caller, change_event
from authz.management.changes import Change, Snapshot, apply_change, read_snapshot
from authz.management.revoking import Watermark
from authz.management.routing import admin_route, json_response, no_content, paginate, query_flag, read_json
from authz.management.shapes import group_from_okta, group_to_okta, new_id, user_from_okta, user_to_okta
from authz.passwords import hash_secret
from authz.store.base import StoredObject

_ACTIVATABLE = ("STAGED", "PROVISIONED", "DEPROVISIONED")


def management_user_routes(ctx: CoreContext) -> list[BaseRoute]:
    users = _UserApi(ctx)
    return [
        admin_route(ctx, "/api/v1/users", {"GET": users.list_users, "POST": users.create_user}),
        admin_route(ctx, "/api/v1/users/{user_id}", {"GET": users.get_user, "POST": users.update_user,
                                                     "PUT": users.replace_user, "DELETE": users.delete_user}),
        admin_route(ctx, "/api/v1/users/{user_id}/lifecycle/{action}", {"POST": users.lifecycle}),
        admin_route(ctx, "/api/v1/users/{user_id}/groups", {"GET": users.list_user_groups}),
        admin_route(ctx, "/api/v1/groups", {"GET": users.list_groups, "POST": users.create_group}),
        admin_route(ctx, "/api/v1/groups/{group_id}", {"GET": users.get_group, "PUT": users.replace_group,
                                                       "DELETE": users.delete_group}),
        admin_route(ctx, "/api/v1/groups/{group_id}/users", {"GET": users.list_group_users}),
        admin_route(ctx, "/api/v1/groups/{group_id}/users/{user_id}", {"PUT": users.add_member,
                                                                       "DELETE": users.remove_member}),
    ]


def find_user(snapshot: Snapshot, id_or_login: str) -> StoredObject:
    """Okta addresses a user by id or by login (``/api/v1/users/{idOrLogin}``)."""
    found = snapshot.get("user", id_or_login)
    if found is not None:
        return found
    for user in snapshot.objects["user"].values():
        if user.document.get("login", "").lower() == id_or_login.lower():
            return user
    raise OktaApiError.not_found(id_or_login, "User")


def _user_event(caller: Caller, event_type: str, now: float, user: Doc, before: Doc | None, after: Doc | None,
                message: str) -> dict[str, Any]:
    return change_event(caller, event_type, now, target_type="User", target_id=user["id"], name=user.get("login"),
                        before=before, after=after, message=message)


def _group_event(caller: Caller, event_type: str, now: float, group: Doc, before: Doc | None, after: Doc | None,
                 message: str) -> dict[str, Any]:
    return change_event(caller, event_type, now, target_type="UserGroup", target_id=group["id"],
                        name=group.get("name"), before=before, after=after, message=message)


def _matches_filter(doc: Doc, expression: str) -> bool:
    """The one filter Okta clients use most: ``status eq "ACTIVE"``."""
    parts = expression.split(None, 2)
    if len(parts) != 3 or parts[1] != "eq" or parts[0] not in ("status", "profile.login"):
        raise OktaApiError(400, "E0000031", "Invalid search criteria.", [f"filter: unsupported expression {expression!r}"])
    value = parts[2].strip('"')
    return doc.get("status", "ACTIVE") == value if parts[0] == "status" else doc.get("login") == value


class _UserApi:
    def __init__(self, ctx: CoreContext) -> None:
        self.ctx = ctx
        self.base = ctx.config.issuer

    def _user_out(self, obj: StoredObject) -> Doc:
        return user_to_okta(self.base, obj.document, obj.created, obj.last_updated, obj.secret_hash is not None)

    def _group_out(self, obj: StoredObject) -> Doc:
        return group_to_okta(self.base, obj.document, obj.created, obj.last_updated)

    # ------------------------------------------------------------------------------------------ users

    async def list_users(self, request: Request) -> Response:
        users = sorted((await read_snapshot(self.ctx)).objects["user"].values(), key=lambda o: (o.created, o.id))
        q = request.query_params.get("q", "").lower()
        if q:
            def hit(doc: Doc) -> bool:
                fields = [doc.get("login", ""), *(doc.get("profile", {}).get(k) or "" for k in
                                                  ("firstName", "lastName", "email"))]
                return any(str(f).lower().startswith(q) for f in fields)
            users = [u for u in users if hit(u.document)]
        expression = request.query_params.get("filter") or request.query_params.get("search")
        if expression:
            users = [u for u in users if _matches_filter(u.document, expression)]
        else:
            # Okta leaves DEPROVISIONED users out of an unfiltered list.
            users = [u for u in users if u.document.get("status") != "DEPROVISIONED"]
        return paginate(request, [self._user_out(u) for u in users])

    async def get_user(self, request: Request) -> Response:
        return json_response(self._user_out(find_user(await read_snapshot(self.ctx), request.path_params["user_id"])))

    async def create_user(self, request: Request) -> Response:
        body = await read_json(request)
        caller = Caller.of(request)
        user_id = new_id("00u")
        activate = query_flag(request, "activate", True)
        groups = body.get("groupIds") or []
        if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
            raise OktaApiError.validation(["groupIds: must be a list of group ids"])
        user, password = user_from_okta(body, user_id, "ACTIVE" if activate else "STAGED", groups)
        password_hash = await asyncio.to_thread(hash_secret, password) if password else None

        def build(snapshot: Snapshot, now: float) -> tuple[Change, None]:
            doc = dump(user, exclude={"password"})
            change = Change()
            change.put("user", user_id, doc, password_hash)
            change.events.append(_user_event(caller, "user.lifecycle.create", now, doc, None, doc, "Create user"))
            if activate:
                change.events.append(_user_event(caller, "user.lifecycle.activate", now, doc, None,
                                                 {"status": "ACTIVE"}, "Activate user"))
            return change, None

        await apply_change(self.ctx, build)
        return json_response(self._user_out(find_user(await read_snapshot(self.ctx), user_id)))

    async def update_user(self, request: Request) -> Response:
        """``POST /users/{id}``: a partial update; the profile is merged."""
        return await self._put_user(request, partial=True)

    async def replace_user(self, request: Request) -> Response:
        return await self._put_user(request, partial=False)

    async def _put_user(self, request: Request, partial: bool) -> Response:
        body = await read_json(request)
        caller = Caller.of(request)
        current = find_user(await read_snapshot(self.ctx), request.path_params["user_id"])
        base_profile = {"login": current.document["login"], **current.document.get("profile", {})} if partial else None
        user, password = user_from_okta(body, current.id, current.document.get("status", "ACTIVE"),
                                        current.document.get("groups", []), base_profile)
        password_hash = await asyncio.to_thread(hash_secret, password) if password else None

        def build(snapshot: Snapshot, now: float) -> tuple[Change, None]:
            before = snapshot.require("user", current.id, "User").document
            doc = dump(user, exclude={"password"})
            change = Change()
            change.put("user", current.id, doc, password_hash)
            change.events.append(_user_event(caller, "user.account.update_profile", now, doc, before, doc,
                                             "Update user profile"))
            if password_hash:
                change.events.append(_user_event(caller, "user.account.update_password", now, doc, None, None,
                                                 "Update user password"))
            return change, None

        await apply_change(self.ctx, build)
        return json_response(self._user_out(find_user(await read_snapshot(self.ctx), current.id)))

    async def delete_user(self, request: Request) -> Response:
        id_or_login = request.path_params["user_id"]
        caller = Caller.of(request)

        def build(snapshot: Snapshot, now: float) -> tuple[Change, None]:
            doc = find_user(snapshot, id_or_login).document
            change = Change()
            change.watermarks.append(Watermark.user(doc["id"]))
            if doc.get("status") != "DEPROVISIONED":
                # Spec §1.7: "a first DELETE deactivates".
                change.check_references = False
                change.put("user", doc["id"], {**doc, "status": "DEPROVISIONED"})
                change.events.append(_user_event(caller, "user.lifecycle.deactivate", now, doc,
                                                 {"status": doc.get("status", "ACTIVE")},
                                                 {"status": "DEPROVISIONED"}, "Deactivate user"))
                return change, None
            change.delete("user", doc["id"])
            # Okta removes a deleted user's app assignments with it.
            for app in snapshot.objects["app"].values():
                users = app.document.get("assignments", {}).get("users", [])
                if doc["id"] in users:
                    assignments = {**app.document["assignments"], "users": [u for u in users if u != doc["id"]]}
                    change.put("app", app.id, {**app.document, "assignments": assignments})
            change.events.append(_user_event(caller, "user.lifecycle.delete", now, doc, doc, None, "Delete user"))
            return change, None

        await apply_change(self.ctx, build)
        return no_content()

    async def lifecycle(self, request: Request) -> Response:
        id_or_login, action = request.path_params["user_id"], request.path_params["action"]
        if action not in ("activate", "deactivate", "suspend", "unsuspend", "reactivate"):
            raise OktaApiError.not_found(action, "lifecycle operation")
        caller = Caller.of(request)

        def build(snapshot: Snapshot, now: float) -> tuple[Change, None]:
            doc = find_user(snapshot, id_or_login).document
            status = doc.get("status", "ACTIVE")
            target = {"activate": "ACTIVE", "reactivate": "ACTIVE", "deactivate": "DEPROVISIONED",
                      "suspend": "SUSPENDED", "unsuspend": "ACTIVE"}[action]
            if action in ("activate", "reactivate") and status not in _ACTIVATABLE:
                raise OktaApiError(403, "E0000016", "Activation failed because the user is already active")
            if action == "suspend" and status != "ACTIVE":
                raise OktaApiError(400, "E0000001", "Api validation failed: user",
                                   ["status: Cannot suspend a user that is not active"])
            if action == "unsuspend" and status != "SUSPENDED":
                raise OktaApiError(400, "E0000001", "Api validation failed: user",
                                   ["status: Cannot unsuspend a user that is not suspended"])
            change = Change(check_references=False)
            change.put("user", doc["id"], {**doc, "status": target})
            if target == "DEPROVISIONED":
                change.watermarks.append(Watermark.user(doc["id"]))
            change.events.append(_user_event(caller, f"user.lifecycle.{action}", now, doc, {"status": status},
                                             {"status": target}, f"{action.capitalize()} user"))
            return change, None

        await apply_change(self.ctx, build)
        return json_response({})

    async def list_user_groups(self, request: Request) -> Response:
        snapshot = await read_snapshot(self.ctx)
        user = find_user(snapshot, request.path_params["user_id"])
        groups = [snapshot.get("group", g) for g in user.document.get("groups", [])]
        return paginate(request, [self._group_out(g) for g in groups if g is not None])

    # ------------------------------------------------------------------------------------------ groups

    async def list_groups(self, request: Request) -> Response:
        groups = sorted((await read_snapshot(self.ctx)).objects["group"].values(), key=lambda o: (o.created, o.id))
        q = request.query_params.get("q", "").lower()
        if q:
            groups = [g for g in groups if g.document.get("name", "").lower().startswith(q)]
        return paginate(request, [self._group_out(g) for g in groups])

    async def get_group(self, request: Request) -> Response:
        snapshot = await read_snapshot(self.ctx)
        return json_response(self._group_out(snapshot.require("group", request.path_params["group_id"], "UserGroup")))

    async def create_group(self, request: Request) -> Response:
        return await self._put_group(request, None)

    async def replace_group(self, request: Request) -> Response:
        return await self._put_group(request, request.path_params["group_id"])

    async def _put_group(self, request: Request, group_id: str | None) -> Response:
        body = await read_json(request)
        caller = Caller.of(request)
        new = group_id or new_id("00g")
        group = group_from_okta(body, new)

        def build(snapshot: Snapshot, now: float) -> tuple[Change, None]:
            before = snapshot.require("group", new, "UserGroup").document if group_id else None
            if any(g.document.get("name") == group.name and g.id != new for g in snapshot.objects["group"].values()):
                raise OktaApiError.validation([f"profile.name: An object with this field already exists ({group.name})"])
            doc = dump(group)
            change = Change()
            change.put("group", new, doc)
            change.events.append(_group_event(caller, "group.profile.update" if before else "group.lifecycle.create",
                                              now, doc, before, doc, "Update group" if before else "Create group"))
            return change, None

        await apply_change(self.ctx, build)
        snapshot = await read_snapshot(self.ctx)
        return json_response(self._group_out(snapshot.require("group", new, "UserGroup")))

    async def delete_group(self, request: Request) -> Response:
        group_id = request.path_params["group_id"]
        caller = Caller.of(request)

        def build(snapshot: Snapshot, now: float) -> tuple[Change, None]:
            doc = snapshot.require("group", group_id, "UserGroup").document
            change = Change()
            change.delete("group", group_id)
            # The group's memberships and app assignments go with it; a member who could use a client
            # only through this group loses that client's tokens (``lost_access``).
            for user in snapshot.objects["user"].values():
                if group_id in user.document.get("groups", []):
                    change.put("user", user.id, {**user.document,
                                                 "groups": [g for g in user.document["groups"] if g != group_id]})
            for app in snapshot.objects["app"].values():
                groups = app.document.get("assignments", {}).get("groups", [])
                if group_id in groups:
                    assignments = {**app.document["assignments"], "groups": [g for g in groups if g != group_id]}
                    change.put("app", app.id, {**app.document, "assignments": assignments})
            change.events.append(_group_event(caller, "group.lifecycle.delete", now, doc, doc, None, "Delete group"))
            return change, None

        await apply_change(self.ctx, build)
        return no_content()

    async def list_group_users(self, request: Request) -> Response:
        snapshot = await read_snapshot(self.ctx)
        group_id = request.path_params["group_id"]
        snapshot.require("group", group_id, "UserGroup")
        members = sorted((u for u in snapshot.objects["user"].values() if group_id in u.document.get("groups", [])),
                         key=lambda o: (o.created, o.id))
        return paginate(request, [self._user_out(u) for u in members])

    async def add_member(self, request: Request) -> Response:
        return await self._membership(request, add=True)

    async def remove_member(self, request: Request) -> Response:
        return await self._membership(request, add=False)

    async def _membership(self, request: Request, add: bool) -> Response:
        group_id, id_or_login = request.path_params["group_id"], request.path_params["user_id"]
        caller = Caller.of(request)

        def build(snapshot: Snapshot, now: float) -> tuple[Change, None]:
            group = snapshot.require("group", group_id, "UserGroup").document
            user = find_user(snapshot, id_or_login).document
            groups = list(user.get("groups", []))
            change = Change(check_references=False)
            if add == (group_id in groups):
                return change, None  # Okta answers 204 for a membership that is already as asked.
            groups = [*groups, group_id] if add else [g for g in groups if g != group_id]
            change.put("user", user["id"], {**user, "groups": groups})
            change.events.append(change_event(
                caller, f"group.user_membership.{'add' if add else 'remove'}", now, target_type="User",
                target_id=user["id"], name=user.get("login"), before={"groups": user.get("groups", [])},
                after={"groups": groups}, message=f"{'Add user to' if add else 'Remove user from'} group",
                parent={"id": group_id, "type": "UserGroup", "alternateId": group.get("name"),
                        "displayName": group.get("name")}))
            return change, None

        await apply_change(self.ctx, build)
        return no_content()
