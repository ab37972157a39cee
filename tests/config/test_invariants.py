"""Every invariant of the config schema rejects a bad document with the path and the rule broken."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from config import ConfigError, load_config, parse_config

EXAMPLE = Path(__file__).parents[2] / "examples" / "orders.yaml"
ENV = {"SCOPEGATE_ADMIN_TOKEN": "a" * 32, "REPORTING_SECRET": "r" * 20, "WEB_SECRET": "w" * 20, "ALICE_PASSWORD": "pw-alice"}


def base() -> dict[str, Any]:
    return copy.deepcopy(yaml.safe_load(EXAMPLE.read_text()))


def errors_for(mutate: Callable[[dict[str, Any]], None]) -> list[str]:
    doc = base()
    mutate(doc)
    with pytest.raises(ConfigError) as info:
        parse_config(yaml.safe_dump(doc, sort_keys=False), "bad.yaml", ENV)
    return [issue.render("bad.yaml") for issue in info.value.issues]


def rule(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["authorizationServers"][0]["policies"][0]["rules"][0]  # type: ignore[no-any-return]


def test_example_from_the_issue_is_valid() -> None:
    """The example config of the foundation issue passes."""
    cfg = load_config(EXAMPLE, env=ENV)
    assert cfg.authorization_servers[0].resource == "https://api.example.com/orders"


def test_default_config_is_valid() -> None:
    """The config shipped in the package, used by `scopegate run` without --config, passes."""
    cfg = load_config(None, env={})
    assert cfg.upstream.url == "builtin:echo"
    assert cfg.store.startswith("sqlite://")


def test_relative_resource_uri_rejected() -> None:
    """The resource URI must be absolute (brief: 'must be an absolute path')."""
    errs = errors_for(lambda d: d["authorizationServers"][0].update(audiences=["/orders"]))
    assert any("authorizationServers[0].audiences" in e and "absolute URI" in e for e in errs), errs


def test_second_audience_rejected() -> None:
    """An authorization server has exactly one resource."""
    errs = errors_for(lambda d: d["authorizationServers"][0]["audiences"].append("https://api.example.com/other"))
    assert any("authorizationServers[0].audiences" in e and "exactly one resource" in e for e in errs), errs


def test_missing_audience_rejected() -> None:
    """A local authorization server without a resource cannot issue tokens for anything."""
    errs = errors_for(lambda d: d["authorizationServers"][0].update(audiences=[]))
    assert any("exactly one absolute URI" in e for e in errs), errs


def test_duplicate_scope_name_rejected() -> None:
    """Scopes are unique per authorization server."""
    errs = errors_for(lambda d: d["authorizationServers"][0]["scopes"].append({"name": "orders:read"}))
    assert any("authorizationServers[0].scopes" in e and "duplicate scope name ['orders:read']" in e for e in errs), errs


@pytest.mark.parametrize("name", ["okta.read", "okta:write", "*", "okta", "has space", 'q"uote', "a<b>c"])
def test_invalid_scope_names_rejected(name: str) -> None:
    """Scope names follow spec §1.2 (printable ASCII, no okta prefix, not '*', not both '<' and '>')."""
    errs = errors_for(lambda d: d["authorizationServers"][0]["scopes"].append({"name": name}))
    assert any("authorizationServers[0].scopes[2].name" in e for e in errs), errs


def test_declaring_an_oidc_scope_rejected() -> None:
    """OIDC scopes exist on every server without being declared; declaring one is a mistake."""
    errs = errors_for(lambda d: d["authorizationServers"][0]["scopes"].append({"name": "openid"}))
    assert any("OpenID Connect scopes" in e for e in errs), errs


def test_oidc_scopes_usable_without_declaration() -> None:
    """A rule may allow OIDC scopes that the server does not declare."""
    doc = base()
    rule(doc)["conditions"]["scopes"]["include"] = ["openid", "profile", "orders:read"]
    parse_config(yaml.safe_dump(doc), "ok.yaml", ENV)


@pytest.mark.parametrize("minutes", [4, 1441, 0])
def test_access_token_lifetime_out_of_range_rejected(minutes: int) -> None:
    """Access token lifetime is 5-1440 minutes."""
    errs = errors_for(lambda d: rule(d)["actions"]["token"].update(accessTokenLifetimeMinutes=minutes))
    path = "authorizationServers[0].policies[0].rules[0].actions.token.accessTokenLifetimeMinutes"
    assert any(path in e and "outside 5-1440" in e for e in errs), errs


@pytest.mark.parametrize("minutes", [5, 1440])
def test_access_token_lifetime_bounds_accepted(minutes: int) -> None:
    """5 and 1440 minutes are both allowed."""
    doc = base()
    rule(doc)["actions"]["token"] = {"accessTokenLifetimeMinutes": minutes, "refreshTokenWindowMinutes": max(minutes, 10)}
    parse_config(yaml.safe_dump(doc), "ok.yaml", ENV)


def test_refresh_lifetime_below_access_lifetime_rejected() -> None:
    """A refresh token lives at least as long as the access token, or is unlimited."""
    errs = errors_for(lambda d: rule(d)["actions"]["token"].update(refreshTokenLifetimeMinutes=20))
    assert any("refreshTokenLifetimeMinutes" in e and "below accessTokenLifetimeMinutes (30)" in e for e in errs), errs


def test_unlimited_refresh_lifetime_accepted() -> None:
    """refreshTokenLifetimeMinutes 0 means unlimited."""
    doc = base()
    rule(doc)["actions"]["token"].update(refreshTokenLifetimeMinutes=0)
    parse_config(yaml.safe_dump(doc), "ok.yaml", ENV)


def test_idle_window_under_ten_minutes_rejected() -> None:
    """The refresh idle window is at least 10 minutes."""
    def mutate(d: dict[str, Any]) -> None:
        rule(d)["actions"]["token"] = {"accessTokenLifetimeMinutes": 5, "refreshTokenWindowMinutes": 9}
    errs = errors_for(mutate)
    assert any("refreshTokenWindowMinutes" in e and "minimum idle window of 10" in e for e in errs), errs


def test_idle_window_beyond_refresh_lifetime_rejected() -> None:
    """The idle window lies between the access token lifetime and the refresh token lifetime (spec §9 D7)."""
    def mutate(d: dict[str, Any]) -> None:
        rule(d)["actions"]["token"] = {"accessTokenLifetimeMinutes": 30, "refreshTokenLifetimeMinutes": 60,
                                       "refreshTokenWindowMinutes": 120}
    errs = errors_for(mutate)
    assert any("refreshTokenWindowMinutes" in e and "above refreshTokenLifetimeMinutes (60)" in e for e in errs), errs


def test_idle_window_above_five_years_rejected() -> None:
    """The idle window is at most 2,628,000 minutes."""
    errs = errors_for(lambda d: rule(d)["actions"]["token"].update(refreshTokenWindowMinutes=2_628_001))
    assert any("maximum idle window" in e for e in errs), errs


def test_resources_sharing_a_path_rejected() -> None:
    """Two servers whose resources share a path would make the path ambiguous."""
    def mutate(d: dict[str, Any]) -> None:
        other = copy.deepcopy(d["authorizationServers"][0])
        other.update(id="orders2", audiences=["https://other.example.com/orders/"])
        d["authorizationServers"].append(other)
    errs = errors_for(mutate)
    assert any("authorizationServers[1].audiences[0]" in e and "already covered by authorization server 'orders'" in e
               for e in errs), errs


def test_nested_resources_accepted() -> None:
    """Nested resource paths are not ambiguous: the longest segment-aligned prefix decides."""
    doc = base()
    other = copy.deepcopy(doc["authorizationServers"][0])
    other.update(id="admin", audiences=["https://api.example.com/orders/admin"])
    doc["authorizationServers"].append(other)
    parse_config(yaml.safe_dump(doc), "ok.yaml", ENV)


@pytest.mark.parametrize(
    ("mutate", "path", "message"),
    [
        (lambda d: rule(d)["conditions"]["scopes"]["include"].append("orders:delete"),
         "rules[0].conditions.scopes.include[1]", "scope 'orders:delete' is not defined"),
        (lambda d: d["authorizationServers"][0]["policies"][0]["conditions"]["clients"]["include"].append("ghost"),
         "policies[0].conditions.clients.include[1]", "client 'ghost' does not exist"),
        (lambda d: d["apps"][1]["assignments"]["users"].append("bob"),
         "apps[1].assignments.users[0]", "user 'bob' does not exist"),
        (lambda d: d["apps"][1]["assignments"]["groups"].append("sales"),
         "apps[1].assignments.groups[1]", "group 'sales' does not exist"),
        (lambda d: d["users"][0]["groups"].append("sales"), "users[0].groups[1]", "group 'sales' does not exist"),
        (lambda d: rule(d)["conditions"].update(people={"users": {"include": ["bob"]}}),
         "rules[0].conditions.people.users.include[0]", "user 'bob' does not exist"),
        (lambda d: d["routes"][0]["scopes"].update(anyOf=["orders:reed"]),
         "routes[0].scopes.anyOf[0]", "scope 'orders:reed' is not defined"),
    ],
)
def test_dangling_references_rejected(mutate: Callable[[dict[str, Any]], None], path: str, message: str) -> None:
    """References (rule scopes, policy clients, assignments, group memberships, route scopes) must resolve."""
    errs = errors_for(mutate)
    assert any(path in e and message in e for e in errs), errs


def test_all_errors_reported_at_once() -> None:
    """Every problem is reported, not only the first."""
    def mutate(d: dict[str, Any]) -> None:
        d["authorizationServers"][0]["audiences"] = ["relative"]
        rule(d)["actions"]["token"]["accessTokenLifetimeMinutes"] = 4
        d["apps"][0]["colour"] = "red"
    errs = errors_for(mutate)
    assert len(errs) == 3, errs


def test_unknown_key_rejected_with_path() -> None:
    """A typo must not silently disable a check: unknown keys are errors."""
    errs = errors_for(lambda d: rule(d)["conditions"].update(scope={"include": ["*"]}))
    assert any("rules[0].conditions.scope" in e and "unknown key" in e for e in errs), errs


def test_error_names_file_line_and_path(tmp_path: Path) -> None:
    """An error names the file, the line, the document path and the rule."""
    text = EXAMPLE.read_text().replace("accessTokenLifetimeMinutes: 30", "accessTokenLifetimeMinutes: 1441")
    bad = tmp_path / "scopegate.yaml"
    bad.write_text(text)
    line = next(i for i, ln in enumerate(text.splitlines(), 1) if "1441" in ln)
    with pytest.raises(ConfigError) as info:
        load_config(bad, env=ENV)
    assert str(info.value).startswith(
        f"{bad}:{line}: authorizationServers[0].policies[0].rules[0].actions.token.accessTokenLifetimeMinutes: 1441 is outside"
    )


def test_missing_environment_variable_is_an_error() -> None:
    """A ${NAME} reference to an unset variable is an error naming the variable."""
    with pytest.raises(ConfigError) as info:
        load_config(EXAMPLE, env={})
    assert "environment variable REPORTING_SECRET is not set" in str(info.value)


def test_environment_default_syntax() -> None:
    """${NAME:-fallback} uses the fallback when NAME is unset."""
    cfg = parse_config('issuer: "${ISSUER:-https://idp.example.com}"\n', "x.yaml", {})
    assert cfg.issuer == "https://idp.example.com"


def test_unreadable_file_is_one_clear_error(tmp_path: Path) -> None:
    """A missing file is reported, not raised as a traceback."""
    with pytest.raises(ConfigError, match="cannot read the file"):
        load_config(tmp_path / "nope.yaml")


def test_invalid_yaml_reports_line() -> None:
    """Broken YAML names its line."""
    with pytest.raises(ConfigError) as info:
        parse_config("listen:\n  proxy: [unclosed\n", "broken.yaml", {})
    assert info.value.issues[0].line is not None
    assert "not valid YAML" in str(info.value)


def test_duplicate_yaml_key_rejected() -> None:
    """A key written twice would silently replace the first: it is an error."""
    with pytest.raises(ConfigError, match="duplicate key"):
        parse_config("issuer: http://a.example\nissuer: http://b.example\n", "dup.yaml", {})


def test_durations_parse() -> None:
    """Durations accept 30s, 5m, 1h and 500ms."""
    cfg = parse_config("upstream: {url: 'http://127.0.0.1:9', connectTimeout: 500ms, timeout: 1m}\n"
                       "revocation: {maxStaleness: 1h, pollInterval: 2s}\n", "d.yaml", {})
    assert (cfg.upstream.connect_timeout, cfg.upstream.timeout) == (0.5, 60.0)
    assert cfg.revocation.max_staleness == 3600.0


def test_bad_duration_rejected() -> None:
    """A duration that is not one names the accepted forms."""
    with pytest.raises(ConfigError, match=r"upstream.timeout: .*not a duration"):
        parse_config("upstream: {timeout: soon}\n", "d.yaml", {})


def test_public_route_with_scopes_rejected() -> None:
    """A public route takes no token, so requiring scopes on it is a contradiction."""
    errs = errors_for(lambda d: d["routes"][2].update(scopes={"anyOf": ["orders:read"]}))
    assert any("routes[2]" in e and "public route" in e for e in errs), errs


def test_confidential_client_without_secret_rejected() -> None:
    """client_secret_basic needs a secret."""
    errs = errors_for(lambda d: d["apps"][0].pop("clientSecret"))
    assert any("apps[0]" in e and "needs clientSecret" in e for e in errs), errs
