"""The sidecar injector answers real AdmissionReview (admission.k8s.io/v1) documents.

Every patch it returns is decoded from base64, applied with a real JSONPatch library (``jsonpatch``), and
the patched pod is validated strictly against the Kubernetes schema of every version we claim.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import subprocess
import sys
import uuid
from typing import Any

import httpx
import jsonpatch
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from starlette.requests import Request

from proxy.inject import server
from proxy.inject.patch import SIDECAR, InjectorSettings
from proxy.inject.server import MAX_BODY, InjectorMetrics, build_webhook_app
from tests.deploy.kube import OLDEST, VERSIONS, validate

SETTINGS = InjectorSettings(image="registry.example/scopegate:0.1.0")


def app_pod(annotations: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    """A pod as the API server sends it in request.object: an app with its own probes."""
    pod: dict[str, Any] = {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "orders-7d4b9", "namespace": "shop", "labels": {"app": "orders"}},
        "spec": {
            "containers": [{
                "name": "orders", "image": "registry.example/orders:1.4",
                "ports": [{"name": "http", "containerPort": 8000, "protocol": "TCP"}],
                "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}, "periodSeconds": 5},
                "livenessProbe": {"tcpSocket": {"port": 8000}},
                "resources": {"requests": {"cpu": "100m"}},
            }],
            "restartPolicy": "Always",
            **spec,
        },
    }
    if annotations is not None:
        pod["metadata"]["annotations"] = annotations
    return pod


def admission_review(pod: Any, *, operation: str = "CREATE", kind: str = "Pod") -> dict[str, Any]:
    return {
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": str(uuid.uuid4()),
            "kind": {"group": "", "version": "v1", "kind": kind},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": kind},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "name": "orders-7d4b9", "namespace": "shop", "operation": operation,
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": pod, "oldObject": None, "dryRun": False,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        },
    }


class Webhook:
    def __init__(self, settings: InjectorSettings = SETTINGS) -> None:
        self.registry = CollectorRegistry()
        self.app = build_webhook_app(settings, InjectorMetrics(self.registry))

    async def post(self, body: bytes | dict[str, Any]) -> httpx.Response:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        transport = httpx.ASGITransport(app=self.app)
        async with httpx.AsyncClient(transport=transport, base_url="https://injector.test") as client:
            return await client.post("/mutate", content=content, headers={"content-type": "application/json"})

    async def admit(self, review: dict[str, Any]) -> dict[str, Any]:
        r = await self.post(review)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["apiVersion"] == "admission.k8s.io/v1" and body["kind"] == "AdmissionReview"
        assert body["response"]["uid"] == review["request"]["uid"]
        return dict(body["response"])

    def count(self, outcome: str) -> float:
        value = self.registry.get_sample_value("scopegate_injector_admissions_total", {"outcome": outcome})
        return value or 0.0


def patched(pod: dict[str, Any], response: dict[str, Any]) -> dict[str, Any]:
    """Apply the response's patch with a real RFC 6902 implementation and validate the result."""
    assert response["allowed"] is True
    if "patch" not in response:
        result = copy.deepcopy(pod)
    else:
        assert response["patchType"] == "JSONPatch"
        operations = json.loads(base64.b64decode(response["patch"], validate=True))
        result = jsonpatch.JsonPatch(operations).apply(pod)
    for version in VERSIONS:
        validate(result, version)
    return dict(result)


def sidecar_of(pod: dict[str, Any], where: str = "initContainers") -> dict[str, Any]:
    found = [c for c in pod["spec"].get(where, []) if c["name"] == SIDECAR]
    assert len(found) == 1, pod["spec"]
    return dict(found[0])


def without_sidecar(pod: dict[str, Any]) -> dict[str, Any]:
    """The pod with exactly what the injector adds taken out again."""
    pod = copy.deepcopy(pod)
    spec = pod["spec"]
    for key in ("containers", "initContainers"):
        if key in spec:
            spec[key] = [c for c in spec[key] if c["name"] != SIDECAR]
    spec["volumes"] = [v for v in spec.get("volumes", []) if not v["name"].startswith("scopegate-")]
    for key in ("initContainers", "volumes"):
        if spec.get(key) == []:
            del spec[key]
    return pod


async def test_annotated_pod_gets_a_native_sidecar_and_nothing_else_changes() -> None:
    """inject: "true" adds one init container with restartPolicy Always (KEP-753), restricted-PSS compliant."""
    hook = Webhook()
    pod = app_pod({"scopegate.io/inject": "true"})
    result = patched(pod, await hook.admit(admission_review(pod)))
    sidecar = sidecar_of(result)
    assert sidecar["restartPolicy"] == "Always"
    assert sidecar["image"] == "registry.example/scopegate:0.1.0"
    security = sidecar["securityContext"]
    assert security["runAsNonRoot"] is True and security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False and security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert {"name": "SCOPEGATE_UPSTREAM", "value": "http://127.0.0.1:8000"} in sidecar["env"]
    assert sidecar["startupProbe"]["httpGet"] == {"path": "/healthz", "port": 9090}
    assert sidecar["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": 9090}
    assert [p["name"] for p in sidecar["ports"]] == ["scopegate-proxy", "scopegate-core", "scopegate-ops"]
    # The app, its probes and ports: byte for byte what it was.
    assert without_sidecar(result) == pod
    assert result["spec"]["containers"] == pod["spec"]["containers"]
    assert hook.count("injected") == 1


async def test_pod_without_the_annotation_is_allowed_unchanged() -> None:
    """No annotation, inject: "false" or a garbage value: allowed, no patch, never blocked."""
    hook = Webhook()
    for notes in (None, {}, {"scopegate.io/inject": "false"}, {"scopegate.io/inject": "yes please"},
                        {"scopegate.io/image": "x"}):
        pod = app_pod(notes)
        response = await hook.admit(admission_review(pod))
        assert response == {"uid": response["uid"], "allowed": True}
        assert patched(pod, response) == pod
    assert hook.count("skipped") == 5


async def test_already_injected_pod_is_left_alone_and_reinvocation_is_idempotent() -> None:
    """Applying the webhook to its own output (reinvocationPolicy: IfNeeded) patches nothing."""
    hook = Webhook()
    pod = app_pod({"scopegate.io/inject": "true"})
    once = patched(pod, await hook.admit(admission_review(pod)))
    response = await hook.admit(admission_review(once))
    assert "patch" not in response and response["allowed"] is True
    assert hook.count("already_injected") == 1
    # A sidecar added by hand (deploy/kubernetes/base) counts too.
    by_hand = app_pod({"scopegate.io/inject": "true"})
    by_hand["spec"]["containers"].append({"name": "scopegate", "image": "scopegate:0.1.0"})
    assert "patch" not in await hook.admit(admission_review(by_hand))


async def test_pod_with_its_own_init_containers_keeps_them_first_and_unchanged() -> None:
    """The sidecar is appended after the app's init containers (a migration does not wait on the gate)."""
    hook = Webhook()
    init = [{"name": "migrate", "image": "registry.example/orders:1.4", "command": ["orders", "migrate"]},
            {"name": "istio-like", "image": "registry.example/mesh:1", "restartPolicy": "Always"}]
    pod = app_pod({"scopegate.io/inject": "true"}, initContainers=copy.deepcopy(init),
                  volumes=[{"name": "data", "emptyDir": {}}])
    result = patched(pod, await hook.admit(admission_review(pod)))
    assert [c["name"] for c in result["spec"]["initContainers"]] == ["migrate", "istio-like", "scopegate"]
    assert result["spec"]["initContainers"][:2] == init
    assert [v["name"] for v in result["spec"]["volumes"]] == ["data", "scopegate-config", "scopegate-state",
                                                             "scopegate-tmp"]
    assert without_sidecar(result) == pod


async def test_native_sidecar_false_injects_a_plain_container_for_old_clusters() -> None:
    """scopegate.io/native-sidecar: "false" (clusters before 1.29): a regular container, no restartPolicy."""
    hook = Webhook()
    pod = app_pod({"scopegate.io/inject": "true", "scopegate.io/native-sidecar": "false"})
    result = patched(pod, await hook.admit(admission_review(pod)))
    sidecar = sidecar_of(result, "containers")
    assert "restartPolicy" not in sidecar and "initContainers" not in result["spec"]
    assert result["spec"]["containers"][0] == pod["spec"]["containers"][0]


async def test_annotations_configure_the_sidecar() -> None:
    """config, upstream-port, image, resources, proxy-port and ops-port each land where they should."""
    hook = Webhook()
    pod = app_pod({
        "scopegate.io/inject": "true", "scopegate.io/config": "orders-gate", "scopegate.io/secret": "orders-gate-env",
        "scopegate.io/upstream-port": "8000", "scopegate.io/image": "registry.example/scopegate@sha256:" + "a" * 64,
        "scopegate.io/resources": '{"requests": {"cpu": "20m", "memory": "48Mi"}, "limits": {"memory": "128Mi"}}',
        "scopegate.io/proxy-port": "18080", "scopegate.io/ops-port": "19090",
    })
    result = patched(pod, await hook.admit(admission_review(pod)))
    sidecar = sidecar_of(result)
    assert sidecar["image"].endswith("a" * 64)
    assert sidecar["resources"] == {"requests": {"cpu": "20m", "memory": "48Mi"}, "limits": {"memory": "128Mi"}}
    assert sidecar["ports"][0]["containerPort"] == 18080 and sidecar["livenessProbe"]["httpGet"]["port"] == 19090
    assert {"name": "SCOPEGATE_PROXY_LISTEN", "value": "0.0.0.0:18080"} in sidecar["env"]
    volumes = {v["name"]: v for v in result["spec"]["volumes"]}
    assert volumes["scopegate-config"]["configMap"] == {"name": "orders-gate"}
    assert sidecar["envFrom"] == [{"secretRef": {"name": "orders-gate-env", "optional": True}}]


async def test_a_port_clash_with_the_app_is_refused_with_the_annotation_to_set() -> None:
    """An app already on 8080 would collide with the proxy in the shared network namespace: refused, clearly."""
    hook = Webhook()
    pod = app_pod({"scopegate.io/inject": "true"})
    pod["spec"]["containers"][0]["ports"].append({"containerPort": 8080})
    response = await hook.admit(admission_review(pod))
    assert response["allowed"] is False and response["status"]["code"] == 400
    assert "already uses port 8080" in response["status"]["message"]
    assert "scopegate.io/proxy-port" in response["status"]["message"]
    assert "patch" not in response


@pytest.mark.parametrize(("annotation", "value", "expected"), [
    ("scopegate.io/upstream-port", "http", "is not a port number"),
    ("scopegate.io/upstream-port", "70000", "is not a port number"),
    ("scopegate.io/image", "evil image; rm -rf /", "is not an image reference"),
    ("scopegate.io/config", "Not_A_Name", "is not a ConfigMap name"),
    ("scopegate.io/secret", "-bad-", "is not a Secret name"),
    ("scopegate.io/resources", "{cpu: 1}", "must be JSON"),
    ("scopegate.io/resources", '{"requests": {"cpu": 1}}', "is not a resource quantity"),
    ("scopegate.io/resources", '{"limits": {"memory": "lots"}}', "is not a resource quantity"),
    ("scopegate.io/native-sidecar", "maybe", 'must be "true" or "false"'),
    ("scopegate.io/ops-port", "8000", "is the app's port"),
    ("scopegate.io/core-port", "8080", "must be three different ports"),
])
async def test_an_invalid_annotation_refuses_the_pod_that_asked(annotation: str, value: str, expected: str) -> None:
    """Fail closed: the pod asked for the gate; starting it without would expose the API. The message says why."""
    hook = Webhook()
    response = await hook.admit(admission_review(app_pod({"scopegate.io/inject": "true", annotation: value})))
    assert response["allowed"] is False and "patch" not in response
    assert expected in response["status"]["message"], response["status"]["message"]
    assert response["status"]["message"].startswith("scopegate sidecar injection refused: ")
    assert hook.count("refused") == 1


async def test_host_network_pod() -> None:
    """hostNetwork: the sidecar would bind the node's ports: refused when asked for, untouched otherwise."""
    hook = Webhook()
    asked = app_pod({"scopegate.io/inject": "true"}, hostNetwork=True)
    response = await hook.admit(admission_review(asked))
    assert response["allowed"] is False and "hostNetwork" in response["status"]["message"]
    plain = app_pod(None, hostNetwork=True)
    response = await hook.admit(admission_review(plain))
    assert patched(plain, response) == plain


async def test_a_pod_without_a_declared_port_needs_the_upstream_port_annotation() -> None:
    hook = Webhook()
    pod = app_pod({"scopegate.io/inject": "true"})
    del pod["spec"]["containers"][0]["ports"]
    response = await hook.admit(admission_review(pod))
    assert response["allowed"] is False and "set scopegate.io/upstream-port" in response["status"]["message"]
    pod["metadata"]["annotations"]["scopegate.io/upstream-port"] = "8000"
    assert sidecar_of(patched(pod, await hook.admit(admission_review(pod))))


async def test_other_operations_and_kinds_pass_through() -> None:
    """An UPDATE, a DELETE or another kind (a misconfigured rule) is allowed unchanged, never blocked."""
    hook = Webhook()
    pod = app_pod({"scopegate.io/inject": "true"})
    for review in (admission_review(pod, operation="UPDATE"), admission_review(None, operation="DELETE"),
                   admission_review({"apiVersion": "v1", "kind": "Service"}, kind="Service")):
        assert await hook.admit(review) == {"uid": review["request"]["uid"], "allowed": True}


GARBAGE: list[tuple[bytes, str]] = [
    (b"", "not JSON"),
    (b"\xff\xfe\x00garbage", "not JSON"),
    (b"<AdmissionReview/>", "not JSON"),
    (b"[1, 2, 3]", "not a JSON object"),
    (b'"AdmissionReview"', "not a JSON object"),
    (b"[" * 100_000 + b"]" * 100_000, "not JSON"),
    (json.dumps({"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview",
                 "request": {"uid": "u-1"}}).encode(), "expected apiVersion admission.k8s.io/v1"),
    (json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}).encode(), "request must be"),
    (json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": []}).encode(),
     "request must be"),
    (json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                 "request": {"uid": 7, "operation": "CREATE"}}).encode(), "request.uid must be"),
    (json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": "u-2", "operation": "CREATE", "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "object": "a pod"}}).encode(), "request.object must be the pod"),
]


@pytest.mark.parametrize(("body", "expected"), GARBAGE)
async def test_malformed_review_gets_allowed_false_and_400(body: bytes, expected: str) -> None:
    """Garbage in: HTTP 400 with an AdmissionReview saying allowed: false and what was wrong; no crash."""
    hook = Webhook()
    r = await hook.post(body)
    assert r.status_code == 400
    answer = r.json()
    assert answer["kind"] == "AdmissionReview" and answer["response"]["allowed"] is False
    assert answer["response"]["status"]["code"] == 400
    assert expected in answer["response"]["status"]["message"]
    assert hook.count("malformed") == 1


async def test_an_oversized_review_is_refused_without_being_read_whole() -> None:
    hook = Webhook()
    r = await hook.post(b"{" + b" " * MAX_BODY + b"}")
    assert r.status_code == 413 and r.json()["response"]["allowed"] is False


async def test_an_annotated_pod_with_a_broken_spec_is_refused_not_crashed() -> None:
    hook = Webhook()
    for spec in ({"containers": "orders"}, {"containers": []}, {"containers": [{}], "initContainers": {}},
                 {"containers": [{"name": "a"}], "volumes": "data"}):
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"annotations": {"scopegate.io/inject": "true"}},
               "spec": spec}
        response = await hook.admit(admission_review(pod))
        assert response["allowed"] is False and response["status"]["message"]
    response = await hook.admit(admission_review({"metadata": {"annotations": {"scopegate.io/inject": "true"}}}))
    assert response["allowed"] is False and "no spec" in response["status"]["message"]


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                     max_leaves=20)


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(metadata=_json, spec=_json, annotations=st.dictionaries(st.sampled_from([
    "scopegate.io/inject", "scopegate.io/upstream-port", "scopegate.io/resources", "scopegate.io/native-sidecar",
    "scopegate.io/image", "scopegate.io/config"]), _json | st.just("true"), max_size=6))
async def test_odd_pods_never_crash_the_webhook(metadata: Any, spec: Any, annotations: dict[str, Any]) -> None:
    """Any JSON in the pod's places: an AdmissionReview answer, never a 5xx; an allowed patch applies cleanly."""
    hook = Webhook()
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": metadata if not isinstance(metadata, dict) else {**metadata, "annotations": annotations},
           "spec": spec}
    review = admission_review(pod)
    r = await hook.post(review)
    assert r.status_code == 200, r.text
    response = r.json()["response"]
    assert isinstance(response["allowed"], bool)
    if response["allowed"] and "patch" in response:
        jsonpatch.JsonPatch(json.loads(base64.b64decode(response["patch"]))).apply(pod)


def test_claimed_versions_start_at_native_sidecars() -> None:
    assert VERSIONS[0] == OLDEST and len(VERSIONS) >= 9, VERSIONS


def test_metrics_are_bounded() -> None:
    """Every outcome label exists from the start (no label comes from the request)."""
    hook = Webhook()
    text = generate_latest(hook.registry).decode()
    for outcome in ("injected", "skipped", "already_injected", "refused", "malformed", "error"):
        assert f'scopegate_injector_admissions_total{{outcome="{outcome}"}} 0.0' in text


async def test_a_review_whose_body_never_arrives_is_answered_not_awaited(monkeypatch: pytest.MonkeyPatch) -> None:
    """A sender that stalls mid-body gets 408 and allowed: false once the body deadline passes: never a hang."""
    monkeypatch.setattr(server, "BODY_TIMEOUT", 0.2)
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": b'{"apiVersion": "admission', "more_body": True}
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    scope = {"type": "http", "method": "POST", "path": "/mutate", "headers": [], "query_string": b""}
    status, body, outcome = await asyncio.wait_for(server._answer(Request(scope, receive), SETTINGS), timeout=5)
    assert (status, outcome) == (408, "malformed")
    assert body["response"]["allowed"] is False and "did not arrive" in body["response"]["status"]["message"]


def test_the_injector_imports_nothing_of_the_gate() -> None:
    """DESIGN §8: proxy/inject shares only the ops listener; the webhook process loads no gate or core module."""
    code = ("import sys, proxy.inject.server; "
            "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in ('proxy', 'authz', 'config'))))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert set(done.stdout.split()) == {"proxy", "proxy.ops", "proxy.inject", "proxy.inject.patch",
                                        "proxy.inject.review", "proxy.inject.server", "proxy.inject.tls"}
