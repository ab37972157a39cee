"""What strict, standards-following OAuth clients and resource servers expect of the authorization core (issue 10
items 1-4), through the real ``scopegate run`` process.

The discovery URL is built by Authlib's ``get_well_known_url`` (requests-oauth2client 1.8.0's
``oauth2_discovery_document_url`` appends the path before the suffix instead, which RFC 8414 §3.1 does not
describe). The client is ``requests-oauth2client`` (configured from that document, ``private_key_jwt`` with ``aud`` = the issuer as
draft-ietf-oauth-rfc7523bis and FAPI 2.0 ask, RFC 9207 ``iss`` checking on the authorization response); joserfc
verifies the tokens independently. Okta's own verifier keeps accepting the tokens (test_oauth_flows.py).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import authlib.deprecate  # noqa: F401  (it installs an 'always' filter on import; let it do so outside the block)
import httpx
import jwt
import pytest
from joserfc import jwt as jose_jwt
from joserfc.jwk import KeySet
from jwskate import Jwk, Jwt
from requests_oauth2client import ClientSecretBasic, OAuth2Client, PrivateKeyJwt
from requests_oauth2client.discovery import oidc_discovery_document_url

from tests.e2e.conftest import RunningScopegate
from tests.e2e.test_oauth_flows import PASSWORD, REDIRECT, WEB_SECRET, browser_sign_in
from tests.e2e.test_proxy_gate import decision_lines
from tests.security.attack_bench import public_jwk, rsa_key

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # Authlib announces its httpx2 move at import time
    from authlib.oauth2.rfc8414 import get_well_known_url

pytestmark = pytest.mark.e2e

SECRET = "svc-secret-0123456789"
CLIENT_KEY = Jwk.generate(alg="RS256", kid="jwt-svc-1", key_size=2048)
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def server(as_id: str, claims: str | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "id": as_id, "name": f"{as_id} API", "audiences": [f"https://api.example.com/{as_id}"],
        "scopes": [{"name": f"{as_id}:read", "default": True}],
        "policies": [{"name": "All", "priority": 1, "rules": [
            {"name": "Services", "priority": 1,
             "conditions": {"grantTypes": {"include": ["client_credentials"]}, "scopes": {"include": ["*"]}}},
            {"name": "People", "priority": 2,
             "conditions": {"grantTypes": {"include": ["authorization_code"]}, "scopes": {"include": ["*"]}}}]}],
    }
    if claims is not None:
        doc["accessTokenClaims"] = claims
    return doc


CONFIG: dict[str, Any] = {
    "upstream": {"url": "builtin:echo"},
    # The refusal tests fail a dozen authentications on purpose; the back-off (security.md §4.1) is not theirs.
    "core": {"clientAuthFailureLimit": 0, "clientAuthFailureSourceLimit": 0},
    "routes": [{"name": name, "path": f"/{name}", "scopes": {"anyOf": [f"{name}:read"]}}
               for name in ("orders", "legacy", "strict")],
    "authorizationServers": [server("orders"), server("legacy", "okta"), server("strict", "rfc9068")],
    "apps": [
        {"clientId": "svc", "clientSecret": SECRET, "name": "Service", "grantTypes": ["client_credentials"]},
        {"clientId": "jwt-svc", "name": "Signed service", "grantTypes": ["client_credentials"],
         "tokenEndpointAuthMethod": "private_key_jwt", "jwks": {"keys": [CLIENT_KEY.public_jwk().to_dict()]}},
        {"clientId": "web", "clientSecret": WEB_SECRET, "name": "Web", "redirectUris": [REDIRECT],
         "grantTypes": ["authorization_code"], "assignments": {"users": ["alice"]}},
    ],
    "users": [{"id": "alice", "login": "alice@example.com", "password": PASSWORD,
               "profile": {"firstName": "Alice", "email": "alice@example.com"}}],
}


@pytest.fixture(scope="module")
def gate(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningScopegate]:
    """One process for the module (each start costs a second or two)."""
    from tests.e2e.conftest import launch

    running = launch(tmp_path_factory.mktemp("interop"), CONFIG)
    try:
        yield running
    finally:
        running.stop()


def oauth2_discovery_document_url(issuer: str) -> str:
    """RFC 8414 §3.1: ``/.well-known/oauth-authorization-server`` inserted between the host and the path."""
    return str(get_well_known_url(issuer, external=True))


def discovered(gate: RunningScopegate, as_id: str, **kwargs: Any) -> OAuth2Client:
    """A client configured from the RFC 8414 document at the URL the library derives from the issuer.
    ``testing=True`` only lets it use the plain-http issuer of the test process."""
    issuer = gate.issuer(as_id)
    return OAuth2Client.from_discovery_endpoint(url=oauth2_discovery_document_url(issuer), issuer=issuer,
                                                testing=True, **kwargs)


def verified_claims(gate: RunningScopegate, as_id: str, token: str) -> dict[str, Any]:
    jwks = httpx.get(f"{gate.issuer(as_id)}/v1/keys").json()
    return dict(jose_jwt.decode(token, KeySet.import_key_set(jwks), algorithms=["RS256"]).claims)


# ------------------------------------------------------------------------------------------ 1. discovery


def test_discovery_rfc8414_well_known_inserted_between_host_and_issuer_path(gate: RunningScopegate) -> None:
    """RFC 8414 §3.1: the library asks ``/.well-known/oauth-authorization-server/oauth2/orders``; that answers
    the same document as Okta's suffix form, and the client it configures gets a token. The OIDC document
    answers at both its OIDC Discovery (suffix) and its RFC 8414 form."""
    issuer = gate.issuer("orders")
    url = oauth2_discovery_document_url(issuer)
    assert url == f"{gate.core}/.well-known/oauth-authorization-server/oauth2/orders"
    inserted = httpx.get(url)
    assert inserted.status_code == 200, inserted.text
    assert inserted.headers["content-type"].startswith("application/json")
    assert inserted.json() == httpx.get(f"{issuer}/.well-known/oauth-authorization-server").json()
    assert inserted.json()["issuer"] == issuer

    oidc_suffix = httpx.get(oidc_discovery_document_url(issuer))
    oidc_inserted = httpx.get(f"{gate.core}/.well-known/openid-configuration/oauth2/orders")
    assert oidc_suffix.status_code == oidc_inserted.status_code == 200
    assert oidc_suffix.json() == oidc_inserted.json() and oidc_inserted.json()["issuer"] == issuer

    client = discovered(gate, "orders", auth=ClientSecretBasic("svc", SECRET))
    token = client.client_credentials(scope="orders:read")
    assert verified_claims(gate, "orders", str(token.access_token))["cid"] == "svc"


@pytest.mark.parametrize(("path", "shape"), [
    ("/.well-known/oauth-authorization-server/oauth2/nope", "okta"),   # unknown AS: spec §2.1's E0000007
    ("/.well-known/oauth-authorization-server", "oauth"),
    ("/.well-known/oauth-authorization-server/oauth2/orders/extra", "oauth"),
    ("/oauth2/orders/v1/nothing", "oauth"),
    ("/oauth2/orders/.well-known/nothing", "oauth"),
    ("/nothing", "oauth"),
    ("/api/v1/nothing", "okta"),
])
def test_discovery_unknown_paths_answer_json_404(gate: RunningScopegate, path: str, shape: str) -> None:
    """Every 404 of the core is JSON: Okta's error object under /api/v1 (and for an unknown AS), RFC 6749's
    ``{"error", "error_description"}`` elsewhere; never Starlette's text/plain 'Not Found'."""
    response = httpx.get(f"{gate.core}{path}")
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/json"), response.text
    body = response.json()
    if shape == "okta":
        assert body["errorCode"] == "E0000007"
    else:
        assert body["error"] == "not_found" and body["error_description"]


def test_discovery_wrong_method_answers_json_405(gate: RunningScopegate) -> None:
    response = httpx.delete(f"{gate.core}/.well-known/oauth-authorization-server/oauth2/orders")
    assert response.status_code == 405 and response.headers["allow"]
    assert response.json()["error"] == "invalid_request"


# ------------------------------------------------------------------------- 2. private_key_jwt audience


def signed_client(gate: RunningScopegate, as_id: str, aud: str | None) -> OAuth2Client:
    return discovered(gate, as_id, auth=PrivateKeyJwt("jwt-svc", CLIENT_KEY, aud=aud))


@pytest.mark.parametrize("aud", ["issuer", "endpoint"])
def test_private_key_jwt_audience_issuer_or_endpoint_at_token_introspect_revoke(gate: RunningScopegate,
                                                                                aud: str) -> None:
    """requests-oauth2client signs ``aud`` = the issuer (openid-client and oauth4webapi's choice), or by default
    the URL of the endpoint called: both authenticate at /token, /introspect and /revoke."""
    client = signed_client(gate, "orders", gate.issuer("orders") if aud == "issuer" else None)
    token = client.client_credentials(scope="orders:read")
    assert client.introspect_token(token.access_token)["active"] is True
    assert client.revoke_access_token(token.access_token) is True
    assert client.introspect_token(token.access_token)["active"] is False


def assertion(aud: Any, *, jti: str | None = None, lifetime: int = 60) -> str:
    now = int(time.time())
    claims = {"iss": "jwt-svc", "sub": "jwt-svc", "aud": aud, "iat": now, "exp": now + lifetime,
              "jti": jti or uuid.uuid4().hex}
    return str(Jwt.sign(claims, key=CLIENT_KEY, alg="RS256"))


def post(gate: RunningScopegate, endpoint: str, client_assertion: str, **form: str) -> httpx.Response:
    data = {"client_assertion_type": JWT_BEARER, "client_assertion": client_assertion, **form}
    return httpx.post(f"{gate.issuer('orders')}/v1/{endpoint}", data=data)


def test_private_key_jwt_audience_foreign_values_refused(gate: RunningScopegate) -> None:
    """Anything but this AS's issuer, the endpoint called or (RFC 7523 §3) this AS's token endpoint is
    ``invalid_client``: another AS's issuer or endpoint, the org-level family, a prefix, and an array with one
    foreign value among good ones. An array of acceptable values alone passes."""
    issuer, other = gate.issuer("orders"), gate.issuer("legacy")
    grant = {"grant_type": "client_credentials", "scope": "orders:read"}
    refused = [other, f"{other}/v1/token", f"{gate.core}/oauth2/v1/token", f"{issuer}/", gate.core,
               f"{issuer}/v1/introspect",  # another endpoint of the same AS, at /token
               [issuer, "https://evil.example.com"], [f"{issuer}/v1/token", other], [], 7]
    for aud in refused:
        response = post(gate, "token", assertion(aud), **grant)
        assert response.status_code == 401, (aud, response.text)
        assert response.json()["error"] == "invalid_client"
    accepted = post(gate, "token", assertion([issuer, f"{issuer}/v1/token"]), **grant)
    assert accepted.status_code == 200, accepted.text
    token = accepted.json()["access_token"]
    for endpoint in ("introspect", "revoke"):
        wrong = post(gate, endpoint, assertion(f"{other}/v1/{endpoint}"), token=token)
        assert wrong.status_code == 401, (endpoint, wrong.text)
        right = post(gate, endpoint, assertion(f"{issuer}/v1/token"), token=token)
        assert right.status_code == 200, (endpoint, right.text)


def test_private_key_jwt_audience_issuer_assertion_is_still_single_use(gate: RunningScopegate) -> None:
    """An assertion naming the issuer works at every endpoint of the AS, so its ``jti`` is spent once across
    all of them: played again at /token or at /introspect it is refused."""
    issuer = gate.issuer("orders")
    once = assertion(issuer, jti="jti-" + uuid.uuid4().hex)
    first = post(gate, "token", once, grant_type="client_credentials", scope="orders:read")
    assert first.status_code == 200, first.text
    for endpoint, form in (("token", {"grant_type": "client_credentials"}), ("introspect", {"token": "x"})):
        again = post(gate, endpoint, once, **form)
        assert again.status_code == 401, again.text
        assert again.json()["error_description"] == "The client_assertion token has already been used."


# ---------------------------------------------------------------------------------------- 3. scope claim


@pytest.mark.parametrize(("as_id", "expected"), [
    ("orders", {"scp": ["orders:read"], "scope": "orders:read"}),  # default: both
    ("legacy", {"scp": ["orders:read"]}),                           # accessTokenClaims: okta
    ("strict", {"scope": "orders:read"}),                           # accessTokenClaims: rfc9068
])
def test_scope_claim_per_access_token_claims_setting_and_the_proxy_reads_each(gate: RunningScopegate, as_id: str,
                                                                               expected: dict[str, Any]) -> None:
    """RFC 9068 §2.2.3 ``scope`` (a space-separated string), Okta's ``scp`` (an array), or both; the proxy
    lets each through to its route."""
    expected = {k: v.replace("orders", as_id) if isinstance(v, str) else [as_id + ":read"]
                for k, v in expected.items()}
    client = discovered(gate, as_id, auth=ClientSecretBasic("svc", SECRET))
    token = str(client.client_credentials(scope=f"{as_id}:read").access_token)
    claims = verified_claims(gate, as_id, token)
    assert {k: claims[k] for k in ("scp", "scope") if k in claims} == expected
    assert client.introspect_token(token)["scope"] == f"{as_id}:read"  # read from whichever claim is there
    response = httpx.get(f"{gate.proxy}/{as_id}/1", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text
    metadata = httpx.get(oauth2_discovery_document_url(gate.issuer(as_id))).json()
    assert set(expected) <= set(metadata["claims_supported"])


ISSUER_PATH = "/oauth2/remote"
REMOTE_AUDIENCE = "https://api.example.com/remote"


class StaticIssuer:
    """A remote issuer serving only metadata and keys, so that the test can sign tokens scopegate's core never
    mints: ``scope`` and ``scp`` that disagree."""

    def __init__(self) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                documents = {f"{ISSUER_PATH}/.well-known/oauth-authorization-server":
                             {"issuer": outer.issuer, "jwks_uri": f"{outer.issuer}/v1/keys"},
                             f"{ISSUER_PATH}/v1/keys": {"keys": [public_jwk("interop-remote", 2048)]}}
                document = documents.get(self.path)
                body = json.dumps(document).encode()
                self.send_response(200 if document is not None else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.issuer = f"http://127.0.0.1:{self.server.server_address[1]}{ISSUER_PATH}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def token(self, **scopes: Any) -> str:
        now = int(time.time())
        claims = {"ver": 1, "jti": f"AT.{uuid.uuid4().hex}", "iss": self.issuer, "aud": REMOTE_AUDIENCE, "iat": now,
                  "exp": now + 300, "cid": "svc", "client_id": "svc", "sub": "svc", **scopes}
        return jwt.encode(claims, rsa_key("interop-remote", 2048), algorithm="RS256",
                          headers={"kid": "interop-remote", "typ": "at+jwt"})

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_scope_claim_disagreeing_with_scp_proxy_prefers_scope_and_logs_bad_claims(
        scopegate: Callable[..., RunningScopegate]) -> None:
    """Both claims present and different: ``scope`` decides (allowed when it names the route's scope, refused
    with insufficient_scope when only ``scp`` does), and the allowed request's decision line says
    ``bad_claims``. Agreeing claims, or either one alone, are plain ``ok``."""
    issuer = StaticIssuer()
    try:
        gate = scopegate({
            "listen": {"core": "off"},
            "upstream": {"url": "builtin:echo"},
            "routes": [{"name": "feed", "path": "/remote/feed", "scopes": {"anyOf": ["feed:read"]}}],
            "authorizationServers": [{"id": "remote", "name": "Remote",
                                      "remote": {"issuer": issuer.issuer, "audience": REMOTE_AUDIENCE}}],
        })

        def get(token: str) -> httpx.Response:
            return httpx.get(f"{gate.proxy}/remote/feed", headers={"Authorization": f"Bearer {token}"})

        cases: list[tuple[dict[str, Any], int, tuple[str, str]]] = [
            ({"scope": "feed:read other", "scp": ["other"]}, 200, ("allow", "bad_claims")),
            ({"scope": "other", "scp": ["feed:read"]}, 403, ("deny", "insufficient_scope")),
            ({"scope": "other feed:read", "scp": ["feed:read", "other"]}, 200, ("allow", "ok")),
            ({"scope": "feed:read"}, 200, ("allow", "ok")),
            ({"scp": ["feed:read"]}, 200, ("allow", "ok")),
        ]
        for done, (scopes, status, (verdict, reason)) in enumerate(cases, start=1):
            response = get(issuer.token(**scopes))
            assert response.status_code == status, (scopes, response.text)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and len(decision_lines(gate)) < done:  # the log line follows
                time.sleep(0.05)
            last = decision_lines(gate)[-1]
            assert (last["decision"], last["reason"]) == (verdict, reason), (scopes, last)
        assert "carries scope and scp claims that disagree" in gate.output()
    finally:
        issuer.stop()


# --------------------------------------------------------------------------------- 4. metadata, RFC 9207

RFC8414_REQUIRED = ("issuer", "authorization_endpoint", "token_endpoint", "response_types_supported")
RFC8414_RECOMMENDED = ("scopes_supported",)
OIDC_REQUIRED = ("issuer", "authorization_endpoint", "token_endpoint", "jwks_uri", "response_types_supported",
                 "subject_types_supported", "id_token_signing_alg_values_supported")
OIDC_RECOMMENDED = ("userinfo_endpoint", "scopes_supported", "claims_supported")
NOT_OFFERED = {"registration_endpoint": "OIDC Discovery RECOMMENDED, but scopegate has no dynamic registration"}
SIGNING_ALGS = {"token_endpoint_auth_methods_supported": "token_endpoint_auth_signing_alg_values_supported",
                "introspection_endpoint_auth_methods_supported":
                    "introspection_endpoint_auth_signing_alg_values_supported",
                "revocation_endpoint_auth_methods_supported": "revocation_endpoint_auth_signing_alg_values_supported"}


@pytest.mark.parametrize("kind", ["oauth-authorization-server", "openid-configuration"])
def test_metadata_required_and_recommended_members(gate: RunningScopegate, kind: str) -> None:
    """RFC 8414 §2 and OIDC Discovery 1.0 §3, member by member. With ``private_key_jwt`` listed for an
    endpoint, its ``*_auth_signing_alg_values_supported`` MUST be present, without ``none``."""
    doc = httpx.get(f"{gate.core}/.well-known/{kind}/oauth2/orders").json()
    issuer = gate.issuer("orders")
    required = RFC8414_REQUIRED + (OIDC_REQUIRED if kind == "openid-configuration" else ())
    recommended = RFC8414_RECOMMENDED + (OIDC_RECOMMENDED if kind == "openid-configuration" else ())
    for member in (*required, *recommended):
        assert doc.get(member), member
    for member in NOT_OFFERED:
        assert member not in doc
    assert doc["issuer"] == issuer
    for member, value in doc.items():
        if member.endswith("_endpoint") or member == "jwks_uri":
            assert value.startswith(f"{issuer}/v1/"), (member, value)
    for methods, algs in SIGNING_ALGS.items():
        assert "private_key_jwt" in doc[methods]
        assert doc[algs] and "none" not in doc[algs] and "RS256" in doc[algs], algs
    assert doc["authorization_response_iss_parameter_supported"] is True
    assert set(doc["code_challenge_methods_supported"]) == {"S256"}
    if kind == "openid-configuration":
        assert "RS256" in doc["id_token_signing_alg_values_supported"]
        assert doc["subject_types_supported"] == ["public"]


@pytest.mark.parametrize("as_id", ["orders", "strict"])
def test_metadata_authorization_response_carries_iss_rfc9207(gate: RunningScopegate, as_id: str) -> None:
    """requests-oauth2client learns ``authorization_response_iss_parameter_supported`` from the metadata and
    then requires ``iss`` = the issuer on the callback (RFC 9207 §2.4); the code then buys a token, which
    /userinfo accepts (with ``accessTokenClaims: rfc9068`` too, where ``openid`` is only in ``scope``). The
    error redirect carries ``iss`` too."""
    issuer = gate.issuer(as_id)
    client = discovered(gate, as_id, auth=ClientSecretBasic("web", WEB_SECRET), redirect_uri=REDIRECT)
    assert client.authorization_response_iss_parameter_supported
    request = client.authorization_request(scope=f"openid {as_id}:read")
    location = browser_sign_in(gate.core, str(request.uri))
    assert parse_qs(urlsplit(location).query)["iss"] == [issuer]
    response = request.validate_callback(location)
    token = client.authorization_code(response)
    assert verified_claims(gate, as_id, str(token.access_token))["uid"] == "alice"
    userinfo = httpx.get(f"{issuer}/v1/userinfo", headers={"Authorization": f"Bearer {token.access_token}"})
    assert userinfo.status_code == 200 and userinfo.json()["sub"] == "alice", userinfo.text

    error = httpx.get(str(request.uri).replace("response_mode=query", "") + "&response_mode=form_post")
    assert error.status_code == 302, error.text
    query = parse_qs(urlsplit(error.headers["location"]).query)
    assert query["error"] and query["iss"] == [issuer] and query["state"] == [request.state]
