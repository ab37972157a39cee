"""Okta's JSON shapes (spec §1) ↔ the config schema's models, and pydantic errors → Okta's error causes.

The API validates with the same models as the config file (``config.schema``), so the two can never
disagree. Okta's SDK sends read-only fields (``id``, ``system``, ``created``, ``_links``…) and Okta
fields scopegate does not implement (an app's ``visibility``, a server's ``issuerMode``…); those are
ignored, as Okta ignores read-only fields. Anything else unknown is rejected with a cause naming it,
because a typo (``accessTokenLifetimeMinute``) must not silently fall back to a default.
"""

from __future__ import annotations

import secrets
import string
import time
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from authz.documents import Doc, dump, stable_id
from authz.errors import OktaApiError
from config.schema import (
    OIDC_SCOPES,
    AppConfig,
    AuthorizationServerConfig,
    ClaimConfig,
    GroupConfig,
    PolicyConfig,
    RuleConfig,
    ScopeConfig,
    UserConfig,
)

M = TypeVar("M", bound=BaseModel)

_ALPHABET = string.ascii_letters + string.digits
# Okta's read-only bookkeeping, present on every object it returns.
_READ_ONLY = frozenset({"id", "created", "lastUpdated", "_links", "_embedded", "system"})


# ---------------------------------------------------------------------------------------------- ids and times


def new_id(prefix: str) -> str:
    """An Okta-style id: a three-letter type prefix and random base62, 20 characters in all."""
    return prefix + "".join(secrets.choice(_ALPHABET) for _ in range(20 - len(prefix)))


def iso(ts: float) -> str:
    """Okta's timestamps: ``2024-05-01T12:00:00.000Z``."""
    whole = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts))
    return f"{whole}.{int((ts % 1) * 1000):03d}Z"




# ---------------------------------------------------------------------------------------------- validation


def causes_of(exc: ValidationError, rename: Mapping[str, str] | None = None, prefix: str = "") -> list[str]:
    """One ``field: rule`` cause per pydantic error, the field named as the API client wrote it."""
    causes = []
    for err in exc.errors():
        loc = [str(part) for part in err["loc"]]
        if rename and loc and loc[0] in rename:
            loc = [*rename[loc[0]].split("."), *loc[1:]]
        field = ".".join([prefix, *loc] if prefix else loc)
        message = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown property"
        elif err["type"] == "missing":
            message = "required property is missing"
        causes.append(f"{field}: {message}" if field else message)
    return causes


def validate(model: type[M], document: Doc, rename: Mapping[str, str] | None = None, prefix: str = "") -> M:
    """``model.model_validate`` with errors as E0000001 causes naming each field."""
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        raise OktaApiError.validation(causes_of(exc, rename, prefix)) from None


def _without(body: Mapping[str, Any], ignored: Iterable[str]) -> Doc:
    skip = set(ignored)
    return {k: v for k, v in body.items() if k not in skip}


def _reject_unknown(body: Mapping[str, Any], allowed: Iterable[str], prefix: str = "") -> None:
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise OktaApiError.validation([f"{prefix}{key}: unknown property" for key in unknown])


def _object(value: Any, field: str) -> Doc:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise OktaApiError.validation([f"{field}: must be an object"])
    return value


def _links(href: str, **more: str) -> Doc:
    return {"self": {"href": href}, **{name: {"href": url} for name, url in more.items()}}


# ---------------------------------------------------------------------------------------------- authorization servers

# Okta server fields scopegate does not implement, or that change only through a lifecycle call.
_SERVER_IGNORED = _READ_ONLY | {"issuer", "issuerMode", "credentials", "default", "status"}
_SERVER_FIELDS = {"name", "description", "audiences", "matchHost", "oidcScopesImplicit", "accessTokenClaims"}


def server_from_okta(body: Mapping[str, Any], server_id: str, existing: Doc | None) -> AuthorizationServerConfig:
    """Create (``existing`` None) or replace a server's own fields; its scopes, claims and policies stay."""
    own = _without(body, _SERVER_IGNORED)
    _reject_unknown(own, _SERVER_FIELDS)
    kept = {k: v for k, v in (existing or {}).items() if k not in _SERVER_FIELDS and k != "id"}
    return validate(AuthorizationServerConfig, {**kept, **own, "id": server_id})


def server_to_okta(issuer: str, base: str, doc: Doc, created: float, updated: float, kid: str | None) -> Doc:
    out: Doc = {
        "id": doc["id"],
        "name": doc["name"],
        "description": doc.get("description", ""),
        "audiences": doc.get("audiences", []),
        "issuer": issuer,
        "issuerMode": "ORG_URL",
        "status": doc.get("status", "ACTIVE"),
        "default": False,
        "credentials": {"signing": {"rotationMode": "MANUAL", "use": "sig", **({"kid": kid} if kid else {})}},
        "created": iso(created),
        "lastUpdated": iso(updated),
    }
    for extension in ("matchHost", "oidcScopesImplicit"):
        if doc.get(extension):
            out[extension] = True
    out["accessTokenClaims"] = doc.get("accessTokenClaims", "both")  # scopegate's extension (README: the scope claims)
    href = f"{base}/api/v1/authorizationServers/{doc['id']}"
    out["_links"] = {**_links(href, scopes=f"{href}/scopes", claims=f"{href}/claims", policies=f"{href}/policies"),
                     # Okta's one list-valued link: the two metadata documents.
                     "metadata": [{"href": f"{issuer}/.well-known/oauth-authorization-server"},
                                  {"href": f"{issuer}/.well-known/openid-configuration"}]}
    return out


# ---------------------------------------------------------------------------------------------- scopes and claims


def scope_from_okta(body: Mapping[str, Any], scope_id: str) -> ScopeConfig:
    return validate(ScopeConfig, {**_without(body, _READ_ONLY), "id": scope_id})


def scope_to_okta(base: str, server_id: str, doc: Doc) -> Doc:
    return {
        "id": doc["id"],
        "name": doc["name"],
        **({"description": doc["description"]} if "description" in doc else {}),
        **({"displayName": doc["displayName"]} if "displayName" in doc else {}),
        "consent": doc.get("consent", "IMPLICIT"),
        "default": doc.get("default", False),
        "optional": doc.get("optional", False),
        "metadataPublish": doc.get("metadataPublish", "NO_CLIENTS"),
        "system": False,
        "_links": _links(f"{base}/api/v1/authorizationServers/{server_id}/scopes/{doc['id']}"),
    }


def system_scopes(base: str, server_id: str) -> list[Doc]:
    """The OIDC scopes every server has without declaring them (spec §1.2), as Okta lists them."""
    return [
        {"id": stable_id("scp", server_id, name), "name": name, "description": f"OpenID Connect scope {name}",
         "consent": "IMPLICIT", "default": False, "optional": False, "metadataPublish": "ALL_CLIENTS",
         "system": True, "_links": _links(f"{base}/api/v1/authorizationServers/{server_id}/scopes/"
                                          f"{stable_id('scp', server_id, name)}")}
        for name in OIDC_SCOPES
    ]


# Okta spells this one field in snake case; the config file in camel case.
_CLAIM_RENAME = {"groupFilterType": "group_filter_type"}


def claim_from_okta(body: Mapping[str, Any], claim_id: str) -> ClaimConfig:
    doc = _without(body, _READ_ONLY)
    if "group_filter_type" in doc:
        doc["groupFilterType"] = doc.pop("group_filter_type")
    return validate(ClaimConfig, {**doc, "id": claim_id}, rename=_CLAIM_RENAME)


def claim_to_okta(base: str, server_id: str, doc: Doc) -> Doc:
    out: Doc = {
        "id": doc["id"],
        "name": doc["name"],
        "status": doc.get("status", "ACTIVE"),
        "claimType": doc.get("claimType", "RESOURCE"),
        "valueType": doc.get("valueType", "EXPRESSION"),
        "value": doc["value"],
        "alwaysIncludeInToken": doc.get("alwaysIncludeInToken", True),
        "conditions": {"scopes": doc.get("conditions", {}).get("scopes", [])},
        "system": False,
        "_links": _links(f"{base}/api/v1/authorizationServers/{server_id}/claims/{doc['id']}"),
    }
    if "groupFilterType" in doc:
        out["group_filter_type"] = doc["groupFilterType"]
    return out


# ---------------------------------------------------------------------------------------------- policies and rules


def policy_from_okta(body: Mapping[str, Any], policy_id: str, priority: int, rules: list[Doc]) -> PolicyConfig:
    """A policy's own fields; its rules live under their own path and are kept as they are."""
    doc = _without(body, _READ_ONLY)
    if "rules" in doc:
        raise OktaApiError.validation(["rules: unknown property (rules are managed under …/policies/{id}/rules)"])
    doc.setdefault("priority", priority)
    return validate(PolicyConfig, {**doc, "id": policy_id, "rules": rules})


def policy_to_okta(base: str, server_id: str, doc: Doc, created: float, updated: float) -> Doc:
    href = f"{base}/api/v1/authorizationServers/{server_id}/policies/{doc['id']}"
    return {
        "type": "OAUTH_AUTHORIZATION_POLICY",
        "id": doc["id"],
        "status": doc.get("status", "ACTIVE"),
        "name": doc["name"],
        "description": doc.get("description", doc["name"]),
        "priority": doc["priority"],
        "system": False,
        "conditions": {"clients": {"include": doc.get("conditions", {}).get("clients", {}).get("include", ["ALL_CLIENTS"])}},
        "created": iso(created),
        "lastUpdated": iso(updated),
        "_links": _links(href, rules=f"{href}/rules"),
    }


def rule_from_okta(body: Mapping[str, Any], rule_id: str, priority: int) -> RuleConfig:
    doc = _without(body, _READ_ONLY)
    doc.setdefault("priority", priority)
    return validate(RuleConfig, {**doc, "id": rule_id})


def rule_to_okta(base: str, server_id: str, policy_id: str, doc: Doc, created: float, updated: float) -> Doc:
    rule = validate(RuleConfig, doc)
    conditions = dump(rule.conditions)
    return {
        "type": "RESOURCE_ACCESS",
        "id": doc["id"],
        "status": rule.status,
        "name": rule.name,
        "priority": rule.priority,
        "system": False,
        "conditions": conditions,
        "actions": dump(rule.actions),
        "created": iso(created),
        "lastUpdated": iso(updated),
        "_links": _links(f"{base}/api/v1/authorizationServers/{server_id}/policies/{policy_id}/rules/{doc['id']}"),
    }


# ---------------------------------------------------------------------------------------------- apps (OAuth clients)

_APP_IGNORED = _READ_ONLY | {"status", "accessibility", "visibility", "features", "profile", "licensing", "orn",
                             "universalLogout", "embedded", "expressConfiguration"}
_APP_FIELDS = {"name", "label", "signOnMode", "credentials", "settings"}
_CREDENTIALS_IGNORED = {"signing", "userNameTemplate", "scheme", "userName", "password", "revealPassword"}
_OAUTH_CREDENTIALS = {"client_id", "client_secret", "token_endpoint_auth_method", "autoKeyRotation", "pkce_required"}
_OAUTH_SETTINGS = {"redirect_uris", "response_types", "grant_types", "application_type", "refresh_token", "jwks"}
_OAUTH_SETTINGS_IGNORED = {"post_logout_redirect_uris", "consent_method", "initiate_login_uri", "logo_uri",
                           "client_uri", "policy_uri", "tos_uri", "wildcard_redirect", "idp_initiated_login",
                           "issuer_mode", "dpop_bound_access_tokens", "frontchannel_logout_uri",
                           "frontchannel_logout_session_required", "participate_slo", "participate_slo_uri",
                           "backchannel_logout_uri", "backchannel_authentication_request_signing_alg",
                           "backchannel_custom_authenticator_id", "backchannel_token_delivery_mode",
                           "network", "sector_identifier_uri", "id_token_signed_response_alg"}
# Where each AppConfig field sits in Okta's app object, so that an error names the field the client sent.
APP_FIELD_PATHS = {
    "clientId": "credentials.oauthClient.client_id",
    "clientSecret": "credentials.oauthClient.client_secret",
    "tokenEndpointAuthMethod": "credentials.oauthClient.token_endpoint_auth_method",
    "pkceRequired": "credentials.oauthClient.pkce_required",
    "name": "label",
    "applicationType": "settings.oauthClient.application_type",
    "grantTypes": "settings.oauthClient.grant_types",
    "responseTypes": "settings.oauthClient.response_types",
    "redirectUris": "settings.oauthClient.redirect_uris",
    "refreshToken": "settings.oauthClient.refresh_token",
    "jwks": "settings.oauthClient.jwks",
}


def app_parts(body: Mapping[str, Any]) -> tuple[Doc, Doc, Doc]:
    """The top level, ``credentials.oauthClient`` and ``settings.oauthClient`` of an Okta app, checked."""
    top = _without(body, _APP_IGNORED)
    _reject_unknown(top, _APP_FIELDS)
    if top.get("signOnMode", "OPENID_CONNECT") != "OPENID_CONNECT":
        raise OktaApiError.validation(["signOnMode: scopegate serves OAuth clients only: use OPENID_CONNECT"])
    if top.get("name", "oidc_client") != "oidc_client":
        raise OktaApiError.validation(["name: scopegate serves OAuth clients only: use oidc_client"])
    credentials = _object(top.get("credentials"), "credentials")
    _reject_unknown(_without(credentials, _CREDENTIALS_IGNORED), {"oauthClient"}, "credentials.")
    oauth_credentials = _object(credentials.get("oauthClient"), "credentials.oauthClient")
    _reject_unknown(oauth_credentials, _OAUTH_CREDENTIALS, "credentials.oauthClient.")
    settings = _object(top.get("settings"), "settings")
    oauth_settings = _without(_object(settings.get("oauthClient"), "settings.oauthClient"), _OAUTH_SETTINGS_IGNORED)
    _reject_unknown(oauth_settings, _OAUTH_SETTINGS, "settings.oauthClient.")
    return top, oauth_credentials, oauth_settings


def app_from_okta(body: Mapping[str, Any], client_id: str, secret: str | None, status: str,
                  assignments: Doc | None) -> AppConfig:
    """An Okta OIDC app onto ``AppConfig``; ``secret`` is the plaintext to validate with (it is hashed
    before it reaches the store)."""
    top, creds, settings = app_parts(body)
    doc: Doc = {"clientId": client_id, "name": top.get("label"), "status": status}
    if secret is not None:
        doc["clientSecret"] = secret
    for okta_key, key in (("token_endpoint_auth_method", "tokenEndpointAuthMethod"), ("pkce_required", "pkceRequired")):
        if creds.get(okta_key) is not None:
            doc[key] = creds[okta_key]
    for okta_key, key in (("application_type", "applicationType"), ("grant_types", "grantTypes"),
                          ("response_types", "responseTypes"), ("redirect_uris", "redirectUris"),
                          ("jwks", "jwks")):
        if settings.get(okta_key) is not None:
            doc[key] = settings[okta_key]
    refresh = settings.get("refresh_token")
    if refresh is not None:
        refresh = _object(refresh, "settings.oauthClient.refresh_token")
        _reject_unknown(refresh, {"rotation_type", "leeway"}, "settings.oauthClient.refresh_token.")
        doc["refreshToken"] = {"rotationType": refresh.get("rotation_type", "STATIC"), "leeway": refresh.get("leeway", 30)}
    if doc["name"] is None:
        raise OktaApiError.validation(["label: required property is missing"])
    if assignments:
        doc["assignments"] = assignments
    return validate(AppConfig, doc, rename=APP_FIELD_PATHS)


def app_to_okta(base: str, doc: Doc, created: float, updated: float, secret: str | None = None) -> Doc:
    grants = doc.get("grantTypes", ["client_credentials"])
    method = doc.get("tokenEndpointAuthMethod", "client_secret_basic")
    app_type = doc.get("applicationType") or (
        "service" if grants == ["client_credentials"] else "browser" if method == "none" else "web")
    oauth_client: Doc = {"client_id": doc["clientId"], "autoKeyRotation": True, "token_endpoint_auth_method": method,
                         "pkce_required": doc.get("pkceRequired", method == "none")}
    if secret is not None:
        # Okta returns the secret on create; scopegate keeps only its hash, so it is shown this once.
        oauth_client["client_secret"] = secret
    settings: Doc = {"redirect_uris": doc.get("redirectUris", []), "response_types": doc.get("responseTypes", ["code"]),
                     "grant_types": grants, "application_type": app_type}
    if "refreshToken" in doc:
        settings["refresh_token"] = {"rotation_type": doc["refreshToken"].get("rotationType", "STATIC"),
                                     "leeway": doc["refreshToken"].get("leeway", 30)}
    if "jwks" in doc:
        settings["jwks"] = doc["jwks"]
    href = f"{base}/api/v1/apps/{doc['clientId']}"
    return {
        "id": doc["clientId"],
        "name": "oidc_client",
        "label": doc["name"],
        "status": doc.get("status", "ACTIVE"),
        "signOnMode": "OPENID_CONNECT",
        "created": iso(created),
        "lastUpdated": iso(updated),
        "credentials": {"oauthClient": oauth_client},
        "settings": {"oauthClient": settings},
        "_links": _links(href, users=f"{href}/users", groups=f"{href}/groups",
                         deactivate=f"{href}/lifecycle/deactivate"),
    }


# ---------------------------------------------------------------------------------------------- users and groups

_USER_IGNORED = _READ_ONLY | {"status", "activated", "statusChanged", "lastLogin", "passwordChanged", "type",
                              "transitioningToStatus", "realmId", "groupIds"}


def user_from_okta(body: Mapping[str, Any], user_id: str, status: str, groups: list[str],
                   profile_base: Doc | None = None) -> tuple[UserConfig, str | None]:
    """An Okta user onto ``UserConfig``; returns the password to hash, if one was given.

    ``profile_base`` is the current profile for a partial update (``POST /users/{id}`` merges, PUT replaces)."""
    top = _without(body, _USER_IGNORED)
    _reject_unknown(top, {"profile", "credentials"})
    profile = {**(profile_base or {}), **_object(top.get("profile"), "profile")}
    credentials = _object(top.get("credentials"), "credentials")
    _reject_unknown(_without(credentials, {"provider", "recovery_question", "emails"}), {"password"}, "credentials.")
    password_obj = _object(credentials.get("password"), "credentials.password")
    _reject_unknown(_without(password_obj, {"hook", "hash"}), {"value"}, "credentials.password.")
    password = password_obj.get("value")
    if password is not None and (not isinstance(password, str) or len(password) < 8):
        raise OktaApiError.validation(["credentials.password.value: a password is at least 8 characters"])
    login = profile.pop("login", None)
    doc: Doc = {"id": user_id, "login": login, "status": status, "groups": groups, "profile": profile}
    if login is None:
        raise OktaApiError.validation(["profile.login: required property is missing"])
    return validate(UserConfig, doc, rename={"login": "profile.login"}), password


def user_to_okta(base: str, doc: Doc, created: float, updated: float, has_password: bool) -> Doc:
    href = f"{base}/api/v1/users/{doc['id']}"
    credentials: Doc = {"provider": {"type": "OKTA", "name": "OKTA"}}
    if has_password:
        credentials["password"] = {}
    return {
        "id": doc["id"],
        "status": doc.get("status", "ACTIVE"),
        "created": iso(created),
        "activated": iso(created) if doc.get("status", "ACTIVE") != "STAGED" else None,
        "statusChanged": iso(updated),
        "lastLogin": None,
        "lastUpdated": iso(updated),
        "passwordChanged": iso(updated) if has_password else None,
        "type": {"id": "default"},
        "profile": {"login": doc["login"], **doc.get("profile", {})},
        "credentials": credentials,
        "_links": _links(href),
    }


def group_from_okta(body: Mapping[str, Any], group_id: str) -> GroupConfig:
    top = _without(body, _READ_ONLY | {"lastMembershipUpdated", "objectClass", "type"})
    _reject_unknown(top, {"profile"})
    profile = _object(top.get("profile"), "profile")
    _reject_unknown(profile, {"name", "description"}, "profile.")
    return validate(GroupConfig, {"id": group_id, **profile}, rename={"name": "profile.name",
                                                                      "description": "profile.description"})


def group_to_okta(base: str, doc: Doc, created: float, updated: float) -> Doc:
    href = f"{base}/api/v1/groups/{doc['id']}"
    return {
        "id": doc["id"],
        "created": iso(created),
        "lastUpdated": iso(updated),
        "lastMembershipUpdated": iso(updated),
        "objectClass": ["okta:user_group"],
        "type": "OKTA_GROUP",
        "profile": {"name": doc["name"], **({"description": doc["description"]} if "description" in doc else {})},
        "_links": _links(href, users=f"{href}/users", apps=f"{href}/apps"),
    }
