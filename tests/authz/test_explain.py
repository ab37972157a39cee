"""``scopegate explain``: the same evaluation trace as the system log, nothing issued."""

from __future__ import annotations

import io
import json
from pathlib import Path

import yaml

from authz.explain import run_explain
from tests.authz.oauth_kit import BASE_CONFIG


def explain(tmp_path: Path, *args: str) -> tuple[int, str, str]:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(BASE_CONFIG))
    out, err = io.StringIO(), io.StringIO()
    status = run_explain(["--config", str(path), *args], out=out, err=err)
    return status, out.getvalue(), err.getvalue()


def test_granted_request_names_policy_rule_and_lifetime(tmp_path: Path) -> None:
    """A request that would succeed exits 0 and names the matching policy and rule."""
    status, out, _ = explain(tmp_path, "--as", "orders", "--client", "svc", "--grant", "client_credentials",
                             "--scope", "orders:read")
    assert status == 0
    assert out.startswith("GRANTED") and "rule 'Read write': MATCH" in out and "30 min" in out


def test_partial_scope_denial_explains_every_rule(tmp_path: Path) -> None:
    """A denied request exits 1; the debugData matches the system log's (denied scopes, rules tried)."""
    status, out, _ = explain(tmp_path, "--as", "orders", "--client", "svc", "--grant", "client_credentials",
                             "--scope", "orders:read orders:admin", "--json")
    assert status == 1
    debug = json.loads(out)
    assert debug["reason"] == "no_matching_policy" and debug["denied_scopes"] == "orders:read orders:admin"
    assert debug["policy_evaluation"][0]["rules"][0]["reason"].startswith("scope(s) [orders:admin] not allowed")
    assert "client svc is not in the policy's clients" not in out


def test_user_not_assigned(tmp_path: Path) -> None:
    """The user check comes before the policy, as at /token."""
    status, out, _ = explain(tmp_path, "--as", "orders", "--client", "web", "--user", "bob@example.com", "--grant",
                             "password", "--scope", "orders:read")
    assert status == 1 and "DENIED (user_not_assigned)" in out


def test_needs_as_when_several(tmp_path: Path) -> None:
    """With several authorization servers, --as is required (exit 2)."""
    status, _, err = explain(tmp_path, "--client", "svc", "--grant", "client_credentials")
    assert status == 2 and "give --as" in err
