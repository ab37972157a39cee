"""Access policies and rules, evaluated as Okta does (spec §3.1-§3.3), with a trace of every step.

The engine is pure: it reads an authorization server's config model and returns an ``Evaluation`` that
says which policy and rule matched, which scopes were granted, and for every policy and rule tried why
it did not match. The token endpoint, ``/authorize`` and ``scopegate explain`` share it, so the system
log's debugData and the explain output are the same trace.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from authz.errors import OAuthError
from config.schema import (
    ALL_CLIENTS,
    ANY_SCOPE,
    EVERYONE,
    OIDC_SCOPES,
    AuthorizationServerConfig,
    People,
    PolicyConfig,
    RuleConfig,
)

MAX_SCOPE_PARAM = 1024
"""Spec §1.2: 'scope parameter: max length 1024 chars per [OIDC]' (the stricter of the two sources)."""

# Scopes that release user claims; asking for one without openid is Okta's openid_scope_required.
_CLAIM_SCOPES = ("profile", "email", "address", "phone")

# Grants that have no user: spec §9 D4 treats people conditions as satisfied only for these.
USERLESS_GRANTS = ("client_credentials",)

NO_MATCHING_POLICY = "Policy evaluation failed for this request, please check the policy configurations."
USER_NOT_ASSIGNED = "User is not assigned to the client application."


@dataclass(frozen=True)
class Principal:
    """The user as policy sees it: an id and the ids of the groups it belongs to."""

    id: str
    groups: frozenset[str] = frozenset()


@dataclass(frozen=True)
class ScopeRequest:
    scopes: tuple[str, ...]
    defaulted: bool
    """True when ``scope`` was omitted and the AS's default scopes stand in (spec §3.3)."""


@dataclass(frozen=True)
class RuleTrial:
    rule_id: str | None
    rule_name: str
    matched: bool
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"rule": self.rule_id, "name": self.rule_name, "matched": self.matched, "reason": self.reason}


@dataclass(frozen=True)
class PolicyTrial:
    policy_id: str | None
    policy_name: str
    priority: int
    reason: str
    """Why the policy as a whole was skipped, or 'evaluated' when its rules were tried."""
    rules: tuple[RuleTrial, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"policy": self.policy_id, "name": self.policy_name, "priority": self.priority,
                "reason": self.reason, "rules": [r.to_dict() for r in self.rules]}


@dataclass(frozen=True)
class Evaluation:
    grant_type: str
    requested: tuple[str, ...]
    defaulted: bool
    policy: PolicyConfig | None = None
    rule: RuleConfig | None = None
    granted: tuple[str, ...] = ()
    trials: tuple[PolicyTrial, ...] = field(default=())

    @property
    def matched(self) -> bool:
        return self.rule is not None

    @property
    def denied(self) -> tuple[str, ...]:
        return tuple(s for s in self.requested if s not in self.granted)

    def debug_data(self) -> dict[str, Any]:
        """Okta's OAuth2DebugData keys (spec §6.2) plus the trace of every policy and rule tried."""
        data: dict[str, Any] = {
            "grant_type": self.grant_type,
            "requested_scopes": " ".join(self.requested),
            "scopes_defaulted": self.defaulted,
            "granted_scopes": " ".join(self.granted),
            "denied_scopes": " ".join(self.denied),
            "policy_evaluation": [t.to_dict() for t in self.trials],
        }
        if self.policy is not None and self.rule is not None:
            data["policy"] = self.policy.id
            data["policy_name"] = self.policy.name
            data["rule"] = self.rule.id
            data["rule_name"] = self.rule.name
        return data


def format_list(values: tuple[str, ...] | list[str]) -> str:
    """Okta's ``[a, b]`` placeholder rendering in error descriptions (spec §2.6)."""
    return "[" + ", ".join(values) + "]"


def invalid_scope(description: str, reason: str) -> OAuthError:
    return OAuthError("invalid_scope", description, reason=reason)


def resolve_scopes(server: AuthorizationServerConfig, scope_param: str | None, grant_type: str) -> ScopeRequest:
    """Parse ``scope`` and check it against the AS (spec §3.2 step 7); raise Okta's ``invalid_scope``."""
    if scope_param is None or not scope_param.strip(" "):
        defaults = tuple(s.name for s in server.scopes if s.default)
        if not defaults:
            raise invalid_scope("The authorization server resource does not have any configured default scopes, "
                                "'scope' must be provided.", "no_default_scopes")
        return ScopeRequest(defaults, defaulted=True)
    if len(scope_param) > MAX_SCOPE_PARAM:
        raise invalid_scope("The requested scope is invalid, unknown, malformed, or exceeds the scope granted by "
                            "the resource owner.", "scope_too_long")
    # RFC 6749 §3.3: "a list of space-delimited, case-sensitive strings"; repeats add nothing.
    requested = tuple(dict.fromkeys(s for s in scope_param.split(" ") if s))
    unknown = [s for s in requested if s not in server.scope_names]
    if unknown:
        raise invalid_scope("One or more scopes are not configured for the authorization server resource.",
                            "no_matching_scope")
    if grant_type in USERLESS_GRANTS and any(s in OIDC_SCOPES for s in requested):
        # Spec §3.3: client credentials need a custom scope; 'OIDC scopes are not allowed'.
        raise invalid_scope("Cannot request 'openid' scopes using client credentials.", "openid_with_client_credentials")
    if "openid" not in requested and any(s in _CLAIM_SCOPES for s in requested):
        raise invalid_scope("Requests for ID tokens or access tokens with OpenID scopes require the 'openid' scope.",
                            "openid_scope_required")
    return ScopeRequest(requested, defaulted=False)


def people_match(people: People, user: Principal | None, grant_type: str) -> tuple[bool, str]:
    """Include is OR over users and groups, exclude wins (spec §3.2, [INF])."""
    if user is None:
        # Spec §9 D4: "People conditions are treated as satisfied when user is None, but only for
        # client_credentials (and other user-less grants)."
        if grant_type in USERLESS_GRANTS:
            return True, "no user (client credentials)"
        return False, "no user for a grant that needs one"
    if user.id in people.users.exclude:
        return False, f"user {user.id} is excluded by the rule"
    excluded = sorted(user.groups & set(people.groups.exclude))
    if excluded:
        return False, f"user {user.id} is in excluded group(s) {format_list(excluded)}"
    if EVERYONE in people.groups.include:
        return True, "everyone"
    if user.id in people.users.include:
        return True, "user included"
    if user.groups & set(people.groups.include):
        return True, "group included"
    return False, f"user {user.id} is neither included by id nor by one of its groups"


def scope_allowed(server: AuthorizationServerConfig, rule: RuleConfig, scope: str) -> bool:
    allowed = rule.conditions.scopes.include
    if ANY_SCOPE in allowed or scope in allowed:
        # TF-RULE: '*' means any scope defined on the AS (the caller has checked they all are).
        return True
    # Spec §9 D1: OIDC scopes must be allowed by the rule unless the AS restores the 2016 reading
    # ("The rule grants the OpenID Connect scopes by default") with oidcScopesImplicit.
    return server.oidc_scopes_implicit and scope in OIDC_SCOPES


def evaluate(server: AuthorizationServerConfig, client_id: str, user: Principal | None, grant_type: str,
             request: ScopeRequest) -> Evaluation:
    """Spec §3.2: active policies by priority whose client condition matches, their active rules by
    priority; the first rule whose grant type, people and *every* requested scope match wins."""
    trials: list[PolicyTrial] = []
    for policy in sorted(server.policies, key=lambda p: p.priority):
        if policy.status != "ACTIVE":
            trials.append(PolicyTrial(policy.id, policy.name, policy.priority, "policy is INACTIVE"))
            continue
        rules = sorted((r for r in policy.rules if r.status == "ACTIVE"), key=lambda r: r.priority)
        if not rules:
            # [POL]: "Policies that have no Rules aren't considered during evaluation and are never applied."
            trials.append(PolicyTrial(policy.id, policy.name, policy.priority, "policy has no ACTIVE rules"))
            continue
        include = policy.conditions.clients.include
        if ALL_CLIENTS not in include and client_id not in include:
            trials.append(PolicyTrial(policy.id, policy.name, policy.priority,
                                      f"client {client_id} is not in the policy's clients {format_list(include)}"))
            continue
        rule_trials: list[RuleTrial] = []
        for rule in rules:
            granted, reason = _match_rule(server, rule, user, grant_type, request)
            rule_trials.append(RuleTrial(rule.id, rule.name, granted is not None, reason))
            if granted is not None:
                trials.append(PolicyTrial(policy.id, policy.name, policy.priority, "evaluated", tuple(rule_trials)))
                return Evaluation(grant_type, request.scopes, request.defaulted, policy, rule, granted, tuple(trials))
        trials.append(PolicyTrial(policy.id, policy.name, policy.priority, "evaluated: no rule matched",
                                  tuple(rule_trials)))
    if not trials:
        trials.append(PolicyTrial(None, "(none)", 0, "the authorization server has no access policies"))
    return Evaluation(grant_type, request.scopes, request.defaulted, trials=tuple(trials))


def _match_rule(server: AuthorizationServerConfig, rule: RuleConfig, user: Principal | None, grant_type: str,
                request: ScopeRequest) -> tuple[tuple[str, ...] | None, str]:
    grants = rule.conditions.grant_types.include
    if grant_type not in grants:
        return None, f"grant type {grant_type} is not in the rule's {format_list(grants)}"
    people_ok, people_reason = people_match(rule.conditions.people, user, grant_type)
    if not people_ok:
        return None, people_reason
    allowed = tuple(s for s in request.scopes if scope_allowed(server, rule, s))
    if request.defaulted:
        # [G-AS]: "Okta returns all default scopes permitted by the access policy rule."
        if not allowed:
            return None, (f"none of the default scopes {format_list(request.scopes)} is allowed by the rule's "
                          f"{format_list(rule.conditions.scopes.include)}")
        return allowed, "matched (default scopes)"
    denied = [s for s in request.scopes if s not in allowed]
    if denied:
        # [SUP-RULE]: scopes beyond those covered by a rule → the rule does not match; nothing partial.
        return None, (f"scope(s) {format_list(denied)} not allowed by the rule's "
                      f"{format_list(rule.conditions.scopes.include)}")
    return allowed, "matched"


def require_match(evaluation: Evaluation) -> tuple[PolicyConfig, RuleConfig]:
    """Spec §2.6 ``no_matching_policy``: 401 on /token (§9 D9); /authorize carries it on the redirect."""
    if evaluation.policy is None or evaluation.rule is None:
        raise OAuthError("access_denied", NO_MATCHING_POLICY, status_code=401, reason="no_matching_policy")
    return evaluation.policy, evaluation.rule


def user_not_assigned() -> OAuthError:
    return OAuthError("access_denied", USER_NOT_ASSIGNED, reason="user_not_assigned")


__all__ = [
    "NO_MATCHING_POLICY",
    "USER_NOT_ASSIGNED",
    "Evaluation",
    "PolicyTrial",
    "Principal",
    "RuleTrial",
    "ScopeRequest",
    "evaluate",
    "format_list",
    "people_match",
    "require_match",
    "resolve_scopes",
    "scope_allowed",
    "user_not_assigned",
]
