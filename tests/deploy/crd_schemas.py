"""Strict JSON schemas for the custom resources deploy/ uses, which kubernetes-validate has no schema for.

kubernetes-validate knows the built-in kinds only; it skips a ServiceMonitor, a PrometheusRule or a
cert-manager Certificate with a warning. These schemas cover the fields our manifests use, with the names,
types and enums of the CRDs they come from (prometheus-operator monitoring.coreos.com/v1, cert-manager
cert-manager.io/v1), and refuse any other field, so a typo fails here as it would on the API server.
The rules inside a PrometheusRule are further checked by promtool (tests/deploy/test_ops.py).
"""

from __future__ import annotations

from typing import Any

_STR: dict[str, Any] = {"type": "string", "minLength": 1}
_DURATION: dict[str, Any] = {"type": "string", "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?"
                             r"(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"}
_GO_DURATION: dict[str, Any] = {"type": "string", "pattern": r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$"}
_LABELS: dict[str, Any] = {"type": "object", "additionalProperties": {"type": "string"}}


def _object(properties: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": list(required), "additionalProperties": False}


_METADATA = _object({"name": _STR, "namespace": _STR, "labels": _LABELS, "annotations": _LABELS}, ("name",))


def _resource(api_version: str, kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    return _object({"apiVersion": {"const": api_version}, "kind": {"const": kind}, "metadata": _METADATA,
                    "spec": spec}, ("apiVersion", "kind", "metadata", "spec"))


_LABEL_SELECTOR = _object({
    "matchLabels": _LABELS,
    "matchExpressions": {"type": "array", "items": _object({
        "key": _STR, "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
        "values": {"type": "array", "items": {"type": "string"}}}, ("key", "operator"))},
})
_RELABEL = _object({
    "sourceLabels": {"type": "array", "items": {"type": "string", "pattern": r"^[a-zA-Z_][a-zA-Z0-9_]*$"}},
    "separator": {"type": "string"}, "targetLabel": {"type": "string"}, "regex": {"type": "string"},
    "modulus": {"type": "integer"}, "replacement": {"type": "string"},
    "action": {"enum": ["replace", "Replace", "keep", "Keep", "drop", "Drop", "hashmod", "HashMod", "labelmap",
                        "LabelMap", "labeldrop", "LabelDrop", "labelkeep", "LabelKeep", "lowercase", "Lowercase",
                        "uppercase", "Uppercase", "keepequal", "KeepEqual", "dropequal", "DropEqual"]},
})
SERVICE_MONITOR = _resource("monitoring.coreos.com/v1", "ServiceMonitor", _object({
    "selector": _LABEL_SELECTOR,
    "namespaceSelector": _object({"any": {"type": "boolean"}, "matchNames": {"type": "array", "items": _STR}}),
    "jobLabel": _STR,
    "endpoints": {"type": "array", "minItems": 1, "items": _object({
        "port": _STR, "targetPort": {"type": ["string", "integer"]}, "path": {"type": "string", "pattern": "^/"},
        "scheme": {"enum": ["http", "https"]}, "interval": _DURATION, "scrapeTimeout": _DURATION,
        "honorLabels": {"type": "boolean"}, "relabelings": {"type": "array", "items": _RELABEL},
        "metricRelabelings": {"type": "array", "items": _RELABEL},
    })},
}, ("selector", "endpoints")))

_RULE = {"oneOf": [
    _object({"alert": _STR, "expr": {"type": ["string", "integer"]}, "for": _DURATION,
             "keep_firing_for": _DURATION, "labels": _LABELS, "annotations": _LABELS}, ("alert", "expr")),
    _object({"record": _STR, "expr": {"type": ["string", "integer"]}, "labels": _LABELS}, ("record", "expr")),
]}
PROMETHEUS_RULE = _resource("monitoring.coreos.com/v1", "PrometheusRule", _object({
    "groups": {"type": "array", "minItems": 1, "items": _object({
        "name": _STR, "interval": _DURATION, "limit": {"type": "integer"}, "partial_response_strategy": {"type": "string"},
        "rules": {"type": "array", "items": _RULE},
    }, ("name",))},
}))

_ISSUER_REF = _object({"name": _STR, "kind": {"enum": ["Issuer", "ClusterIssuer"]}, "group": {"const": "cert-manager.io"}},
                      ("name",))
_USAGES = ["signing", "digital signature", "content commitment", "key encipherment", "key agreement",
           "data encipherment", "cert sign", "crl sign", "encipher only", "decipher only", "any", "server auth",
           "client auth", "code signing", "email protection", "s/mime", "ipsec end system", "ipsec tunnel",
           "ipsec user", "timestamping", "ocsp signing", "microsoft sgc", "netscape sgc"]
CERTIFICATE = _resource("cert-manager.io/v1", "Certificate", _object({
    "secretName": _STR, "commonName": {"type": "string", "maxLength": 64}, "dnsNames": {"type": "array", "items": _STR},
    "ipAddresses": {"type": "array", "items": _STR}, "duration": _GO_DURATION, "renewBefore": _GO_DURATION,
    "isCA": {"type": "boolean"}, "usages": {"type": "array", "items": {"enum": _USAGES}},
    "privateKey": _object({"algorithm": {"enum": ["RSA", "ECDSA", "Ed25519"]}, "size": {"type": "integer"},
                           "encoding": {"enum": ["PKCS1", "PKCS8"]}, "rotationPolicy": {"enum": ["Never", "Always"]}}),
    "issuerRef": _ISSUER_REF,
}, ("secretName", "issuerRef")))
ISSUER = _resource("cert-manager.io/v1", "Issuer", {
    "type": "object", "minProperties": 1, "maxProperties": 1, "additionalProperties": False,
    "properties": {"selfSigned": _object({"crlDistributionPoints": {"type": "array", "items": _STR}}),
                   "ca": _object({"secretName": _STR, "crlDistributionPoints": {"type": "array", "items": _STR}},
                                 ("secretName",))},
})

SCHEMAS: dict[tuple[str, str], dict[str, Any]] = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): SERVICE_MONITOR,
    ("monitoring.coreos.com/v1", "PrometheusRule"): PROMETHEUS_RULE,
    ("cert-manager.io/v1", "Certificate"): CERTIFICATE,
    ("cert-manager.io/v1", "Issuer"): ISSUER,
}
