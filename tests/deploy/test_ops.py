"""deploy/prometheus (alert rules) and deploy/grafana (dashboard): checked with promtool, and every metric
they name is exported by the real processes' /metrics after some traffic.

promtool comes from Debian's prometheus package (.ci/run installs the binary); a missing promtool fails.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.deploy.kube import ROOT, tool
from tests.deploy.test_injector import admission_review, app_pod
from tests.deploy.test_injector_tls import Injector
from tests.e2e.conftest import RunningScopegate

RULES = ROOT / "deploy/prometheus/scopegate-rules.yaml"
RULE_TESTS = ROOT / "deploy/prometheus/scopegate-rules.test.yaml"
DASHBOARD = ROOT / "deploy/grafana/scopegate-dashboard.json"
PROMETHEUS_RULES = [ROOT / "deploy/kubernetes/components/prometheus-operator/prometheusrule.yaml",
                    ROOT / "deploy/injector/prometheusrule.yaml"]
METRIC = re.compile(r"\bscopegate_[a-z0-9_]+\b")
# Grafana's variables, as Grafana would substitute them before sending a query.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$namespace": ".*", "$job": ".*", "$injector_namespace": ".*"}


def promtool(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool("promtool"), *map(str, args)], capture_output=True, text=True, timeout=60,
                          check=False, cwd=cwd)


def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def dashboard_queries() -> list[str]:
    queries = [t["expr"] for p in dashboard()["panels"] for t in p.get("targets", [])]
    assert len(queries) >= 12
    return queries


def rules_expressions() -> list[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


def names_in(expressions: list[str]) -> set[str]:
    return {name for expr in expressions for name in METRIC.findall(expr)}


def test_alert_rules_pass_promtool_check() -> None:
    done = promtool("check", "rules", RULES)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 10 rules found" in done.stdout


def test_alert_rules_unit_tests_pass_in_promtool() -> None:
    """deploy/prometheus/scopegate-rules.test.yaml: each alert fires on the series that should fire it, only then."""
    done = promtool("test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_prometheus_rule_objects_carry_exactly_the_rules_file() -> None:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    in_cluster = [g for path in PROMETHEUS_RULES for g in yaml.safe_load(path.read_text())["spec"]["groups"]]
    assert in_cluster == groups


def test_alerts_cover_what_the_issue_asks() -> None:
    alerts = {rule["alert"] for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]}
    assert {"ScopegateDenyRateSpike", "ScopegateRevocationFeedStale", "ScopegateUpstreamErrors", "ScopegateNotReady",
            "ScopegateInjectorErrors"} <= alerts


def test_dashboard_queries_parse_with_promtool(tmp_path: Path) -> None:
    """Every panel's query, with Grafana's variables substituted, checked by promtool as a recording rule."""
    variables = {v["name"] for v in dashboard()["templating"]["list"]}
    rules = []
    for i, expr in enumerate(dashboard_queries()):
        for name in re.findall(r"\$(\w+)", expr):
            assert name == "__rate_interval" or name in variables, name
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, expr
        rules.append({"record": f"dashboard:query_{i}", "expr": expr})
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = promtool("check", "rules", path)
    assert done.returncode == 0, done.stdout + done.stderr


def test_dashboard_is_a_well_formed_grafana_dashboard() -> None:
    """Grafana's dashboard JSON model: unique panel ids on a 24-column grid, every query on the chosen data source,
    and the panels the issue lists."""
    model = dashboard()
    assert model["uid"] and model["title"] and isinstance(model["schemaVersion"], int)
    panels = model["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24 and grid["h"] > 0
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert {t["refId"] for t in panel["targets"]} == {chr(65 + i) for i in range(len(panel["targets"]))}
    assert model["templating"]["list"][0] == {"name": "datasource", "label": "Data source", "type": "datasource",
                                              "query": "prometheus", "current": {}, "hide": 0}
    titles = " | ".join(p["title"] for p in panels).lower()
    for topic in ("decision and reason", "p50, p95, p99", "upstream errors", "upstream latency", "hit ratio",
                  "revocation-state age", "issued and denied", "in-flight", "injector admissions"):
        assert topic in titles, topic


SECRET = "ops-test-secret-0123456789"


def gate_config() -> dict[str, Any]:
    return {
        "upstream": {"url": "builtin:echo"},
        "routes": [{"name": "read", "path": "/api", "methods": ["GET"], "scopes": {"allOf": ["orders:read"]}},
                   {"name": "admin", "path": "/admin", "scopes": {"allOf": ["orders:admin"]}}],
        "authorizationServers": [{
            "id": "orders", "name": "Orders", "audiences": ["https://api.example.com"],
            "scopes": [{"name": "orders:read"}, {"name": "orders:admin"}],
            "policies": [{"name": "All", "priority": 1, "conditions": {"clients": {"include": ["ALL_CLIENTS"]}},
                          "rules": [{"name": "Read", "priority": 1,
                                     "conditions": {"grantTypes": {"include": ["client_credentials"]},
                                                    "scopes": {"include": ["orders:read"]}},
                                     "actions": {"token": {"accessTokenLifetimeMinutes": 5}}}]}],
        }],
        "apps": [{"clientId": "svc", "clientSecret": SECRET, "name": "Service", "grantTypes": ["client_credentials"]}],
    }


def exported(url: str) -> tuple[str, set[str]]:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return text, {sample.name for family in text_string_to_metric_families(text) for sample in family.samples}


@pytest.mark.e2e
def test_every_metric_the_dashboard_and_rules_use_is_exported(scopegate: Callable[..., RunningScopegate],
                                                              tmp_path: Path) -> None:
    """The real scopegate process after traffic (a token issued, one denied, 200, 401, 403) and the real
    injector after an admission: each scopegate_* name in the dashboard and the rules is on a /metrics."""
    gate = scopegate(gate_config())
    token_url = f"{gate.core}/oauth2/orders/v1/token"
    issued = httpx.post(token_url, auth=("svc", SECRET), data={"grant_type": "client_credentials", "scope": "orders:read"})
    assert issued.status_code == 200, issued.text
    denied = httpx.post(token_url, auth=("svc", "wrong-secret-0000000000"), data={"grant_type": "client_credentials"})
    assert denied.status_code == 401
    token = issued.json()["access_token"]
    bearer = {"Authorization": f"Bearer {token}"}
    assert httpx.get(f"{gate.proxy}/api/orders", headers=bearer).status_code == 200
    assert httpx.get(f"{gate.proxy}/api/orders", headers=bearer).status_code == 200  # a cache hit
    assert httpx.get(f"{gate.proxy}/api/orders").status_code == 401
    assert httpx.get(f"{gate.proxy}/admin", headers=bearer).status_code == 403

    injector = Injector(tmp_path)
    pem = injector.install("injector")
    injector.start()
    try:
        review = json.dumps(admission_review(app_pod({"scopegate.io/inject": "true"}))).encode()
        assert injector.post(pem, review).status_code == 200
        injector_text, injector_names = exported(f"http://127.0.0.1:{injector.ops_port}")
    finally:
        assert injector.stop() == 0

    gate_text, gate_names = exported(gate.ops)
    used = names_in(dashboard_queries() + rules_expressions())
    for name in sorted(used):
        where = injector_names if name.startswith("scopegate_injector_") else gate_names
        assert name in where, f"{name} is used by deploy/ but not exported"

    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(gate_text) for s in family.samples}
    labels = (("authorization_server", "orders"), ("grant_type", "client_credentials"))
    assert samples[("scopegate_tokens_total", (*labels, ("outcome", "issued")))] == 1
    assert samples[("scopegate_tokens_total", (*labels, ("outcome", "denied")))] == 1
    assert samples[("scopegate_ready", ())] == 1
    assert samples[("scopegate_token_cache_total", (("result", "hit"),))] >= 1

    # promtool's own lint of the exposition (naming, help, units) for both processes.
    for text in (gate_text, injector_text):
        done = subprocess.run([tool("promtool"), "check", "metrics"], input=text, capture_output=True, text=True,
                              timeout=60, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
