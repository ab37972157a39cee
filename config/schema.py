"""The one definition of every configuration object's shape and invariants.

The YAML file and the management API both validate with these models, so the two can never disagree.
Shapes follow Okta's JSON for authorization servers, scopes, claims, policies and rules (spec §1.1-1.5);
apps, users and groups are flatter (DESIGN §6). Keys are camelCase; unknown keys are errors, because a
typo must not silently disable a check.

Invariants that need more than one object (references, resource overlap) live in ``invariants.py``.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from pydantic.alias_generators import to_camel

from config.durations import Duration
from config.headers import claim_header_clash

OIDC_SCOPES: tuple[str, ...] = ("openid", "profile", "email", "address", "phone", "offline_access")
"""Exist on every authorization server without being declared (spec §1.2)."""

GRANT_TYPES: tuple[str, ...] = ("authorization_code", "password", "client_credentials", "refresh_token", "implicit")
TOKEN_ENDPOINT_AUTH_METHODS: tuple[str, ...] = (
    "client_secret_basic",
    "client_secret_post",
    "private_key_jwt",
    "none",
)
EVERYONE = "EVERYONE"
ALL_CLIENTS = "ALL_CLIENTS"
ANY_SCOPE = "*"

# Spec §1.5 / §9 D7.
ACCESS_TOKEN_MINUTES_MIN = 5
ACCESS_TOKEN_MINUTES_MAX = 1440
REFRESH_WINDOW_MINUTES_MIN = 10
REFRESH_WINDOW_MINUTES_MAX = 2_628_000

Status = Literal["ACTIVE", "INACTIVE"]


class Model(BaseModel):
    """Base for every config object: camelCase keys, unknown keys rejected, values immutable."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        str_strip_whitespace=False,
    )


# ---------------------------------------------------------------------------------------------- helpers


def check_absolute_uri(value: str) -> str:
    """The brief: 'The resource URI you specify in an authorization server must be an absolute path.'"""
    parts = urlsplit(value)
    if not parts.scheme or not parts.netloc:
        raise ValueError(f"{value!r} must be an absolute URI with a scheme and a host, such as https://api.example.com/orders")
    if parts.fragment or "#" in value:
        raise ValueError(f"{value!r} must not contain a fragment")
    return value


def resource_path(uri: str) -> str:
    """The path an absolute resource URI covers: no trailing slash, ``/`` for the root."""
    path = urlsplit(uri).path.rstrip("/")
    return path or "/"


def check_scope_name(name: str) -> str:
    """Spec §1.2 name rules."""
    if not name:
        raise ValueError("a scope name cannot be empty")
    if any(not (0x21 <= ord(c) <= 0x7E) or c in '"\\' for c in name):
        raise ValueError(f"scope name {name!r} must be printable ASCII without spaces, '\"' or '\\'")
    if name in ("okta", ANY_SCOPE) or name.startswith(("okta.", "okta:")):
        raise ValueError(f"scope name {name!r} is reserved: it cannot be '*', 'okta' or start with 'okta.' or 'okta:'")
    if "<" in name and ">" in name:
        raise ValueError(f"scope name {name!r} may contain '<' or '>' but not both")
    return name


_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._~-]{0,99}$")


def check_id(value: str) -> str:
    if not _ID.match(value):
        raise ValueError(f"{value!r} is not a valid id: use 1-100 letters, digits, '.', '_', '~' or '-'")
    return value


Id = Annotated[str, Field(min_length=1, max_length=100)]

# ---------------------------------------------------------------------------------------------- process


class TlsConfig(Model):
    cert_file: str
    key_file: str


class ConnectionLimits(Model):
    """Open connections per listener (issue 8, item 6); one over the cap is answered 503 and closed at once.

    The process raises its soft file-descriptor limit to the hard one at start, so the defaults fit in the
    usual container limit (1,048,576) and in a login shell's (a soft 1,024 under a hard 4,096 or more)."""

    proxy: int = Field(default=4096, ge=1)
    core: int = Field(default=1024, ge=1)
    ops: int = Field(default=64, ge=1)


class Listen(Model):
    proxy: str = "127.0.0.1:8080"
    core: str = "127.0.0.1:8081"
    """``off`` switches the co-located core off (DESIGN §1): the proxy then trusts remote issuers only."""
    ops: str = "127.0.0.1:9090"
    tls: TlsConfig | None = None
    tls_listeners: list[Literal["proxy", "core", "ops"]] = Field(default_factory=lambda: ["core"])  # type: ignore[arg-type]
    max_connections: ConnectionLimits = Field(default_factory=ConnectionLimits)

    @field_validator("proxy", "core", "ops")
    @classmethod
    def _host_port(cls, value: str, info: ValidationInfo) -> str:
        if info.field_name == "core" and value == "off":
            return value
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"{value!r} must be host:port, such as 127.0.0.1:8080")
        return value


class Upstream(Model):
    url: str = "builtin:echo"
    """``http(s)://host:port`` of the protected API, or ``builtin:echo`` for the demo echo upstream."""
    connect_timeout: Duration = 2.0
    timeout: Duration = 30.0
    max_connections: int = Field(default=256, ge=1, le=65536)
    keepalive_timeout: Duration = 60.0

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if value == "builtin:echo":
            return value
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"{value!r} must be an http:// or https:// URL, or builtin:echo")
        if parts.query or parts.fragment:
            raise ValueError(f"{value!r} must not carry a query or fragment")
        return value.rstrip("/")


class Revocation(Model):
    max_staleness: Duration = 5.0
    on_stale: Literal["deny", "allow"] = "deny"
    poll_interval: Duration = 0.2

    @model_validator(mode="after")
    def _poll_below_staleness(self) -> Revocation:
        if self.poll_interval <= 0:
            raise ValueError("pollInterval must be greater than 0")
        if self.poll_interval >= self.max_staleness:
            raise ValueError("pollInterval must be shorter than maxStaleness, or every poll would be stale")
        return self


class ScopeRequirement(Model):
    any_of: list[str] | None = None
    all_of: list[str] | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> ScopeRequirement:
        if (self.any_of is None) == (self.all_of is None):
            raise ValueError("give exactly one of anyOf or allOf")
        names = self.any_of if self.any_of is not None else self.all_of
        if not names:
            raise ValueError("the scope list cannot be empty")
        return self


_HEADER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,127}")
_HEADER_PREFIX = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{1,126}\*")
"""A ``proxy.stripHeaders`` prefix: a bare ``*`` or ``X*`` would strip nearly every header."""
_CLAIM_PATH = re.compile(r"[^\x00-\x20\x7f.]+(?:\.[^\x00-\x20\x7f.]+)*")
"""A claim name, or names joined by ``.``: no empty segment, no space or control character."""

ClaimMap = TypeVar("ClaimMap", dict[str, str], dict[str, str | None])


def check_claim_headers(value: ClaimMap) -> ClaimMap:
    """A claim-header map's names and paths: plain header names, unique in any case, none that the proxy strips
    and rebuilds itself (``config/headers.py``), claim paths of at most 256 characters."""
    seen: set[str] = set()
    for name, path in value.items():
        if not _HEADER_NAME.fullmatch(name):
            raise ValueError(f"{name!r} is not a header name: use letters, digits and '-'")
        lower = name.lower()
        if lower in seen:
            raise ValueError(f"{name!r} is named twice (header names are case-insensitive)")
        seen.add(lower)
        clash = claim_header_clash(lower)
        if clash is not None:
            raise ValueError(f"{name!r} cannot carry a claim: it is {clash}")
        if path is not None and (len(path) > 256 or not _CLAIM_PATH.fullmatch(path)):
            raise ValueError(f"{path!r} (for {name}) is not a claim path: a claim name, or names joined by '.' "
                             "(at most 256 characters, no spaces or control characters)")
    return value


HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT")


class Route(Model):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")
    path: str
    """A segment-aligned prefix: ``/orders`` matches ``/orders`` and ``/orders/7``, never ``/ordersX``."""
    methods: list[str] | None = None
    """``None`` matches every method but TRACE: a TRACE is matched only by a route that lists it, and is otherwise
    405 (an upstream that echoes it would reflect the gate's identity headers). CONNECT is never forwarded (405)."""
    scopes: ScopeRequirement | None = None
    public: bool = False
    claims: dict[str, str | None] | None = None
    """Claim headers for this route (``proxy.identity.claims``'s shape), merged over the global map: an entry
    adds a header or replaces the global one of the same name (any case), ``null`` drops a global one here."""

    @field_validator("claims")
    @classmethod
    def _claims(cls, value: dict[str, str | None] | None) -> dict[str, str | None] | None:
        return None if value is None else check_claim_headers(value)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        # The proxy's labels for "inside a resource, no route" and "refused before routing" (metrics, decision
        # log, the unrouted claim headers): a route of that name would be read as one of them.
        if value in ("unrouted", "none"):
            raise ValueError(f"route name {value!r} is reserved for the requests no route matched")
        return value

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError(f"{value!r} must start with '/'")
        if any(part in (".", "..") for part in value.split("/")) or "//" in value or "%" in value:
            raise ValueError(f"{value!r} must be a normalized path: no '.', '..', '//' or percent-escapes")
        return value.rstrip("/") or "/"

    @field_validator("methods")
    @classmethod
    def _methods(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        upper = [m.upper() for m in value]
        unknown = [m for m in upper if m not in HTTP_METHODS]
        if unknown:
            raise ValueError(f"unknown HTTP method(s) {unknown}; use {list(HTTP_METHODS)}")
        if not upper:
            raise ValueError("methods cannot be empty: leave it out to match every method")
        return upper

    @model_validator(mode="after")
    def _public_has_no_scopes(self) -> Route:
        if self.public and self.scopes is not None:
            raise ValueError("a public route takes no token, so it cannot require scopes")
        if self.public and self.claims:
            raise ValueError("a public route takes no token, so it has no claims to send")
        return self


class Identity(Model):
    """Names of the identity headers added for the upstream (the proxy issue, step 10), and claim headers."""

    subject_header: str = "X-Scopegate-Subject"
    client_id_header: str = "X-Scopegate-Client-Id"
    scopes_header: str = "X-Scopegate-Scopes"
    auth_server_header: str = "X-Scopegate-Auth-Server"
    forward_authorization: bool = True
    claims: dict[str, str] = Field(default_factory=dict)
    """Header name → claim of the validated token (issue 10 item 5), sent to the upstream with every request a
    token passed: ``{X-User-Id: uid, X-Tenant: org.tenant_id}``. A dotted path reaches into nested objects (a
    claim whose own name holds the whole path, like ``https://example.com/roles``, is taken first); an array is
    joined with ``,``; a missing or ``null`` claim sends no header. A value over ``maxClaimBytes``, with a
    control character, leading or trailing space, an object, or an array element holding ``,`` or that is not a
    string, number or boolean refuses the request (401 ``invalid_token``, reason ``bad_claims``). Every name
    here and in ``routes[].claims`` is stripped from every client request, like ``proxy.stripHeaders``. Default
    empty (nothing is computed per request)."""
    max_claim_bytes: int = Field(default=4096, ge=64, le=8192)
    """The longest claim header value (UTF-8 bytes). Refused past it rather than cut: a cut tenant id or group
    list would be another, valid-looking value. 8 KiB is the smallest common upstream header-line limit."""

    @field_validator("claims")
    @classmethod
    def _claims(cls, value: dict[str, str]) -> dict[str, str]:
        return check_claim_headers(value)

    @model_validator(mode="after")
    def _claims_clash_with_identity(self) -> Identity:
        builtin = {h.lower() for h in self.builtin_headers()}
        for name in self.claims:
            if name.lower() in builtin:
                raise ValueError(f"claims: {name!r} is already an identity header (subjectHeader, clientIdHeader, "
                                 "scopesHeader or authServerHeader)")
        return self

    def builtin_headers(self) -> tuple[str, str, str, str]:
        return self.subject_header, self.client_id_header, self.scopes_header, self.auth_server_header


class Limits(Model):
    """Request limits (``proxy.limits``). The head limits and ``readTimeout`` bound all three listeners'
    connections while a head arrives (and the core's and ops' bodies); the rest are the proxy's."""

    max_header_bytes: int = Field(default=16384, ge=1024)
    max_headers: int = Field(default=100, ge=8)
    max_target_bytes: int = Field(default=8192, ge=256)
    max_body_bytes: int = Field(default=10 * 1024 * 1024, ge=0)
    max_token_bytes: int = Field(default=8192, ge=512)
    read_timeout: Duration = 30.0
    max_form_scan_bytes: int = Field(default=65536, ge=1024)
    """A form body (``application/x-www-form-urlencoded``) sent with a bearer header is read whole, once the
    token has passed, and searched for an ``access_token`` field (RFC 6750 §2: one method per request); a larger
    form is refused with 413 rather than forwarded unsearched. Default 64 KiB."""


class ProxySettings(Model):
    leeway: Duration = 60.0
    token_cache_size: int = Field(default=10000, ge=0)
    unrouted: Literal["deny", "any_valid_token"] = "deny"
    """A path inside a resource with no matching route: 403 ``no_route`` (fail closed) or any valid token."""
    identity: Identity = Field(default_factory=Identity)
    limits: Limits = Field(default_factory=Limits)
    strip_headers: list[str] = Field(default_factory=list)
    """Header names the upstream trusts (say ``X-Tenant``), or prefixes ending in ``*`` (``X-Legacy-*``), stripped
    from every client request like the built-in identity and forwarding headers (``X-Scopegate-*``,
    ``X-Forwarded-*``, ``Remote-User``, ``True-Client-IP``, ``X-Auth-*``, ...), in any case and duplicated or not;
    a spelling with ``_`` or ``.`` that folds to one of them is refused with 400. Letters, digits and ``-`` only,
    ``*`` only as the last character after at least two of them; default empty."""

    @field_validator("strip_headers")
    @classmethod
    def _strip_headers(cls, value: list[str]) -> list[str]:
        for name in value:
            if not (_HEADER_NAME.fullmatch(name) or _HEADER_PREFIX.fullmatch(name)):
                raise ValueError(f"{name!r} is not a header name or prefix to strip: use letters, digits and '-', "
                                 "and '*' only at the end of a prefix of two or more characters, as in 'X-Legacy-*' "
                                 "(a '_' or '.' spelling is refused by the proxy anyway)")
        return value

    @field_validator("leeway")
    @classmethod
    def _leeway(cls, value: float) -> float:
        # RFC 9068 §4: "a small leeway, usually no more than a few minutes".
        if value > 300:
            raise ValueError("leeway must be at most 300 seconds (RFC 9068 §4: no more than a few minutes)")
        return value


# ---------------------------------------------------------------------------------------------- authorization servers


class ScopeConfig(Model):
    id: str | None = None
    """Assigned by the management API (``scp…``) and kept stable across renames; config scopes may omit it."""
    name: str
    description: str | None = None
    display_name: str | None = None
    default: bool = False
    consent: Literal["IMPLICIT", "REQUIRED", "FLEXIBLE"] = "IMPLICIT"
    optional: bool = False
    metadata_publish: Literal["NO_CLIENTS", "ALL_CLIENTS"] = "NO_CLIENTS"  # spec §9 D8

    _name = field_validator("name")(classmethod(lambda cls, v: check_scope_name(v)))


class ClaimConditions(Model):
    scopes: list[str] = Field(default_factory=list)


class ClaimConfig(Model):
    id: str | None = None
    """Assigned by the management API (``ocl…``) and kept stable across renames; config claims may omit it."""
    name: str = Field(min_length=1, max_length=100)
    status: Status = "ACTIVE"
    claim_type: Literal["RESOURCE", "IDENTITY"] = "RESOURCE"
    value_type: Literal["EXPRESSION", "GROUPS"] = "EXPRESSION"
    value: str
    group_filter_type: Literal["STARTS_WITH", "EQUALS", "CONTAINS", "REGEX"] | None = None
    always_include_in_token: bool = True
    conditions: ClaimConditions = Field(default_factory=ClaimConditions)

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        reserved = {"ver", "jti", "iss", "aud", "iat", "exp", "cid", "uid", "scp", "sub", "auth_time", "acr",
                    "client_id", "nbf"}
        if value in reserved:
            raise ValueError(f"claim {value!r} is reserved and cannot be overridden (spec §4.1)")
        return value

    @model_validator(mode="after")
    def _groups_filter(self) -> ClaimConfig:
        if self.value_type == "GROUPS" and self.group_filter_type is None:
            raise ValueError("a GROUPS claim needs groupFilterType (STARTS_WITH, EQUALS, CONTAINS or REGEX)")
        return self


class IncludeExclude(Model):
    include: list[str] = Field(default_factory=list)
    exclude: list[str] = Field(default_factory=list)


class People(Model):
    users: IncludeExclude = Field(default_factory=IncludeExclude)
    groups: IncludeExclude = Field(default_factory=lambda: IncludeExclude(include=[EVERYONE]))


class GrantTypesCondition(Model):
    include: list[str]

    @field_validator("include")
    @classmethod
    def _known(cls, value: list[str]) -> list[str]:
        unknown = [g for g in value if g not in GRANT_TYPES]
        if unknown:
            raise ValueError(f"unknown grant type(s) {unknown}; use {list(GRANT_TYPES)}")
        if not value:
            raise ValueError("a rule must allow at least one grant type")
        return value


class ScopesCondition(Model):
    include: list[str]

    @field_validator("include")
    @classmethod
    def _non_empty(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("list the scopes the rule allows, or '*' for any scope")
        return value


class RuleConditions(Model):
    people: People = Field(default_factory=People)
    grant_types: GrantTypesCondition
    scopes: ScopesCondition


class TokenActions(Model):
    """Token lifetimes of a rule (spec §1.5, §9 D7). Checked in field order, so each error names its field."""

    access_token_lifetime_minutes: int = 60
    refresh_token_lifetime_minutes: int = 0
    """0 means unlimited."""
    refresh_token_window_minutes: int = 10080

    @field_validator("access_token_lifetime_minutes")
    @classmethod
    def _access(cls, value: int) -> int:
        if not ACCESS_TOKEN_MINUTES_MIN <= value <= ACCESS_TOKEN_MINUTES_MAX:
            raise ValueError(
                f"{value} is outside {ACCESS_TOKEN_MINUTES_MIN}-{ACCESS_TOKEN_MINUTES_MAX}: an access token "
                "lives between five minutes and one day"
            )
        return value

    @field_validator("refresh_token_lifetime_minutes")
    @classmethod
    def _refresh(cls, value: int, info: ValidationInfo) -> int:
        access = info.data.get("access_token_lifetime_minutes")
        if value < 0:
            raise ValueError("must be 0 (unlimited) or a positive number of minutes")
        if value and access is not None and value < access:
            raise ValueError(
                f"{value} is below accessTokenLifetimeMinutes ({access}): a refresh token lives at least as "
                "long as the access token, or is unlimited (0)"
            )
        return value

    @field_validator("refresh_token_window_minutes")
    @classmethod
    def _window(cls, value: int, info: ValidationInfo) -> int:
        access = info.data.get("access_token_lifetime_minutes")
        lifetime = info.data.get("refresh_token_lifetime_minutes")
        if value < REFRESH_WINDOW_MINUTES_MIN:
            raise ValueError(f"{value} is below the minimum idle window of {REFRESH_WINDOW_MINUTES_MIN} minutes")
        if value > REFRESH_WINDOW_MINUTES_MAX:
            raise ValueError(f"{value} is above the maximum idle window of {REFRESH_WINDOW_MINUTES_MAX} minutes (5 years)")
        if access is not None and value < access:
            raise ValueError(f"{value} is below accessTokenLifetimeMinutes ({access}); the idle window must be at least the access token lifetime")
        if lifetime and value > lifetime:
            raise ValueError(f"{value} is above refreshTokenLifetimeMinutes ({lifetime}); the idle window must fit in the refresh token lifetime")
        return value


class RuleActions(Model):
    token: TokenActions = Field(default_factory=TokenActions)


class RuleConfig(Model):
    id: str | None = None
    name: str = Field(min_length=1, max_length=100)
    status: Status = "ACTIVE"
    priority: int = Field(ge=1)
    type: Literal["RESOURCE_ACCESS"] = "RESOURCE_ACCESS"
    conditions: RuleConditions
    actions: RuleActions = Field(default_factory=RuleActions)

    @model_validator(mode="after")
    def _implicit_needs_people(self) -> RuleConfig:
        if "implicit" in self.conditions.grant_types.include:
            people = self.conditions.people
            if not (people.users.include or people.groups.include):
                raise ValueError("a rule that allows the implicit grant must set a user or group condition")
        return self


class ClientsCondition(Model):
    include: list[str]

    @field_validator("include")
    @classmethod
    def _non_empty(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("list client ids, or ALL_CLIENTS")
        return value


class PolicyConditions(Model):
    clients: ClientsCondition = Field(default_factory=lambda: ClientsCondition(include=[ALL_CLIENTS]))


class PolicyConfig(Model):
    id: str | None = None
    name: str = Field(min_length=1, max_length=100)
    description: str | None = None
    status: Status = "ACTIVE"
    priority: int = Field(ge=1)
    type: Literal["OAUTH_AUTHORIZATION_POLICY"] = "OAUTH_AUTHORIZATION_POLICY"
    conditions: PolicyConditions = Field(default_factory=PolicyConditions)
    rules: list[RuleConfig] = Field(default_factory=list)

    @field_validator("rules")
    @classmethod
    def _unique_rule_names(cls, rules: list[RuleConfig]) -> list[RuleConfig]:
        _unique([r.name for r in rules], "rule name")
        return rules


class IntrospectionConfig(Model):
    client_id: str
    client_secret: str
    cache_ttl: Duration = Field(default=30.0, alias="cacheTTL")  # the issue spells it cacheTTL


class RemoteIssuer(Model):
    """An authorization server the proxy trusts but does not serve (a second scopegate, or an Okta org)."""

    issuer: str
    audience: str
    """Its resource: an absolute URI whose path it covers, under the same rule as a local AS."""
    require_typ: bool = True
    """Real Okta access tokens carry no ``typ`` header; set false for them."""
    introspection: IntrospectionConfig | None = None
    jwks_timeout: Duration = 5.0
    jwks_refetch_cooldown: Duration = 30.0

    _issuer = field_validator("issuer", "audience")(classmethod(lambda cls, v: check_absolute_uri(v)))


class AuthorizationServerConfig(Model):
    id: str
    name: str = Field(min_length=1, max_length=100)
    description: str | None = None
    status: Status = "ACTIVE"
    audiences: list[str] = Field(default_factory=list)
    """Exactly one, an absolute URI (spec §1.1: 'Currently, Okta supports only one audience')."""
    scopes: list[ScopeConfig] = Field(default_factory=list)
    claims: list[ClaimConfig] = Field(default_factory=list)
    policies: list[PolicyConfig] = Field(default_factory=list)
    oidc_scopes_implicit: bool = False
    """Spec §9 D1: by default OIDC scopes must be allowed by the rule; true restores the 2016 reading
    ('The rule grants the OpenID Connect scopes by default')."""
    introspect_other_clients: bool = True
    """Spec §9 D11: whether a client may introspect tokens issued to another client of this server (a
    resource server is often a client of its own). False: such tokens are ``{"active": false}``."""
    algorithms: list[Literal["RS256"]] = Field(default_factory=lambda: ["RS256"])  # type: ignore[arg-type]
    match_host: bool = False
    """Also require the request's Host to equal the resource URI's host."""
    access_token_claims: Literal["okta", "rfc9068", "both"] = "both"
    """How access tokens carry their scopes (issue 10 item 3): ``okta`` is Okta's ``scp`` array only; ``rfc9068``
    is RFC 9068 §2.2.3's ``scope`` (one space-separated string) only; ``both`` (default) carries both, with the
    same scopes, so Okta's verifiers and strict RFC 9068 resource servers each find theirs."""
    remote: RemoteIssuer | None = None

    _id = field_validator("id")(classmethod(lambda cls, v: check_id(v)))

    @field_validator("audiences")
    @classmethod
    def _one_absolute_audience(cls, value: list[str]) -> list[str]:
        if len(value) > 1:
            raise ValueError(
                f"{len(value)} audiences given: an authorization server has exactly one resource "
                "(spec §1.1: 'Currently, Okta supports only one audience')"
            )
        for uri in value:
            check_absolute_uri(uri)
        return value

    @field_validator("scopes")
    @classmethod
    def _unique_scopes(cls, scopes: list[ScopeConfig]) -> list[ScopeConfig]:
        _unique([s.name for s in scopes], "scope name", "scopes are unique per authorization server")
        clash = [s.name for s in scopes if s.name in OIDC_SCOPES]
        if clash:
            raise ValueError(f"{clash} are OpenID Connect scopes that exist on every authorization server; do not declare them")
        return scopes

    @field_validator("claims")
    @classmethod
    def _unique_claims(cls, claims: list[ClaimConfig]) -> list[ClaimConfig]:
        _unique([f"{c.claim_type}:{c.name}" for c in claims], "claim (type and name)")
        return claims

    @field_validator("policies")
    @classmethod
    def _unique_policies(cls, policies: list[PolicyConfig]) -> list[PolicyConfig]:
        _unique([p.name for p in policies], "policy name")
        return policies

    @model_validator(mode="after")
    def _local_or_remote(self) -> AuthorizationServerConfig:
        if self.remote is None and len(self.audiences) != 1:
            raise ValueError("audiences must hold exactly one absolute URI (the resource this server protects)")
        if self.remote is not None and (self.audiences or self.scopes or self.policies or self.claims):
            raise ValueError("a remote authorization server declares only remote: {issuer, audience}; its scopes and policies live at the issuer")
        return self

    @property
    def resource(self) -> str:
        return self.remote.audience if self.remote is not None else self.audiences[0]

    @property
    def scope_names(self) -> set[str]:
        return {s.name for s in self.scopes} | set(OIDC_SCOPES)


# ---------------------------------------------------------------------------------------------- apps, users, groups


class RefreshTokenSettings(Model):
    rotation_type: Literal["ROTATE", "STATIC"] = "STATIC"
    leeway: int = Field(default=30, ge=0, le=60)


class Assignments(Model):
    users: list[str] = Field(default_factory=list)
    groups: list[str] = Field(default_factory=list)


class Jwks(Model):
    model_config = ConfigDict(extra="forbid", frozen=True)
    keys: list[dict[str, Any]]


class AppConfig(Model):
    client_id: str
    client_secret: str | None = None
    name: str = Field(min_length=1, max_length=100)
    status: Status = "ACTIVE"
    application_type: Literal["web", "native", "browser", "service"] | None = None
    grant_types: list[str] = Field(default_factory=lambda: ["client_credentials"])
    response_types: list[Literal["code", "token", "id_token"]] = Field(default_factory=lambda: ["code"])  # type: ignore[arg-type]
    token_endpoint_auth_method: Literal["client_secret_basic", "client_secret_post", "private_key_jwt", "none"] = (
        "client_secret_basic"
    )
    redirect_uris: list[str] = Field(default_factory=list)
    pkce_required: bool | None = None
    """Defaults to true for public clients (``none``), which must use PKCE (spec §2.5)."""
    refresh_token: RefreshTokenSettings = Field(default_factory=RefreshTokenSettings)
    jwks: Jwks | None = None
    assignments: Assignments = Field(default_factory=Assignments)

    _client_id = field_validator("client_id")(classmethod(lambda cls, v: check_id(v)))

    @field_validator("grant_types")
    @classmethod
    def _grants(cls, value: list[str]) -> list[str]:
        unknown = [g for g in value if g not in GRANT_TYPES]
        if unknown:
            raise ValueError(f"unknown grant type(s) {unknown}; use {list(GRANT_TYPES)}")
        if not value:
            raise ValueError("an app needs at least one grant type")
        return value

    @field_validator("client_secret")
    @classmethod
    def _secret_length(cls, value: str | None) -> str | None:
        if value is not None and not 14 <= len(value) <= 100:
            raise ValueError("a client secret is 14 to 100 characters (spec §1.6)")
        return value

    @field_validator("redirect_uris")
    @classmethod
    def _redirects(cls, value: list[str]) -> list[str]:
        for uri in value:
            check_absolute_uri(uri)
        return value

    @model_validator(mode="after")
    def _credentials_fit_method(self) -> AppConfig:
        method = self.token_endpoint_auth_method
        if method in ("client_secret_basic", "client_secret_post") and not self.client_secret:
            raise ValueError(f"tokenEndpointAuthMethod {method} needs clientSecret")
        if method == "private_key_jwt" and self.jwks is None:
            raise ValueError("tokenEndpointAuthMethod private_key_jwt needs jwks (the client's public keys)")
        if method == "none" and self.client_secret:
            raise ValueError("a public client (tokenEndpointAuthMethod none) has no clientSecret")
        if method == "none" and "client_credentials" in self.grant_types:
            raise ValueError("a public client (tokenEndpointAuthMethod none) cannot use client_credentials")
        if "authorization_code" in self.grant_types and not self.redirect_uris:
            raise ValueError("the authorization_code grant needs at least one redirectUris entry")
        return self

    @property
    def is_public(self) -> bool:
        return self.token_endpoint_auth_method == "none"

    @property
    def requires_pkce(self) -> bool:
        return self.pkce_required if self.pkce_required is not None else self.is_public


class GroupConfig(Model):
    id: str
    name: str = Field(min_length=1, max_length=255)
    description: str | None = None

    _id = field_validator("id")(classmethod(lambda cls, v: check_id(v)))


UserStatus = Literal["ACTIVE", "SUSPENDED", "DEPROVISIONED", "STAGED", "PROVISIONED", "LOCKED_OUT"]


class UserProfile(BaseModel):
    """Okta profiles hold arbitrary attributes; the named ones feed the OIDC claims."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow", frozen=True)
    first_name: str | None = None
    last_name: str | None = None
    email: str | None = None
    mobile_phone: str | None = None
    locale: str | None = None


class UserConfig(Model):
    id: str
    login: str = Field(min_length=5, max_length=100)
    password: str | None = None
    status: UserStatus = "ACTIVE"
    groups: list[str] = Field(default_factory=list)
    profile: UserProfile = Field(default_factory=UserProfile)

    _id = field_validator("id")(classmethod(lambda cls, v: check_id(v)))


# ---------------------------------------------------------------------------------------------- the file


class CoreSettings(Model):
    """The authorization core's own protections.

    security.md §4.1 (client authentication brute force): "Rate-limit per client_id and per source. Lock
    out or delay after N failures." After ``clientAuthFailureLimit`` failed client authentications naming
    one client_id from one source address within ``clientAuthFailureWindow`` (or
    ``clientAuthFailureSourceLimit`` from one source address, whatever the client), /token, /introspect and
    /revoke answer 429 for that client and source (or that source) without checking credentials until the
    window has passed. Per address, because client ids are public: a global per-client lockout would let
    anyone lock a real client out. 0 disables a limit. Kept in memory, per process. Attempts still being
    checked count against the limits too, so concurrent guesses cannot exceed them; more concurrent
    requests than a limit for one client from one address get 429 with ``Retry-After: 1``.
    """

    prune_interval: Duration = Field(default=300.0, gt=0)
    """How often the process deletes what can no longer matter (expired codes, token records, idle refresh
    chains, spent change-feed entries) and system-log events past ``logRetention``."""
    log_retention: Duration = 90 * 86400.0
    """Okta keeps System Log events for 90 days (spec §6.3); 0 keeps them forever."""

    client_auth_failure_limit: int = Field(default=10, ge=0)
    client_auth_failure_source_limit: int = Field(default=100, ge=0)
    client_auth_failure_window: Duration = 60.0

    max_form_bytes: int = Field(default=65536, ge=1024)
    """Issue 8 item 4: the largest form body the protocol endpoints (/token, /introspect, /revoke,
    /authorize) read; a larger one is answered 413 ``invalid_request`` before it is parsed or logged. A
    ``private_key_jwt`` assertion is a few KiB and Okta caps ``scope`` at 1024 or 4096 characters (spec §7)."""

    sign_in_failure_limit: int = Field(default=10, ge=0)
    """Issue 8 item 5, like Okta's password-policy lockout ("lock out after 10 unsuccessful attempts"): after this
    many failed sign-ins at the /authorize form naming one username within ``signInFailureWindow``, the form
    refuses that username (429, no password check) until the oldest failure leaves the window, and writes a
    ``user.account.lock`` event. Counted per username whether or not the user exists (no enumeration). 0
    disables it. In memory, per process."""
    sign_in_failure_source_limit: int = Field(default=100, ge=0)
    """Failed sign-ins from one source address within ``signInFailureWindow`` (whatever the username) before
    the form refuses that address (429); a password spray from one address stops here. 0 disables it."""
    sign_in_failure_window: Duration = 900.0
    """The window of both sign-in limits (15 minutes)."""

    hashing_threads: int = Field(default=2, ge=1)
    """Issue 8 item 5: password and client-secret hashing (scrypt, ~16 MiB and tens of ms each) runs on its own
    pool of this many threads, never in the pool that carries store calls or the revocation feed."""
    hashing_queue: int = Field(default=8, ge=0)
    """Hashes that may wait for a hashing thread; beyond ``hashingThreads + hashingQueue`` in flight a request is
    shed: /token, /introspect and /revoke answer 503 ``temporarily_unavailable`` with Retry-After, the sign-in
    form 429."""

    failure_event_rate: float = Field(default=5.0, gt=0)
    """Issue 8 item 7: FAILURE/DENY system-log events per second per source address (a token bucket of
    ``failureEventBurst``). Events over it are not written; the next event written for that source carries
    ``debugContext.debugData.suppressedEvents``, and every suppressed event is counted in
    ``scopegate_system_log_suppressed_events_total``."""
    failure_event_burst: int = Field(default=60, ge=1)


class ScopegateConfig(Model):
    listen: Listen = Field(default_factory=Listen)
    store: str = "sqlite:///.scopegate/state.db"
    store_timeout: Duration = Field(default=1.0, gt=0)
    """Issue 12: the deadline of every PostgreSQL statement and connection attempt (``statement_timeout``
    server-side, a watchdog that closes the connection client-side, so a partitioned network answers too).
    A core write the store cannot finish in time is answered 503 (``temporarily_unavailable`` on /oauth2,
    Okta's E0000009 on /api/v1) with ``Retry-After: 1``. Opening the store waits up to 30 s for a migration
    lock. SQLite ignores it (its busy timeout applies)."""
    issuer: str = "http://127.0.0.1:8081"
    admin_tokens: list[str] = Field(default_factory=list)
    upstream: Upstream = Field(default_factory=Upstream)
    revocation: Revocation = Field(default_factory=Revocation)
    proxy: ProxySettings = Field(default_factory=ProxySettings)
    routes: list[Route] = Field(default_factory=list)
    authorization_servers: list[AuthorizationServerConfig] = Field(default_factory=list)
    apps: list[AppConfig] = Field(default_factory=list)
    groups: list[GroupConfig] = Field(default_factory=list)
    users: list[UserConfig] = Field(default_factory=list)
    core: CoreSettings = Field(default_factory=CoreSettings)
    workers: Annotated[int, Field(ge=1, le=256)] | Literal["auto"] = 1
    """Issue 11 item 2: processes serving the same three ports (SO_REUSEPORT), under one supervisor that restarts
    a worker that dies and passes SIGTERM and SIGHUP on. ``auto``: one per CPU this process may run on
    (``os.sched_getaffinity``), capped by the cgroup's CPU quota rounded up. ``scopegate run --workers N`` overrides
    it; a reload does not change it."""
    shutdown_grace_period: Duration = Field(default=25.0, gt=0, le=3600)
    """Issue 12 item 6: at SIGTERM, how long in-flight requests may take to finish before they are cut and the
    process exits. Below Kubernetes' ``terminationGracePeriodSeconds`` (30 s by default), so that SIGKILL never
    comes first."""

    @model_validator(mode="after")
    def _workers_share_a_store(self) -> ScopegateConfig:
        if self.workers != 1 and self.store.startswith("sqlite://") and self.store.endswith(":memory:"):
            raise ValueError("workers other than 1 need a store every worker can open: a SQLite file or PostgreSQL, "
                             "not sqlite:///:memory: (each worker would get a database of its own)")
        return self

    @field_validator("store")
    @classmethod
    def _store(cls, value: str) -> str:
        if not value.startswith(("sqlite://", "postgresql://", "postgres://")):
            raise ValueError(f"{value!r} must be sqlite:///path, sqlite:///:memory: or postgresql://user@host:port/db")
        return value

    @field_validator("issuer")
    @classmethod
    def _issuer(cls, value: str) -> str:
        check_absolute_uri(value)
        if urlsplit(value).scheme not in ("http", "https"):
            raise ValueError(f"{value!r} must be an http:// or https:// URL")
        return value.rstrip("/")

    @field_validator("admin_tokens")
    @classmethod
    def _admin_tokens(cls, value: list[str]) -> list[str]:
        for token in value:
            if len(token) < 16:
                raise ValueError("an admin token is at least 16 characters; generate one with `openssl rand -hex 32`")
        return value

    @field_validator("routes")
    @classmethod
    def _unique_routes(cls, routes: list[Route]) -> list[Route]:
        _unique([r.name for r in routes], "route name")
        return routes

    @field_validator("authorization_servers")
    @classmethod
    def _unique_servers(cls, servers: list[AuthorizationServerConfig]) -> list[AuthorizationServerConfig]:
        _unique([s.id for s in servers], "authorization server id")
        return servers

    @field_validator("apps")
    @classmethod
    def _unique_apps(cls, apps: list[AppConfig]) -> list[AppConfig]:
        _unique([a.client_id for a in apps], "clientId")
        return apps

    @field_validator("groups")
    @classmethod
    def _unique_groups(cls, groups: list[GroupConfig]) -> list[GroupConfig]:
        _unique([g.id for g in groups], "group id")
        return groups

    @field_validator("users")
    @classmethod
    def _unique_users(cls, users: list[UserConfig]) -> list[UserConfig]:
        _unique([u.id for u in users], "user id")
        _unique([u.login.lower() for u in users], "user login")
        return users

    def issuer_for(self, as_id: str) -> str:
        """Each local AS's issuer is ``{issuer}/oauth2/{id}``."""
        return f"{self.issuer}/oauth2/{as_id}"


def _unique(values: list[str], what: str, why: str = "") -> None:
    seen: set[str] = set()
    dupes = sorted({v for v in values if v in seen or seen.add(v)})  # type: ignore[func-returns-value]
    if dupes:
        raise ValueError(f"duplicate {what} {dupes}" + (f": {why}" if why else ""))
