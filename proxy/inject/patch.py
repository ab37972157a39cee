"""The mutation: which pods get the sidecar, what the sidecar is, and the JSONPatch that adds it.

A pure function of the pod and the injector's settings, so the same input always gives the same patch.
It only ever *adds*: one container (a native sidecar in ``initContainers`` by default) and its volumes.
It rewrites nothing of the app: its containers, probes, ports and init containers stay byte for byte.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

PREFIX = "scopegate.io/"
INJECT = PREFIX + "inject"
CONFIG = PREFIX + "config"
UPSTREAM_PORT = PREFIX + "upstream-port"
IMAGE = PREFIX + "image"
RESOURCES = PREFIX + "resources"
NATIVE_SIDECAR = PREFIX + "native-sidecar"
PROXY_PORT = PREFIX + "proxy-port"
OPS_PORT = PREFIX + "ops-port"
CORE_PORT = PREFIX + "core-port"
SECRET = PREFIX + "secret"
ANNOTATIONS = (INJECT, CONFIG, SECRET, UPSTREAM_PORT, IMAGE, RESOURCES, NATIVE_SIDECAR, PROXY_PORT, OPS_PORT, CORE_PORT)

SIDECAR = "scopegate"
"""The sidecar's container name: how a second admission (reinvocation, a re-applied pod) sees it is there."""
PROXY_PORT_NAME = "scopegate-proxy"
"""Services target this named port: a pod started without the sidecar has no such port, so no Service
sends it traffic (the reasoning behind ``failurePolicy: Ignore``, deploy/injector/webhook.yaml)."""
OPS_PORT_NAME = "scopegate-ops"
CORE_PORT_NAME = "scopegate-core"
CONFIG_VOLUME, STATE_VOLUME, TMP_VOLUME = "scopegate-config", "scopegate-state", "scopegate-tmp"
CONFIG_DIR = "/etc/scopegate/config"
"""Below the image's /etc/scopegate, so the demo config the image ships stays visible."""
STATE_DIR = "/var/lib/scopegate"
"""The image's state directory (its WORKDIR), an emptyDir here: the SQLite store of one replica."""
CONFIG_KEY = "scopegate.yaml"

_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
# An image reference: registry/path:tag@digest, no whitespace or shell characters (Kubernetes checks
# little more than "no leading/trailing whitespace"; a stricter check gives a clearer answer early).
_IMAGE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-/:@+]*$")
# A Kubernetes resource quantity (apimachinery's resource.Quantity grammar).
_QUANTITY = re.compile(r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+|Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?$")
_RESOURCE_NAME = re.compile(r"^([a-z0-9.\-]+/)?[a-zA-Z0-9]([-a-zA-Z0-9_.]*[a-zA-Z0-9])?$")


class InjectionRefused(Exception):
    """The pod asked for the sidecar, but it cannot be added as asked: the admission is denied (fail closed:
    the pod wanted its API behind the gate, and starting it without the gate would expose it)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class InjectorSettings:
    """What the injector puts in a sidecar unless the pod's annotations say otherwise."""

    image: str = "scopegate:0.1.0"
    config_map: str = "scopegate"
    secret: str = "scopegate"
    """A Secret whose keys become the sidecar's environment (SCOPEGATE_DSN=..., client secrets), for the
    config's ${...} references; optional, so a config that needs none starts without it."""
    proxy_port: int = 8080
    ops_port: int = 9090
    core_port: int = 8081
    """The co-located core's port, when the sidecar's config has one (``listen.core`` not ``off``)."""
    run_as_user: int = 10001
    """The image's numeric user (the restricted Pod Security Standard wants runAsNonRoot to be checkable)."""
    resources: Mapping[str, Mapping[str, str]] = field(default_factory=lambda: {
        "requests": {"cpu": "50m", "memory": "64Mi"},
        "limits": {"cpu": "1", "memory": "256Mi"},
    })


def wants_injection(pod: Mapping[str, Any]) -> bool:
    """Only an explicit ``scopegate.io/inject: "true"``; anything else (absent, "false", garbage) is a no."""
    return str(annotations_of(pod).get(INJECT, "")).strip().lower() == "true"


def annotations_of(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    metadata = pod.get("metadata")
    annotations = metadata.get("annotations") if isinstance(metadata, Mapping) else None
    return annotations if isinstance(annotations, Mapping) else {}


def is_injected(pod: Mapping[str, Any]) -> bool:
    """A container or init container named ``scopegate`` is there already (a reinvocation, or by hand)."""
    spec = pod.get("spec")
    if not isinstance(spec, Mapping):
        return False
    return any(isinstance(c, Mapping) and c.get("name") == SIDECAR
               for key in ("containers", "initContainers") for c in _list(spec.get(key)))


def build_patch(pod: Mapping[str, Any], settings: InjectorSettings) -> list[dict[str, Any]]:
    """The RFC 6902 operations that add the sidecar, or InjectionRefused with the reason a person can act on."""
    spec = pod.get("spec")
    if not isinstance(spec, Mapping):
        raise InjectionRefused("the pod has no spec")
    containers = spec.get("containers")
    if not isinstance(containers, list) or not containers or not all(isinstance(c, Mapping) for c in containers):
        raise InjectionRefused("the pod's spec.containers must be a non-empty list of containers")
    init_containers = spec.get("initContainers")
    if init_containers is not None and not (isinstance(init_containers, list)
                                            and all(isinstance(c, Mapping) for c in init_containers)):
        raise InjectionRefused("the pod's spec.initContainers must be a list of containers")
    volumes = spec.get("volumes")
    if volumes is not None and not (isinstance(volumes, list) and all(isinstance(v, Mapping) for v in volumes)):
        raise InjectionRefused("the pod's spec.volumes must be a list of volumes")
    if spec.get("hostNetwork") is True:
        # The sidecar would listen on the node's own ports (clashing with every other such pod on the node),
        # and the app's loopback port would be the node's loopback: the gate cannot be the only way in.
        raise InjectionRefused("scopegate.io/inject is not supported on a pod with hostNetwork: true: the sidecar "
                               "would listen on the node's ports and the app's loopback port would be the node's. "
                               "Remove hostNetwork or the annotation")

    notes = annotations_of(pod)
    app_containers = [*containers, *(init_containers or [])]
    proxy_port = _port(notes, PROXY_PORT, settings.proxy_port)
    ops_port = _port(notes, OPS_PORT, settings.ops_port)
    core_port = _port(notes, CORE_PORT, settings.core_port)
    upstream_port = _upstream_port(notes, containers)
    _check_ports(app_containers, {PROXY_PORT: proxy_port, OPS_PORT: ops_port, CORE_PORT: core_port}, upstream_port)
    image = _image(notes, settings.image)
    config_map = _name(notes, CONFIG, settings.config_map, "ConfigMap")
    secret = _name(notes, SECRET, settings.secret, "Secret")
    resources = _resources(notes, settings.resources)
    native = _flag(notes, NATIVE_SIDECAR, default=True)
    taken = {v.get("name") for v in volumes or []}
    for name in (CONFIG_VOLUME, STATE_VOLUME, TMP_VOLUME):
        if name in taken:
            raise InjectionRefused(f"the pod already has a volume named {name!r}, which the sidecar needs")

    sidecar = sidecar_container(image=image, proxy_port=proxy_port, ops_port=ops_port, core_port=core_port,
                                upstream_port=upstream_port, secret=secret,
                                resources=resources, run_as_user=settings.run_as_user, native=native)
    new_volumes = [
        {"name": CONFIG_VOLUME, "configMap": {"name": config_map}},
        {"name": STATE_VOLUME, "emptyDir": {"sizeLimit": "256Mi"}},
        {"name": TMP_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}},
    ]
    ops: list[dict[str, Any]] = []
    # Native: appended after the app's own init containers: the gate is inbound only, so nothing in the init
    # phase needs it, and the kubelet still starts it (startup probe passed) before any app container.
    target = "initContainers" if native else "containers"
    existing = init_containers if native else containers
    if existing is None:
        ops.append({"op": "add", "path": f"/spec/{target}", "value": [sidecar]})
    else:
        ops.append({"op": "add", "path": f"/spec/{target}/-", "value": sidecar})
    if volumes is None:
        ops.append({"op": "add", "path": "/spec/volumes", "value": new_volumes})
    else:
        ops.extend({"op": "add", "path": "/spec/volumes/-", "value": v} for v in new_volumes)
    return ops


def sidecar_container(*, image: str, proxy_port: int, ops_port: int, core_port: int, upstream_port: int, secret: str,
                      resources: Mapping[str, Mapping[str, str]], run_as_user: int, native: bool) -> dict[str, Any]:
    """The sidecar, restricted-PSS compliant; the same container deploy/kubernetes/base writes by hand."""
    container: dict[str, Any] = {
        "name": SIDECAR,
        "image": image,
        "args": ["run", "--config", f"{CONFIG_DIR}/{CONFIG_KEY}"],
        "env": [
            {"name": "SCOPEGATE_PROXY_LISTEN", "value": f"0.0.0.0:{proxy_port}"},
            {"name": "SCOPEGATE_CORE_LISTEN", "value": f"0.0.0.0:{core_port}"},
            {"name": "SCOPEGATE_OPS_LISTEN", "value": f"0.0.0.0:{ops_port}"},
            # The app is reached on the pod's loopback: it can bind 127.0.0.1 and be reachable only through us.
            {"name": "SCOPEGATE_UPSTREAM", "value": f"http://127.0.0.1:{upstream_port}"},
        ],
        # The Secret's keys are environment variables for the config's ${...}; explicit env above wins.
        "envFrom": [{"secretRef": {"name": secret, "optional": True}}],
        "ports": [
            {"name": PROXY_PORT_NAME, "containerPort": proxy_port, "protocol": "TCP"},
            {"name": CORE_PORT_NAME, "containerPort": core_port, "protocol": "TCP"},
            {"name": OPS_PORT_NAME, "containerPort": ops_port, "protocol": "TCP"},
        ],
        "startupProbe": _probe("/healthz", ops_port, period=1, failures=60),
        "livenessProbe": _probe("/healthz", ops_port, period=10, failures=3),
        "readinessProbe": _probe("/readyz", ops_port, period=5, failures=2),
        "resources": {k: dict(v) for k, v in resources.items()},
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": run_as_user,
            "runAsGroup": run_as_user,
            "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [
            {"name": CONFIG_VOLUME, "mountPath": CONFIG_DIR, "readOnly": True},
            {"name": STATE_VOLUME, "mountPath": STATE_DIR},
            {"name": TMP_VOLUME, "mountPath": "/tmp"},  # noqa: S108 - the pod's own emptyDir, not a shared /tmp
        ],
    }
    if native:
        # Kubernetes >= 1.29: an init container that keeps running starts before the app and stops after it.
        container["restartPolicy"] = "Always"
    return container


def _probe(path: str, port: int, *, period: int, failures: int) -> dict[str, Any]:
    return {"httpGet": {"path": path, "port": port}, "periodSeconds": period, "timeoutSeconds": 2,
            "failureThreshold": failures}


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _text(notes: Mapping[str, Any], key: str) -> str | None:
    value = notes.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InjectionRefused(f"{key} must be a string, got {type(value).__name__}")
    return value.strip()


def _port(notes: Mapping[str, Any], key: str, default: int) -> int:
    value = _text(notes, key)
    if value is None:
        return default
    if not value.isdigit() or not 1 <= int(value) <= 65535:
        raise InjectionRefused(f"{key}: {value!r} is not a port number (1-65535)")
    return int(value)


def _upstream_port(notes: Mapping[str, Any], containers: list[Mapping[str, Any]]) -> int:
    if _text(notes, UPSTREAM_PORT) is not None:
        return _port(notes, UPSTREAM_PORT, 0)
    # Default: the first port the first container declares, which is how most single-container apps read.
    ports = _list(containers[0].get("ports"))
    if ports and isinstance(ports[0], Mapping) and isinstance(ports[0].get("containerPort"), int):
        return int(ports[0]["containerPort"])
    raise InjectionRefused(f"set {UPSTREAM_PORT} to the app's port: the first container declares no containerPort")


def _check_ports(containers: list[Mapping[str, Any]], ours: dict[str, int], upstream: int) -> None:
    for key, port in ours.items():
        if port == upstream:
            raise InjectionRefused(f"{key} {port} is the app's port ({UPSTREAM_PORT}): choose another with {key}")
    if len(set(ours.values())) != len(ours):
        raise InjectionRefused(f"{', '.join(ours)} must be three different ports")
    for container in containers:
        for declared in _list(container.get("ports")):
            if not isinstance(declared, Mapping):
                continue
            for key, port in ours.items():
                if declared.get("containerPort") == port:
                    raise InjectionRefused(f"container {container.get('name')!r} already uses port {port}: "
                                           f"choose another for the sidecar with {key}")
            if declared.get("name") in (PROXY_PORT_NAME, OPS_PORT_NAME, CORE_PORT_NAME):
                raise InjectionRefused(f"container {container.get('name')!r} already has a port named "
                                       f"{declared.get('name')!r}, which the sidecar needs")


def _image(notes: Mapping[str, Any], default: str) -> str:
    value = _text(notes, IMAGE)
    if value is None:
        return default
    if not value or len(value) > 512 or not _IMAGE.match(value):
        raise InjectionRefused(f"{IMAGE}: {value!r} is not an image reference")
    return value


def _name(notes: Mapping[str, Any], key: str, default: str, kind: str) -> str:
    value = _text(notes, key)
    if value is None:
        return default
    if len(value) > 253 or not _DNS_SUBDOMAIN.match(value):
        raise InjectionRefused(f"{key}: {value!r} is not a {kind} name (a DNS subdomain)")
    return value


def _resources(notes: Mapping[str, Any], default: Mapping[str, Mapping[str, str]]) -> Mapping[str, Mapping[str, str]]:
    value = _text(notes, RESOURCES)
    if value is None:
        return default
    example = '{"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}}'
    try:
        parsed = json.loads(value)
    except ValueError:
        raise InjectionRefused(f"{RESOURCES} must be JSON such as {example}") from None
    if not isinstance(parsed, dict) or not parsed or set(parsed) - {"requests", "limits"}:
        raise InjectionRefused(f"{RESOURCES} must be an object with 'requests' and/or 'limits', such as {example}")
    for part, quantities in parsed.items():
        if not isinstance(quantities, dict):
            raise InjectionRefused(f"{RESOURCES}: {part} must be an object of quantities, such as {example}")
        for name, quantity in quantities.items():
            if not _RESOURCE_NAME.match(name) or not isinstance(quantity, str) or not _QUANTITY.match(quantity):
                raise InjectionRefused(f"{RESOURCES}: {part}.{name}: {quantity!r} is not a resource quantity "
                                       "(as a string, such as \"100m\" or \"128Mi\")")
    return parsed


def _flag(notes: Mapping[str, Any], key: str, *, default: bool) -> bool:
    value = _text(notes, key)
    if value is None:
        return default
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise InjectionRefused(f"{key} must be \"true\" or \"false\", got {value!r}")


__all__ = ["ANNOTATIONS", "InjectionRefused", "InjectorSettings", "build_patch", "is_injected",
           "sidecar_container", "wants_injection"]
