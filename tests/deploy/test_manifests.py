"""deploy/kubernetes (base, overlays single and shared) and deploy/injector, rendered by ``kubectl kustomize``
and validated offline with ``kubernetes-validate --strict`` for every Kubernetes version we claim.

Nothing here talks to a cluster (none can run on these machines, and ``kubectl apply --dry-run=client``
asks an API server for its schema): validity is the strict schema of each version, plus the properties
the deployment promises (native sidecar, restricted Pod Security Standard, probes, Service to the proxy).
"""

from __future__ import annotations

import copy
import functools
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from config.loader import parse_config
from proxy.inject.patch import InjectorSettings, sidecar_container
from tests.deploy.crd_schemas import SCHEMAS
from tests.deploy.kube import ROOT, VERSIONS, kubernetes_validate, kustomize, tool

KUSTOMIZATIONS = {
    "single": ROOT / "deploy/kubernetes/overlays/single",
    "shared": ROOT / "deploy/kubernetes/overlays/shared",
    "base": ROOT / "deploy/kubernetes/base",
    "injector": ROOT / "deploy/injector",
}
BUILT_IN = {"v1", "apps/v1", "policy/v1", "networking.k8s.io/v1", "admissionregistration.k8s.io/v1"}


@functools.cache
def rendered(name: str) -> tuple[dict[str, Any], ...]:
    return tuple(kustomize(KUSTOMIZATIONS[name]))


def one(name: str, kind: str, resource_name: str | None = None) -> dict[str, Any]:
    found = [r for r in rendered(name) if r["kind"] == kind
             and (resource_name is None or r["metadata"]["name"] == resource_name)]
    assert len(found) == 1, f"{name}: {len(found)} {kind} {resource_name or ''}"
    return copy.deepcopy(found[0])


def pod_spec(name: str) -> dict[str, Any]:
    return dict(one(name, "Deployment")["spec"]["template"]["spec"])


def sidecar(name: str) -> dict[str, Any]:
    found = [c for c in pod_spec(name).get("initContainers", []) if c["name"] == "scopegate"]
    assert len(found) == 1
    return dict(found[0])


def run_validator(paths: list[Path], version: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool("kubernetes-validate"), "--strict", "-k", version, *map(str, paths)],
                          capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize("version", VERSIONS)
def test_rendered_manifests_validate_strictly(version: str) -> None:
    """kubernetes-validate's strict validation (the library the command runs) of kubectl kustomize's output,
    the base, both overlays and the injector, against VERSION's schema: every built-in object passes."""
    for name in KUSTOMIZATIONS:
        for resource in rendered(name):
            if resource["apiVersion"] in BUILT_IN:
                assert kubernetes_validate.validate(resource, version, strict=True) == version
            else:  # checked by test_custom_resources_match_their_schemas
                with pytest.raises(kubernetes_validate.SchemaNotFoundError):
                    kubernetes_validate.validate(resource, version, strict=True)


@pytest.mark.parametrize("version", [VERSIONS[0], VERSIONS[-1]])
def test_kubernetes_validate_command_passes_the_rendered_manifests(version: str, tmp_path: Path) -> None:
    """The command itself, `kubernetes-validate --strict -k VERSION`, on the files kubectl kustomize writes, for the
    oldest and the newest version we claim: only the CRD kinds may lack a schema."""
    paths = []
    for name in KUSTOMIZATIONS:
        paths.append(tmp_path / f"{name}.yaml")
        paths[-1].write_text(yaml.safe_dump_all(rendered(name), sort_keys=False))
    done = run_validator(paths, version)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    for name, path in zip(KUSTOMIZATIONS, paths, strict=True):
        resources = rendered(name)
        mine = [line for line in lines if f" {path} " in f"{line} "]
        passed = [line for line in mine if line.startswith("INFO") and " passed for resource " in line]
        skipped = [line for line in mine if line.startswith("WARN")]
        assert len(passed) + len(skipped) == len(mine) == len(resources), (name, done.stdout)
        for line in skipped:
            assert any(f"kind {kind} with api version {api}" in line for api, kind in SCHEMAS), line
        assert len(passed) == sum(r["apiVersion"] in BUILT_IN for r in resources), name
        assert all(f"against version {version}" in line for line in passed)


def test_strict_validation_rejects_an_unknown_field(tmp_path: Path) -> None:
    """The negative control: a misspelt field in the sidecar fails, so the passes above mean something."""
    deployment = one("single", "Deployment")
    deployment["spec"]["template"]["spec"]["initContainers"][0]["restartPolicyy"] = "Always"
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(deployment))
    done = run_validator([path], VERSIONS[0])
    assert done.returncode != 0 and "restartPolicyy" in done.stdout


@pytest.mark.parametrize("name", ["single", "shared", "injector"])
def test_custom_resources_match_their_schemas(name: str) -> None:
    custom = [r for r in rendered(name) if r["apiVersion"] not in BUILT_IN]
    assert custom
    for resource in custom:
        schema = SCHEMAS[(resource["apiVersion"], resource["kind"])]
        jsonschema.validate(resource, schema)
        broken = copy.deepcopy(resource)
        broken["spec"]["typo"] = True
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(broken, schema)


RESTRICTED = {"runAsNonRoot": True, "readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False,
              "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}


@pytest.mark.parametrize("name", ["single", "shared", "injector"])
def test_every_container_meets_the_restricted_pod_security_standard(name: str) -> None:
    spec = pod_spec(name)
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["automountServiceAccountToken"] is False and not spec.get("hostNetwork")
    for container in [*spec.get("initContainers", []), *spec["containers"]]:
        security = container["securityContext"]
        for key, value in RESTRICTED.items():
            assert security[key] == value, (container["name"], key)
        assert security.get("runAsUser", spec["securityContext"].get("runAsUser", 1)) != 0
        assert container["resources"]["requests"] and container["resources"]["limits"], container["name"]


@pytest.mark.parametrize("name", ["single", "shared"])
def test_scopegate_is_a_native_sidecar_in_front_of_the_api(name: str) -> None:
    """An init container with restartPolicy Always; probes on the ops port; state on an emptyDir; the Service
    targets the proxy port, never the app's; a PDB; scrape annotations."""
    spec = pod_spec(name)
    gate = sidecar(name)
    assert gate["restartPolicy"] == "Always"
    assert not [c for c in spec["containers"] if c["name"] == "scopegate"]
    assert gate["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "scopegate-ops"}
    assert gate["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "scopegate-ops"}
    assert gate["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "scopegate-ops"}
    volumes = {v["name"]: v for v in spec["volumes"]}
    state = next(m for m in gate["volumeMounts"] if m["mountPath"] == "/var/lib/scopegate")
    assert "emptyDir" in volumes[state["name"]]
    app_ports = {p["containerPort"] for c in spec["containers"] for p in c.get("ports", [])}
    app_ports |= {p["name"] for c in spec["containers"] for p in c.get("ports", []) if "name" in p}
    service = one(name, "Service", "orders-api")
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= {"scopegate-proxy", "scopegate-core"}
    assert not {p["targetPort"] for p in service["spec"]["ports"]} & app_ports
    assert one(name, "PodDisruptionBudget")["spec"]["selector"] == one(name, "Deployment")["spec"]["selector"]
    annotations = one(name, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/port"] == "9090"
    monitor = one(name, "ServiceMonitor")
    metrics = one(name, "Service", "orders-api-metrics")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= metrics["metadata"]["labels"].items()
    assert [p["targetPort"] for p in metrics["spec"]["ports"]] == ["scopegate-ops"]
    assert one(name, "PrometheusRule")["spec"]["groups"][0]["name"] == "scopegate"


def test_the_hand_written_sidecar_is_the_one_the_injector_adds() -> None:
    """deploy/kubernetes/base and `scopegate inject` must not drift: same image user, security, probes, mounts."""
    by_hand = sidecar("single")
    injected = sidecar_container(image=by_hand["image"], proxy_port=8080, ops_port=9090, core_port=8081, upstream_port=8000,
                                 secret="scopegate", resources=by_hand["resources"], run_as_user=InjectorSettings().run_as_user, native=True)
    for key in ("image", "args", "restartPolicy", "securityContext", "resources", "volumeMounts"):
        assert by_hand[key] == injected[key], key
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert by_hand[probe]["httpGet"]["path"] == injected[probe]["httpGet"]["path"]
        assert {k: v for k, v in by_hand[probe].items() if k != "httpGet"} == \
               {k: v for k, v in injected[probe].items() if k != "httpGet"}
    assert by_hand["ports"] == injected["ports"]
    # The same Secret; optional for the injector, whose pods' configs may need none.
    assert by_hand["envFrom"] == [{"secretRef": {"name": "scopegate"}}]
    assert injected["envFrom"] == [{"secretRef": {"name": "scopegate", "optional": True}}]
    injected_env = {e["name"]: e["value"] for e in injected["env"]}
    hand_env = {e["name"]: e.get("value") for e in by_hand["env"]}
    assert injected_env.items() <= hand_env.items()


def config_text(name: str) -> str:
    return str(one(name, "ConfigMap")["data"]["scopegate.yaml"])


def test_single_overlay_is_one_replica_on_sqlite_in_the_emptydir() -> None:
    assert one("single", "Deployment")["spec"]["replicas"] == 1
    cfg = parse_config(config_text("single"), "single", {"SCOPEGATE_ORDERS_SERVICE_SECRET": "x" * 24})
    assert cfg.store == "sqlite:////var/lib/scopegate/state.db"
    assert cfg.listen.proxy == "0.0.0.0:8080" and cfg.upstream.url == "http://127.0.0.1:8000"


def test_shared_overlay_is_several_replicas_on_postgresql_with_secrets_from_the_environment() -> None:
    deployment = one("shared", "Deployment")
    assert deployment["spec"]["replicas"] >= 2
    assert one("shared", "PodDisruptionBudget")["spec"] == {
        "minAvailable": 2, "selector": deployment["spec"]["selector"]}
    # The Secret's keys are the sidecar's environment; the explicit env cannot shadow the DSN or the token.
    assert sidecar("shared")["envFrom"] == [{"secretRef": {"name": "scopegate"}}]
    assert not {"SCOPEGATE_DSN", "SCOPEGATE_ADMIN_TOKEN"} & {e["name"] for e in sidecar("shared")["env"]}
    text = config_text("shared")
    assert "${SCOPEGATE_DSN}" in text and "${SCOPEGATE_ADMIN_TOKEN}" in text
    cfg = parse_config(text, "shared", {"SCOPEGATE_DSN": "postgresql://scopegate@db:5432/scopegate",
                                        "SCOPEGATE_ADMIN_TOKEN": "a" * 32, "SCOPEGATE_ORDERS_SERVICE_SECRET": "x" * 24})
    assert cfg.store == "postgresql://scopegate@db:5432/scopegate" and cfg.admin_tokens == ["a" * 32]
    # No secret value is in the repository: the Secret is referenced, never shipped.
    assert not [r for r in rendered("shared") if r["kind"] == "Secret"]


def test_webhook_configuration() -> None:
    """Selectors, failurePolicy Ignore (its reasoning is in webhook.yaml), sideEffects None, timeout,
    reinvocation, v1 reviews; TLS wired through cert-manager to the files the injector reloads."""
    config = one("injector", "MutatingWebhookConfiguration")
    (hook,) = config["webhooks"]
    assert hook["failurePolicy"] == "Ignore" and hook["sideEffects"] == "None"
    assert hook["admissionReviewVersions"] == ["v1"] and hook["reinvocationPolicy"] == "IfNeeded"
    assert 1 <= hook["timeoutSeconds"] <= 10
    assert hook["namespaceSelector"]["matchExpressions"] and hook["objectSelector"]["matchExpressions"]
    assert hook["rules"] == [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
                              "resources": ["pods"], "scope": "Namespaced"}]
    service = hook["clientConfig"]["service"]
    assert service["path"] == "/mutate"
    assert one("injector", "Service", service["name"])["metadata"]["namespace"] == service["namespace"]
    namespace, certificate_name = config["metadata"]["annotations"]["cert-manager.io/inject-ca-from"].split("/")
    certificate = one("injector", "Certificate", certificate_name)
    assert certificate["metadata"]["namespace"] == namespace
    assert f"{service['name']}.{service['namespace']}.svc" in certificate["spec"]["dnsNames"]
    issuer = one("injector", "Issuer", certificate["spec"]["issuerRef"]["name"])
    assert one("injector", "Certificate", "scopegate-injector-ca")["spec"]["secretName"] == issuer["spec"]["ca"]["secretName"]
    deployment = one("injector", "Deployment")
    assert deployment["spec"]["replicas"] == 2
    assert one("injector", "PodDisruptionBudget")["spec"]["minAvailable"] == 1
    (volume,) = deployment["spec"]["template"]["spec"]["volumes"]
    assert volume["secret"]["secretName"] == certificate["spec"]["secretName"]
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[0] == "inject" and "--cert=/etc/scopegate/tls/tls.crt" in args
    # The injector never mutates its own pods.
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    (own,) = [e for e in hook["objectSelector"]["matchExpressions"] if e["key"] == "app.kubernetes.io/name"]
    assert own["operator"] == "NotIn" and labels["app.kubernetes.io/name"] in own["values"]
