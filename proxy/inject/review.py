"""The ``AdmissionReview`` (admission.k8s.io/v1) envelope: read a request, answer it.

Every answer is an AdmissionReview. A request that is not one (bad JSON, wrong apiVersion or kind, no
``uid``, no pod) is answered ``allowed: false`` with HTTP 400 and a message that says what was wrong; the
API server never sends such a thing, so whoever did gets a clear answer rather than a crash or a hang.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from proxy.inject.patch import InjectionRefused, InjectorSettings, build_patch, is_injected, wants_injection

API_VERSION = "admission.k8s.io/v1"

# Outcomes: the only values of the admissions metric's label (bounded, DESIGN §7).
INJECTED = "injected"
SKIPPED = "skipped"
"""Not asked for (no annotation), or not a pod creation: allowed unchanged."""
ALREADY_INJECTED = "already_injected"
REFUSED = "refused"
"""Asked for, but the annotations or the pod make it impossible: denied with the reason."""
MALFORMED = "malformed"
OUTCOMES = (INJECTED, SKIPPED, ALREADY_INJECTED, REFUSED, MALFORMED)


class MalformedReview(Exception):
    def __init__(self, message: str, uid: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.uid = uid


@dataclass(frozen=True)
class Answer:
    status_code: int
    body: dict[str, Any]
    outcome: str


def review(raw: bytes, settings: InjectorSettings) -> Answer:
    """The answer to one HTTP body; never raises."""
    try:
        request = parse(raw)
    except MalformedReview as exc:
        return Answer(400, response(exc.uid, allowed=False, code=400, message=exc.message), MALFORMED)
    uid = request["uid"]
    if not _is_pod_creation(request):
        return Answer(200, response(uid, allowed=True), SKIPPED)
    pod = request.get("object")
    if not isinstance(pod, Mapping):
        return Answer(400, response(uid, allowed=False, code=400,
                                    message="malformed AdmissionReview: request.object must be the pod"), MALFORMED)
    if not wants_injection(pod):
        return Answer(200, response(uid, allowed=True), SKIPPED)
    if is_injected(pod):
        return Answer(200, response(uid, allowed=True), ALREADY_INJECTED)
    try:
        patch = build_patch(pod, settings)
    except InjectionRefused as exc:
        return Answer(200, response(uid, allowed=False, code=400,
                                    message=f"scopegate sidecar injection refused: {exc.message}"), REFUSED)
    return Answer(200, response(uid, allowed=True, patch=patch), INJECTED)


def parse(raw: bytes) -> dict[str, Any]:
    """The review's ``request``, checked as far as the injector relies on it."""
    try:
        document = json.loads(raw)
    except (ValueError, RecursionError):
        raise MalformedReview("malformed AdmissionReview: the body is not JSON") from None
    if not isinstance(document, dict):
        raise MalformedReview("malformed AdmissionReview: the body is not a JSON object")
    request = document.get("request")
    uid = request.get("uid") if isinstance(request, dict) else None
    uid = uid if isinstance(uid, str) and len(uid) <= 128 else ""
    if document.get("apiVersion") != API_VERSION or document.get("kind") != "AdmissionReview":
        raise MalformedReview(f"malformed AdmissionReview: expected apiVersion {API_VERSION} and kind AdmissionReview, "
                              f"got {_short(document.get('apiVersion'))} and {_short(document.get('kind'))}", uid)
    if not isinstance(request, dict):
        raise MalformedReview("malformed AdmissionReview: request must be an object", uid)
    if not uid:
        raise MalformedReview("malformed AdmissionReview: request.uid must be a non-empty string", uid)
    return request


def _is_pod_creation(request: Mapping[str, Any]) -> bool:
    kind = request.get("kind")
    return (request.get("operation") == "CREATE" and isinstance(kind, Mapping)
            and kind.get("group", "") == "" and kind.get("kind") == "Pod" and request.get("subResource") in (None, ""))


def response(uid: str, *, allowed: bool, patch: list[dict[str, Any]] | None = None, code: int | None = None,
             message: str | None = None) -> dict[str, Any]:
    answer: dict[str, Any] = {"uid": uid, "allowed": allowed}
    if patch:
        answer["patchType"] = "JSONPatch"
        answer["patch"] = base64.b64encode(json.dumps(patch, separators=(",", ":")).encode()).decode()
    if code is not None or message is not None:
        answer["status"] = {"code": code or 400, "message": message or ""}
    return {"apiVersion": API_VERSION, "kind": "AdmissionReview", "response": answer}


def _short(value: object) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


__all__ = ["OUTCOMES", "Answer", "MalformedReview", "parse", "response", "review"]
