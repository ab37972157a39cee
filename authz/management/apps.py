"""``/api/v1/apps``: OAuth clients and their user and group assignments (spec §1.6).

"The client app is deactivated, changed, unassigned, or deleted" revokes its tokens (spec §5.2);
"Reactivating the client doesn't make the token valid again." Unassigning revokes only the tokens of
the users who lost access to the client (``revoking.lost_access``).
"""

from __future__ import annotations

import asyncio
import secrets
from typing import Any, Final

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute

from authz.context import CoreContext
from authz.documents import Doc, dump
from authz.errors import OktaApiError
from authz.management.audit import Caller, change_event
from authz.management.changes import Change, Snapshot, apply_change, read_object, read_snapshot
from authz.management.revoking import Watermark, has_access
from authz.management.routing import admin_route, json_response, no_content, paginate, query_flag, read_json
from authz.management.shapes import app_from_okta, app_parts, app_to_okta, iso, new_id
from authz.passwords import hash_secret
from authz.store.base import StoredObject

KIND: Final = "app"
_SECRET_METHODS = ("client_secret_basic", "client_secret_post")


def management_app_routes(ctx: CoreContext) -> list[BaseRoute]:
    api = _AppApi(ctx)
    return [
        admin_route(ctx, "/api/v1/apps", {"GET": api.list_apps, "POST": api.create_app}),
        admin_route(ctx, "/api/v1/apps/{app_id}", {"GET": api.get_app, "PUT": api.replace_app,
                                                   "DELETE": api.delete_app}),
        admin_route(ctx, "/api/v1/apps/{app_id}/lifecycle/{action}", {"POST": api.lifecycle}),
        admin_route(ctx, "/api/v1/apps/{app_id}/users", {"GET": api.list_app_users, "POST": api.assign_user}),
        admin_route(ctx, "/api/v1/apps/{app_id}/users/{user_id}", {"GET": api.get_app_user,
                                                                   "DELETE": api.unassign_user}),
        admin_route(ctx, "/api/v1/apps/{app_id}/groups", {"GET": api.list_app_groups}),
        admin_route(ctx, "/api/v1/apps/{app_id}/groups/{group_id}", {"GET": api.get_app_group,
                                                                     "PUT": api.assign_group,
                                                                     "DELETE": api.unassign_group}),
    ]


def _generated_secret() -> str:
    # Okta generates a 64-character secret when none is given (spec §1.6: 14–100 characters).
    return secrets.token_urlsafe(48)


def _app_event(caller: Caller, verb: str, now: float, app_id: str, before: Doc | None, after: Doc | None,
               message: str) -> dict[str, Any]:
    name = (after or before or {}).get("name")
    return change_event(caller, f"app.oauth2.client.lifecycle.{verb}", now, target_type="AppInstance",
                        target_id=app_id, name=name, before=before, after=after, message=message)


class _AppApi:
    def __init__(self, ctx: CoreContext) -> None:
        self.ctx = ctx
        self.base = ctx.config.issuer

    def _out(self, obj: StoredObject, secret: str | None = None) -> Doc:
        return app_to_okta(self.base, obj.document, obj.created, obj.last_updated, secret)

    async def _app(self, request: Request) -> StoredObject:
        return await read_object(self.ctx, KIND, request.path_params["app_id"], "Application")

    async def list_apps(self, request: Request) -> Response:
        apps = sorted((await read_snapshot(self.ctx)).objects[KIND].values(), key=lambda o: (o.created, o.id))
        q = request.query_params.get("q", "").lower()
        if q:
            apps = [a for a in apps if a.document.get("name", "").lower().startswith(q)
                    or a.id.lower().startswith(q)]
        return paginate(request, [self._out(a) for a in apps], default_limit=20)

    async def get_app(self, request: Request) -> Response:
        return json_response(self._out(await self._app(request)))

    async def create_app(self, request: Request) -> Response:
        body = await read_json(request)
        caller = Caller.of(request)
        _, credentials, _ = app_parts(body)
        client_id = credentials.get("client_id") or new_id("0oa")
        method = credentials.get("token_endpoint_auth_method", "client_secret_basic")
        secret = credentials.get("client_secret")
        if secret is None and method in _SECRET_METHODS:
            secret = _generated_secret()
        status = "ACTIVE" if query_flag(request, "activate", True) else "INACTIVE"
        app = app_from_okta(body, str(client_id), secret, status, None)
        secret_hash = await asyncio.to_thread(hash_secret, secret) if secret else None

        def build(snapshot: Snapshot, now: float) -> tuple[Change, None]:
            if snapshot.get(KIND, app.client_id) is not None:
                raise OktaApiError.validation([f"credentials.oauthClient.client_id: An object with this field "
                                               f"already exists ({app.client_id})"])
            doc = dump(app, exclude={"client_secret"})
            change = Change()
            change.put(KIND, app.client_id, doc, secret_hash)
            change.events.append(_app_event(caller, "create", now, app.client_id, None, doc, "Create OAuth client"))
            return change, None

        await apply_change(self.ctx, build)
        obj = await read_object(self.ctx, KIND, app.client_id, "Application")
        return json_response(self._out(obj, secret))

    async def replace_app(self, request: Request) -> Response:
        body = await read_json(request)
        caller = Caller.of(request)
        current = await self._app(request)
        _, credentials, _ = app_parts(body)
        if credentials.get("client_id") not in (None, current.id):
            raise OktaApiError.validation(["credentials.oauthClient.client_id: cannot be changed"])
        method = credentials.get("token_endpoint_auth_method", "client_secret_basic")
        secret = credentials.get("client_secret")
        generated = None
        if secret is None and method in _SECRET_METHODS and current.secret_hash is None:
            secret = generated = _generated_secret()
        # Without a new secret the stored hash is kept; validate as though the secret were given.
        check_secret = secret if secret is not None else ("x" * 32 if current.secret_hash and method in _SECRET_METHODS
                                                          else None)
        app = app_from_okta(body, current.id, check_secret, current.document.get("status", "ACTIVE"),
                            current.document.get("assignments"))
        secret_hash = await asyncio.to_thread(hash_secret, secret) if secret else None

        def build(snapshot: Snapshot, now: float) -> tuple[Change, None]:
            before = snapshot.require(KIND, current.id, "Application").document
            doc = dump(app, exclude={"client_secret"})
            change = Change()
            change.put(KIND, current.id, doc, secret_hash)
            change.watermarks.append(Watermark.client(current.id))
            change.events.append(_app_event(caller, "update", now, current.id, before, doc, "Update OAuth client"))
            return change, None

        await apply_change(self.ctx, build)
        return json_response(self._out(await self._app(request), generated))

    async def delete_app(self, request: Request) -> Response:
        app_id = request.path_params["app_id"]
        caller = Caller.of(request)

        def build(snapshot: Snapshot, now: float) -> tuple[Change, None]:
            before = snapshot.require(KIND, app_id, "Application").document
            change = Change()
            change.delete(KIND, app_id)
            change.watermarks.append(Watermark.client(app_id))
            change.events.append(_app_event(caller, "delete", now, app_id, before, None, "Delete OAuth client"))
            return change, None

        await apply_change(self.ctx, build)
        return no_content()

    async def lifecycle(self, request: Request) -> Response:
        app_id, action = request.path_params["app_id"], request.path_params["action"]
        if action not in ("activate", "deactivate"):
            raise OktaApiError.not_found(action, "lifecycle operation")
        caller = Caller.of(request)

        def build(snapshot: Snapshot, now: float) -> tuple[Change, None]:
            before = snapshot.require(KIND, app_id, "Application").document
            doc = {**before, "status": "ACTIVE" if action == "activate" else "INACTIVE"}
            change = Change(check_references=False)
            change.put(KIND, app_id, doc)
            if action == "deactivate":
                # Spec §5.2: "the token is immediately and permanently invalidated".
                change.watermarks.append(Watermark.client(app_id))
            change.events.append(_app_event(caller, action, now, app_id, {"status": before.get("status", "ACTIVE")},
                                            {"status": doc["status"]}, f"{action.capitalize()} OAuth client"))
            return change, None

        await apply_change(self.ctx, build)
        return json_response({})

    # ------------------------------------------------------------------------------------------ assignments

    def _app_user(self, app: StoredObject, user: StoredObject, scope: str) -> Doc:
        return {
            "id": user.id,
            "scope": scope,
            "status": "PROVISIONED",
            "syncState": "DISABLED",
            "credentials": {"userName": user.document["login"]},
            "profile": {},
            "created": iso(user.created),
            "lastUpdated": iso(app.last_updated),
            "statusChanged": iso(app.last_updated),
            "_links": {"app": {"href": f"{self.base}/api/v1/apps/{app.id}"},
                       "user": {"href": f"{self.base}/api/v1/users/{user.id}"}},
        }

    def _assigned_users(self, snapshot: Snapshot, app: StoredObject) -> list[Doc]:
        direct = app.document.get("assignments", {}).get("users", [])
        users = sorted(snapshot.objects["user"].values(), key=lambda o: (o.created, o.id))
        return [self._app_user(app, u, "USER" if u.id in direct else "GROUP")
                for u in users if has_access(app.document, u.document)]

    async def list_app_users(self, request: Request) -> Response:
        snapshot = await read_snapshot(self.ctx)
        app = snapshot.require(KIND, request.path_params["app_id"], "Application")
        return paginate(request, self._assigned_users(snapshot, app), default_limit=50)

    async def get_app_user(self, request: Request) -> Response:
        snapshot = await read_snapshot(self.ctx)
        app = snapshot.require(KIND, request.path_params["app_id"], "Application")
        user_id = request.path_params["user_id"]
        for item in self._assigned_users(snapshot, app):
            if item["id"] == user_id:
                return json_response(item)
        raise OktaApiError.not_found(user_id, "AppUser")

    async def assign_user(self, request: Request) -> Response:
        app_id = request.path_params["app_id"]
        body = await read_json(request)
        user_id = body.get("id")
        if not isinstance(user_id, str) or not user_id:
            raise OktaApiError.validation(["id: required property is missing"])
        caller = Caller.of(request)

        def build(snapshot: Snapshot, now: float) -> tuple[Change, None]:
            app = snapshot.require(KIND, app_id, "Application").document
            snapshot.require("user", user_id, "User")
            users = list(app.get("assignments", {}).get("users", []))
            change = Change()
            if user_id not in users:
                users.append(user_id)
                assignments = {**app.get("assignments", {}), "users": users}
                change.put(KIND, app_id, {**app, "assignments": assignments})
                change.events.append(change_event(
                    caller, "application.user_membership.add", now, target_type="User", target_id=user_id,
                    name=None, before=None, after={"app": app_id}, message="Assign user to app",
                    parent={"id": app_id, "type": "AppInstance", "alternateId": app.get("name"),
                            "displayName": app.get("name")}))
            return change, None

        await apply_change(self.ctx, build)
        snapshot = await read_snapshot(self.ctx)
        app_obj = snapshot.require(KIND, app_id, "Application")
        return json_response(self._app_user(app_obj, snapshot.require("user", user_id, "User"), "USER"))

    async def unassign_user(self, request: Request) -> Response:
        app_id, user_id = request.path_params["app_id"], request.path_params["user_id"]
        caller = Caller.of(request)

        def build(snapshot: Snapshot, now: float) -> tuple[Change, None]:
            app = snapshot.require(KIND, app_id, "Application").document
            users = list(app.get("assignments", {}).get("users", []))
            if user_id not in users:
                raise OktaApiError.not_found(user_id, "AppUser")
            users.remove(user_id)
            change = Change()
            change.put(KIND, app_id, {**app, "assignments": {**app.get("assignments", {}), "users": users}})
            change.events.append(change_event(
                caller, "application.user_membership.remove", now, target_type="User", target_id=user_id,
                name=None, before={"app": app_id}, after=None, message="Unassign user from app",
                parent={"id": app_id, "type": "AppInstance", "alternateId": app.get("name"),
                        "displayName": app.get("name")}))
            return change, None

        await apply_change(self.ctx, build)
        return no_content()

    def _group_assignment(self, app: StoredObject, group_id: str, priority: int) -> Doc:
        return {"id": group_id, "priority": priority, "profile": {}, "lastUpdated": iso(app.last_updated),
                "_links": {"app": {"href": f"{self.base}/api/v1/apps/{app.id}"},
                           "group": {"href": f"{self.base}/api/v1/groups/{group_id}"}}}

    async def list_app_groups(self, request: Request) -> Response:
        app = await self._app(request)
        groups = app.document.get("assignments", {}).get("groups", [])
        return paginate(request, [self._group_assignment(app, g, i) for i, g in enumerate(groups)], default_limit=20)

    async def get_app_group(self, request: Request) -> Response:
        app = await self._app(request)
        groups = app.document.get("assignments", {}).get("groups", [])
        group_id = request.path_params["group_id"]
        if group_id not in groups:
            raise OktaApiError.not_found(group_id, "ApplicationGroupAssignment")
        return json_response(self._group_assignment(app, group_id, groups.index(group_id)))

    async def assign_group(self, request: Request) -> Response:
        app_id, group_id = request.path_params["app_id"], request.path_params["group_id"]
        await read_json(request)  # Okta accepts {priority, profile}; neither changes who may use the client.
        caller = Caller.of(request)

        def build(snapshot: Snapshot, now: float) -> tuple[Change, None]:
            app = snapshot.require(KIND, app_id, "Application").document
            group = snapshot.require("group", group_id, "UserGroup").document
            groups = list(app.get("assignments", {}).get("groups", []))
            change = Change()
            if group_id not in groups:
                groups.append(group_id)
                change.put(KIND, app_id, {**app, "assignments": {**app.get("assignments", {}), "groups": groups}})
                change.events.append(change_event(
                    caller, "group.application_assignment.add", now, target_type="UserGroup", target_id=group_id,
                    name=group.get("name"), before=None, after={"app": app_id}, message="Assign group to app",
                    parent={"id": app_id, "type": "AppInstance", "alternateId": app.get("name"),
                            "displayName": app.get("name")}))
            return change, None

        await apply_change(self.ctx, build)
        app_obj = await self._app(request)
        groups = app_obj.document.get("assignments", {}).get("groups", [])
        return json_response(self._group_assignment(app_obj, group_id, groups.index(group_id)))

    async def unassign_group(self, request: Request) -> Response:
        app_id, group_id = request.path_params["app_id"], request.path_params["group_id"]
        caller = Caller.of(request)

        def build(snapshot: Snapshot, now: float) -> tuple[Change, None]:
            app = snapshot.require(KIND, app_id, "Application").document
            groups = list(app.get("assignments", {}).get("groups", []))
            if group_id not in groups:
                raise OktaApiError.not_found(group_id, "ApplicationGroupAssignment")
            groups.remove(group_id)
            change = Change()
            change.put(KIND, app_id, {**app, "assignments": {**app.get("assignments", {}), "groups": groups}})
            change.events.append(change_event(
                caller, "group.application_assignment.remove", now, target_type="UserGroup", target_id=group_id,
                name=None, before={"app": app_id}, after=None, message="Unassign group from app",
                parent={"id": app_id, "type": "AppInstance", "alternateId": app.get("name"),
                        "displayName": app.get("name")}))
            return change, None

        await apply_change(self.ctx, build)
        return no_content()
