"""``scopegate explain``: how the policy engine would decide a token request, issuing nothing.

What Okta calls token preview. It reads the config file, runs the same checks in the same order as
``/token`` and ``/authorize`` (spec §3.2: scopes, user assignment, then policies and rules) and prints
the trace that a denial's system-log event carries in ``debugContext.debugData``.

Exit status: 0 when a token would be issued, 1 when the request would be refused, 2 for a usage or
configuration error.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from authz.errors import OAuthError
from authz.policy import Evaluation, Principal, evaluate, format_list, require_match, resolve_scopes
from config import ConfigError, load_config
from config.schema import GRANT_TYPES, AppConfig, AuthorizationServerConfig, ScopegateConfig, UserConfig

USER_GRANTS = ("password", "authorization_code")


def explain_request(cfg: ScopegateConfig, *, as_id: str, client_id: str, user: str | None, grant_type: str,
                    scope: str | None) -> tuple[bool, dict[str, Any]]:
    """(granted, debugData) for one hypothetical token request."""
    debug: dict[str, Any] = {"authorization_server": as_id, "client_id": client_id, "grant_type": grant_type,
                             "requested_scopes": scope or ""}

    def refuse(error: OAuthError) -> tuple[bool, dict[str, Any]]:
        debug.update({"outcome": "FAILURE", "reason": error.reason, "error": getattr(error, "error", ""),
                      "error_description": error.description})
        return False, debug

    server = _server(cfg, as_id)
    if server is None:
        return refuse(OAuthError("invalid_request", "The authorization server id is invalid.",
                                 reason="invalid_authorization_server"))
    debug["authorization_server_name"] = server.name
    debug["authorization_server_audience"] = server.resource
    app = next((a for a in cfg.apps if a.client_id == client_id), None)
    if app is None or app.status != "ACTIVE":
        return refuse(OAuthError("invalid_client", "Invalid value for 'client_id' parameter.", reason="unknown_client"))
    if grant_type not in GRANT_TYPES:
        return refuse(OAuthError("unsupported_grant_type", "The authorization grant type is not supported by the "
                                 f"authorization server. Configured grant types: {format_list(app.grant_types)}.",
                                 reason="unsupported_grant_type"))
    if grant_type not in app.grant_types:
        return refuse(OAuthError("unauthorized_client", "The client is not authorized to use the provided grant "
                                 f"type. Configured grant types: {format_list(app.grant_types)}.",
                                 reason="unauthorized_client"))
    try:
        request = resolve_scopes(server, scope, grant_type)
    except OAuthError as exc:
        return refuse(exc)
    principal: Principal | None = None
    if grant_type in USER_GRANTS:
        found = _user(cfg, user) if user else None
        if found is None:
            return refuse(OAuthError("invalid_grant", "The credentials provided were invalid.",
                                     reason="unknown_user" if user else "user_required"))
        debug["user_id"] = found.id
        if found.status != "ACTIVE":
            return refuse(OAuthError("invalid_grant", "The credentials provided were invalid.",
                                     reason="user_not_active"))
        if not _assigned(app, found):
            return refuse(OAuthError("access_denied", "User is not assigned to the client application.",
                                     reason="user_not_assigned"))
        principal = Principal(found.id, frozenset(found.groups))
    evaluation = evaluate(server, client_id, principal, grant_type, request)
    debug.update(evaluation.debug_data())
    try:
        require_match(evaluation)
    except OAuthError as exc:
        return refuse(exc)
    debug.update(_lifetimes(evaluation))
    debug["outcome"] = "SUCCESS"
    return True, debug


def _lifetimes(evaluation: Evaluation) -> dict[str, Any]:
    assert evaluation.rule is not None
    token = evaluation.rule.actions.token
    return {"access_token_lifetime_minutes": token.access_token_lifetime_minutes,
            "refresh_token_lifetime_minutes": token.refresh_token_lifetime_minutes,
            "refresh_token_window_minutes": token.refresh_token_window_minutes}


def _server(cfg: ScopegateConfig, as_id: str) -> AuthorizationServerConfig | None:
    server = next((s for s in cfg.authorization_servers if s.id == as_id), None)
    if server is None or server.remote is not None or server.status != "ACTIVE":
        return None
    return server


def _user(cfg: ScopegateConfig, id_or_login: str) -> UserConfig | None:
    wanted = id_or_login.casefold()
    return next((u for u in cfg.users if u.id == id_or_login or u.login.casefold() == wanted), None)


def _assigned(app: AppConfig, user: UserConfig) -> bool:
    return user.id in app.assignments.users or bool(set(user.groups) & set(app.assignments.groups))


def render(granted: bool, debug: dict[str, Any], out: TextIO) -> None:
    """A human summary, then the debugData exactly as the system log would hold it."""
    verdict = "GRANTED" if granted else f"DENIED ({debug.get('reason')})"
    out.write(f"{verdict}: client {debug['client_id']}, grant {debug['grant_type']}, "
              f"authorization server {debug['authorization_server']}\n")
    if not granted and debug.get("error"):
        out.write(f"  error: {debug['error']}: {debug['error_description']}\n")
    out.write(f"  requested scopes: {debug.get('requested_scopes') or '(none: default scopes)'}\n")
    if granted:
        out.write(f"  granted scopes: {debug.get('granted_scopes')}\n")
        out.write(f"  policy: {debug.get('policy_name')} ({debug.get('policy')}), rule: {debug.get('rule_name')} "
                  f"({debug.get('rule')})\n")
        out.write(f"  access token lifetime: {debug['access_token_lifetime_minutes']} min\n")
    for policy in debug.get("policy_evaluation", []):
        out.write(f"  policy {policy['name']!r} (priority {policy['priority']}): {policy['reason']}\n")
        for rule in policy["rules"]:
            mark = "MATCH" if rule["matched"] else "no match"
            out.write(f"    rule {rule['name']!r}: {mark}: {rule['reason']}\n")
    out.write("debugData: " + json.dumps(debug, indent=2, sort_keys=True) + "\n")


def run_explain(argv: Sequence[str], out: TextIO | None = None, err: TextIO | None = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    parser = argparse.ArgumentParser(prog="scopegate explain", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML config file (default: the built-in demo config)")
    parser.add_argument("--as", dest="as_id", help="authorization server id (default: the only one)")
    parser.add_argument("--client", required=True, help="client id")
    parser.add_argument("--user", help="user id or login (password and authorization_code grants)")
    parser.add_argument("--grant", required=True, help="grant type, e.g. client_credentials")
    parser.add_argument("--scope", help='space-separated scopes, e.g. "orders:read openid"; omit for defaults')
    parser.add_argument("--json", action="store_true", help="print only the debugData as JSON")
    try:
        args = parser.parse_args(list(argv))
    except SystemExit as exc:
        return 0 if exc.code == 0 else 2
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        err.write(f"{exc}\n")
        return 2
    as_id = args.as_id
    if as_id is None:
        local = [s.id for s in cfg.authorization_servers if s.remote is None]
        if len(local) != 1:
            err.write(f"scopegate explain: give --as, one of {format_list(local)}\n")
            return 2
        as_id = local[0]
    granted, debug = explain_request(cfg, as_id=as_id, client_id=args.client, user=args.user,
                                     grant_type=args.grant, scope=args.scope)
    if args.json:
        out.write(json.dumps(debug, indent=2, sort_keys=True) + "\n")
    else:
        render(granted, debug, out)
    return 0 if granted else 1


__all__ = ["explain_request", "render", "run_explain"]
