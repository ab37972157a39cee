"""A load driver that keeps a ledger of what replica A acknowledged (issue 12 item 1).

Several worker threads talk to A's core at once: they mint tokens (client_credentials on two authorization
servers, password with a refresh token), refresh, revoke access and refresh tokens, and make management
changes (deactivate and activate a user or an app, change a rule); two more keep replica B's proxy busy
with the tokens A minted (200 or 401, never a 5xx). A is killed with SIGKILL while they run,
so some requests get no answer: those are recorded as *unacknowledged* and nothing is asserted about them,
except that the store holds no half of one. What A answered 200 (or 204) is *acknowledged* and goes into
the ledger with two ticks of one logical clock: ``sent`` (taken before the request left) and ``done``
(taken after the answer arrived). A token is covered by a change when it was acknowledged before the change
was sent (``token.done < change.sent``), so there is no doubt about the order.

The objects the driver changes are created through the management API (origin ``api``), not declared in
the config file: a restart of A reconciles the file into the store and would otherwise undo them, by design
(DESIGN §6). The rule it changes belongs to an authorization server created through the API for the same
reason; the proxy only knows the file's servers, so that server's tokens are checked by introspection only.
"""

from __future__ import annotations

import base64
import itertools
import json
import random
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

PASSWORD = "ledger-Password-0123"
SERVICE_SECRET = "ledger-service-secret-0123456789"
WEB_SECRET = "ledger-web-secret-0123456789abcd"
INTROSPECTOR = "introspector"
INTROSPECTOR_SECRET = "ledger-introspector-secret-01234"
ADMIN_TIMEOUT = 10.0
REQUEST_TIMEOUT = 5.0
TLS = ssl.create_default_context()
"""One TLS context for every client made here (the listeners are plain HTTP): httpx builds a new one, loading
the CA bundle, for each client otherwise, which cost the test process more CPU than its requests."""


def client(**kwargs: Any) -> httpx.Client:
    return httpx.Client(verify=TLS, **kwargs)

PROXIED_AS = "ledger"
"""The config file's authorization server: its tokens are checked at the proxy too."""
PROXIED_RESOURCE = "https://api.example.com/ledger"
API_RESOURCE = "https://api.example.com/ledger2"
SERVICES = ("ledger-svc-0", "ledger-svc-1", "ledger-svc-2")
WEB = "ledger-web"


def config() -> dict[str, Any]:
    """The config file of both replicas: one server, its route, and the app that introspects."""
    rule = {"name": "All", "priority": 1,
            "conditions": {"grantTypes": {"include": ["client_credentials", "password"]}, "scopes": {"include": ["*"]}},
            "actions": {"token": {"accessTokenLifetimeMinutes": 60, "refreshTokenWindowMinutes": 60}}}
    return {
        "upstream": {"url": "builtin:echo"},
        "routes": [{"name": "ledger", "path": "/ledger", "scopes": {"anyOf": ["ledger:read"]}}],
        "authorizationServers": [{
            "id": PROXIED_AS, "name": "Ledger API", "audiences": [PROXIED_RESOURCE],
            "scopes": [{"name": "ledger:read"}],
            "policies": [{"name": "Everyone", "priority": 1, "conditions": {"clients": {"include": ["ALL_CLIENTS"]}},
                          "rules": [rule]}],
        }],
        "apps": [{"clientId": INTROSPECTOR, "clientSecret": INTROSPECTOR_SECRET, "name": "Resource server"}],
        "revocation": {"maxStaleness": "5s", "pollInterval": "100ms"},
    }


def jwt_claims(token: str) -> dict[str, Any]:
    """The payload of a compact JWS, unverified (the driver only needs its jti)."""
    payload = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


@dataclass
class Minted:
    """An access token A answered 200 for."""

    jti: str
    access: str
    as_id: str
    client_id: str
    user_id: str | None
    refresh: str | None
    sent: int
    done: int


@dataclass
class Revoked:
    """A ``/revoke`` A answered 200 for."""

    kind: str
    """``access_token`` or ``refresh_token``."""
    token: str
    as_id: str
    client_id: str
    sent: int
    done: int


@dataclass
class Changed:
    """A management change, acknowledged (``done`` set) or not (no answer: it may or may not have committed)."""

    op: str
    """``user.deactivate``, ``user.activate``, ``app.deactivate``, ``app.activate`` or ``rule``."""
    target: str
    value: Any
    """The state the change sets: a status, or the rule's access token lifetime."""
    sent: int
    done: int | None = None


@dataclass
class Ledger:
    minted: list[Minted] = field(default_factory=list)
    revoked: list[Revoked] = field(default_factory=list)
    changes: list[Changed] = field(default_factory=list)
    unacknowledged: int = 0
    """Requests that got no answer (A was killed, or not yet back)."""
    unavailable: int = 0
    """Requests answered 503 with Retry-After (a store deadline): not acknowledged either."""
    lock: threading.Lock = field(default_factory=threading.Lock)
    _clock: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def tick(self) -> int:
        with self.lock:
            return next(self._clock)


@dataclass
class Model:
    """What the driver believes is stored, for choosing requests that can succeed (not for asserting)."""

    users: dict[str, str] = field(default_factory=dict)
    """login → user id."""
    user_active: dict[str, bool] = field(default_factory=dict)
    app_active: dict[str, bool] = field(default_factory=dict)
    api_server: str = ""
    policy_id: str = ""
    rule_id: str = ""
    rule_lifetime: int = 60


class LedgerDriver:
    """Drives A's core from ``workers`` threads between ``start()`` and ``stop()``; see the module docstring."""

    def __init__(self, core: str, admin_token: str, seed: int = 0, proxy: str | None = None) -> None:
        self.core = core
        self.proxy = proxy
        """Replica B's proxy, which a worker keeps busy with the ledger's tokens (None: no proxy traffic)."""
        self.admin_headers = {"Authorization": f"SSWS {admin_token}"}
        self.ledger = Ledger()
        self.model = Model()
        self.random = random.Random(seed)
        self.refreshable: list[Minted] = []
        """Password-grant results whose refresh token the driver may still use or revoke."""
        self.answers: Counter[str] = Counter()
        """Answers by request kind and status, for the figures and for diagnosing a run that minted nothing."""
        self.errors: list[str] = []
        """Answers no request of the driver should get (a 500, a change refused): the test asserts none."""
        self._acks = self._acks_at_start = 0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._pool_lock = threading.Lock()

    # --- setup (before any kill: every call must succeed) ---------------------------------------------------

    def admin(self, method: str, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
        with client(timeout=ADMIN_TIMEOUT) as http:
            return http.request(method, f"{self.core}{path}", headers=self.admin_headers, json=body)

    def _must(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        response = self.admin(method, path, body)
        assert response.status_code < 300, (method, path, response.status_code, response.text)
        return dict(response.json()) if response.content else {}

    def setup(self, users: int = 6) -> None:
        """Create the users, apps and the API-made authorization server the workers use."""
        for i in range(users):
            login = f"ledger-user-{i}@example.com"
            body = self._must("POST", "/api/v1/users", {"profile": {"login": login, "email": login, "firstName": f"U{i}"},
                                                         "credentials": {"password": {"value": PASSWORD}}})
            self.model.users[login] = str(body["id"])
            self.model.user_active[str(body["id"])] = True
        for client_id in SERVICES:
            self._must("POST", "/api/v1/apps", {
                "name": "oidc_client", "label": client_id, "signOnMode": "OPENID_CONNECT",
                "credentials": {"oauthClient": {"client_id": client_id, "client_secret": SERVICE_SECRET,
                                                "token_endpoint_auth_method": "client_secret_basic"}},
                "settings": {"oauthClient": {"grant_types": ["client_credentials"], "application_type": "service"}}})
            self.model.app_active[client_id] = True
        self._must("POST", "/api/v1/apps", {
            "name": "oidc_client", "label": WEB, "signOnMode": "OPENID_CONNECT",
            "credentials": {"oauthClient": {"client_id": WEB, "client_secret": WEB_SECRET,
                                            "token_endpoint_auth_method": "client_secret_basic"}},
            "settings": {"oauthClient": {"grant_types": ["password", "refresh_token"], "application_type": "web"}}})
        self.model.app_active[WEB] = True
        for user_id in self.model.users.values():
            self._must("POST", f"/api/v1/apps/{WEB}/users", {"id": user_id})
        server = self._must("POST", "/api/v1/authorizationServers", {"name": "Ledger API 2", "audiences": [API_RESOURCE]})
        self.model.api_server = str(server["id"])
        base = f"/api/v1/authorizationServers/{self.model.api_server}"
        self._must("POST", f"{base}/scopes", {"name": "ledger2:read"})
        policy = self._must("POST", f"{base}/policies", {"name": "Services", "priority": 1,
                                                        "conditions": {"clients": {"include": ["ALL_CLIENTS"]}}})
        self.model.policy_id = str(policy["id"])
        rule = self._must("POST", f"{base}/policies/{self.model.policy_id}/rules", self._rule_body(60))
        self.model.rule_id = str(rule["id"])

    @staticmethod
    def _rule_body(lifetime: int) -> dict[str, Any]:
        return {"type": "RESOURCE_ACCESS", "name": "Services", "priority": 1,
                "conditions": {"people": {"groups": {"include": ["EVERYONE"]}},
                               "grantTypes": {"include": ["client_credentials", "password"]},
                               "scopes": {"include": ["*"]}},
                "actions": {"token": {"accessTokenLifetimeMinutes": lifetime, "refreshTokenLifetimeMinutes": 0,
                                      "refreshTokenWindowMinutes": 10080}}}

    @property
    def rule_path(self) -> str:
        return (f"/api/v1/authorizationServers/{self.model.api_server}/policies/{self.model.policy_id}"
                f"/rules/{self.model.rule_id}")

    def resync(self) -> None:
        """After a restart: read back what the unacknowledged changes may have left (the model only steers)."""
        for user_id in self.model.user_active:
            self.model.user_active[user_id] = self._must("GET", f"/api/v1/users/{user_id}")["status"] == "ACTIVE"
        for client_id in self.model.app_active:
            self.model.app_active[client_id] = self._must("GET", f"/api/v1/apps/{client_id}")["status"] == "ACTIVE"
        rule = self._must("GET", self.rule_path)
        self.model.rule_lifetime = int(rule["actions"]["token"]["accessTokenLifetimeMinutes"])

    # --- load ---------------------------------------------------------------------------------------------

    def start(self) -> None:
        self._stop.clear()
        with self.ledger.lock:
            self._acks_at_start = self._acks
        jobs: list[Callable[[httpx.Client, random.Random], None]] = [
            self._client_credentials, self._client_credentials, self._password, self._password,
            self._refresh, self._revoke, self._change]
        if self.proxy is not None:
            jobs.append(self._proxy_traffic)
        self._threads = [threading.Thread(target=self._loop, args=(job, self.random.randrange(1 << 30)), daemon=True)
                         for job in jobs]
        for thread in self._threads:
            thread.start()

    def wait_for_tokens(self, count: int, within: float) -> bool:
        """Block until the workers got ``count`` more tokens since ``start()`` (a fresh process answers its first
        requests slowly: each client's secret is hashed once, then cached), or ``within`` seconds passed."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            with self.ledger.lock:
                if self._acks - self._acks_at_start >= count:
                    return True
            time.sleep(0.01)
        return False

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(REQUEST_TIMEOUT + 5)
            assert not thread.is_alive(), "a driver worker hangs"
        self._threads = []

    def _loop(self, job: Callable[[httpx.Client, random.Random], None], seed: int) -> None:
        rng = random.Random(seed)
        with client(base_url=self.core, timeout=REQUEST_TIMEOUT) as http:
            while not self._stop.is_set():
                try:
                    job(http, rng)
                except httpx.HTTPError:
                    with self.ledger.lock:
                        self.ledger.unacknowledged += 1
                    self._stop.wait(0.02)

    def _token(self, client: httpx.Client, as_id: str, auth: tuple[str, str], data: dict[str, str]) -> httpx.Response:
        return client.post(f"/oauth2/{as_id}/v1/token", auth=auth, data=data)

    def _error(self, text: str) -> None:
        with self.ledger.lock:
            self.errors.append(text)

    def _unexpected(self, what: str, response: httpx.Response) -> bool:
        """A 503 with ``Retry-After`` is the store's deadline (issue 12: a clear answer, nothing acknowledged, to
        retry): counted as unacknowledged. Any other 5xx is an error. True for either."""
        if response.status_code == 503 and response.headers.get("retry-after"):
            with self.ledger.lock:
                self.ledger.unavailable += 1
            return True
        if response.status_code >= 500:
            self._error(f"{what}: {response.status_code} {response.text[:300]}")
            return True
        return False

    def _record_mint(self, response: httpx.Response, as_id: str, client_id: str, user_id: str | None,
                     sent: int, refresh: str | None = None) -> Minted | None:
        done = self.ledger.tick()
        with self.ledger.lock:
            self.answers[f"token {response.status_code} {response.json().get('error', '')}".strip()] += 1
            self._acks += 1 if response.status_code == 200 else 0
        self._unexpected(f"token {as_id} {client_id}", response)
        if response.status_code != 200:
            return None
        body = response.json()
        access = str(body["access_token"])
        minted = Minted(jwt_claims(access)["jti"], access, as_id, client_id, user_id,
                        body.get("refresh_token", refresh), sent, done)
        with self.ledger.lock:
            self.ledger.minted.append(minted)
        return minted

    def _client_credentials(self, client: httpx.Client, rng: random.Random) -> None:
        active = [client_id for client_id in SERVICES if self.model.app_active[client_id]]
        if not active:
            self._stop.wait(0.02)
            return
        client_id = rng.choice(active)
        as_id = rng.choice((PROXIED_AS, self.model.api_server))
        scope = "ledger:read" if as_id == PROXIED_AS else "ledger2:read"
        sent = self.ledger.tick()
        response = self._token(client, as_id, (client_id, SERVICE_SECRET),
                               {"grant_type": "client_credentials", "scope": scope})
        self._record_mint(response, as_id, client_id, None, sent)
        if response.status_code != 200:
            self._stop.wait(0.01)

    def _password(self, client: httpx.Client, rng: random.Random) -> None:
        # Active users only: sign-ins refused for a deactivated one count towards its lockout (429).
        logins = sorted(login for login, id in self.model.users.items() if self.model.user_active[id])
        if not logins or not self.model.app_active[WEB]:
            self._stop.wait(0.02)
            return
        login = rng.choice(logins)
        sent = self.ledger.tick()
        response = self._token(client, PROXIED_AS, (WEB, WEB_SECRET), {
            "grant_type": "password", "username": login, "password": PASSWORD,
            "scope": "ledger:read offline_access"})
        minted = self._record_mint(response, PROXIED_AS, WEB, self.model.users[login], sent)
        if minted is not None and minted.refresh is not None:
            with self._pool_lock:
                self.refreshable.append(minted)
        elif minted is None:
            self._stop.wait(0.01)

    def _take_refreshable(self, rng: random.Random) -> Minted | None:
        with self._pool_lock:
            if not self.refreshable:
                return None
            return self.refreshable.pop(rng.randrange(len(self.refreshable)))

    def _refresh(self, client: httpx.Client, rng: random.Random) -> None:
        held = self._take_refreshable(rng)
        if held is None:
            self._stop.wait(0.02)
            return
        assert held.refresh is not None
        sent = self.ledger.tick()
        try:
            response = self._token(client, PROXIED_AS, (WEB, WEB_SECRET),
                                   {"grant_type": "refresh_token", "refresh_token": held.refresh})
        except httpx.HTTPError:
            raise  # unknown outcome: the chain is not used again
        minted = self._record_mint(response, PROXIED_AS, WEB, held.user_id, sent, refresh=held.refresh)
        if minted is not None:
            with self._pool_lock:
                self.refreshable.append(minted)

    def _revoke(self, client: httpx.Client, rng: random.Random) -> None:
        if rng.random() < 0.3:
            held = self._take_refreshable(rng)
            if held is None:
                self._stop.wait(0.02)
                return
            assert held.refresh is not None
            kind, token, as_id, auth = "refresh_token", held.refresh, held.as_id, (WEB, WEB_SECRET)
        else:
            with self.ledger.lock:
                if not self.ledger.minted:
                    candidate = None
                else:
                    candidate = self.ledger.minted[-1 - rng.randrange(min(len(self.ledger.minted), 50))]
            if candidate is None:
                self._stop.wait(0.02)
                return
            secret = WEB_SECRET if candidate.client_id == WEB else SERVICE_SECRET
            kind, token, as_id, auth = "access_token", candidate.access, candidate.as_id, (candidate.client_id, secret)
        sent = self.ledger.tick()
        response = client.post(f"/oauth2/{as_id}/v1/revoke", auth=auth, data={"token": token, "token_type_hint": kind})
        done = self.ledger.tick()
        self._unexpected(f"revoke {kind}", response)
        if response.status_code == 200:
            with self.ledger.lock:
                self.ledger.revoked.append(Revoked(kind, token, as_id, auth[0], sent, done))

    def _read_back(self, client: httpx.Client, op: str, target: str) -> None:
        kind = op.split(".")[0]
        path = {"user": f"/api/v1/users/{target}", "app": f"/api/v1/apps/{target}", "rule": self.rule_path}[kind]
        response = client.get(path, headers=self.admin_headers)
        if response.status_code != 200:
            return
        body = response.json()
        if kind == "user":
            self.model.user_active[target] = body["status"] == "ACTIVE"
        elif kind == "app":
            self.model.app_active[target] = body["status"] == "ACTIVE"
        else:
            self.model.rule_lifetime = int(body["actions"]["token"]["accessTokenLifetimeMinutes"])

    def _proxy_traffic(self, client: httpx.Client, rng: random.Random) -> None:
        """Replica B's proxy serves requests with recent tokens of the file's server: 200 or 401, never 5xx."""
        with self.ledger.lock:
            recent = [m for m in self.ledger.minted[-50:] if m.as_id == PROXIED_AS]
        if not recent:
            self._stop.wait(0.02)
            return
        response = client.get(f"{self.proxy}/ledger/x", headers={"Authorization": f"Bearer {rng.choice(recent).access}"})
        with self.ledger.lock:
            self.answers[f"proxy {response.status_code}"] += 1
        if response.status_code not in (200, 401):
            self._error(f"B's proxy: {response.status_code} {response.text[:300]}")
        self._stop.wait(0.01)  # steady traffic, not a flood that starves A of the machine's two cores

    def _change(self, client: httpx.Client, rng: random.Random) -> None:
        roll = rng.random()
        value: bool | int
        # Deactivations leave at least two users and one service able to mint, so that every burst has load.
        active_users = sum(self.model.user_active.values())
        active_services = sum(self.model.app_active[c] for c in SERVICES)
        if roll < 0.4:
            user_id = rng.choice(sorted(self.model.user_active))
            activate = not self.model.user_active[user_id]
            if not activate and active_users <= 2:
                self._stop.wait(0.01)
                return
            op, target, value = ("user.activate" if activate else "user.deactivate"), user_id, activate
            path = f"/api/v1/users/{user_id}/lifecycle/{'activate' if activate else 'deactivate'}"
            body = None
            method = "POST"
        elif roll < 0.7:
            client_id = rng.choice(sorted(self.model.app_active))
            activate = not self.model.app_active[client_id]
            if not activate and client_id in SERVICES and active_services <= 1:
                self._stop.wait(0.01)
                return
            op, target, value = ("app.activate" if activate else "app.deactivate"), client_id, activate
            path = f"/api/v1/apps/{client_id}/lifecycle/{'activate' if activate else 'deactivate'}"
            body = None
            method = "POST"
        else:
            value = 60 if self.model.rule_lifetime != 60 else 61
            op, target, method, path, body = "rule", self.model.api_server, "PUT", self.rule_path, self._rule_body(value)
        record = Changed(op, target, value, self.ledger.tick())
        with self.ledger.lock:
            self.ledger.changes.append(record)
        response = client.request(method, path, json=body, headers=self.admin_headers)
        done = self.ledger.tick()
        if response.status_code >= 300:
            if not self._unexpected(f"{op} {target}", response):
                self._error(f"{op} {target}: {response.status_code} {response.text[:300]}")
            self._stop.wait(0.05)
            self._read_back(client, op, target)  # a 503 may hide a commit (issue 12): steer by what is stored
            return
        record.done = done
        if op.startswith("user."):
            self.model.user_active[target] = bool(value)
        elif op.startswith("app."):
            self.model.app_active[target] = bool(value)
        else:
            self.model.rule_lifetime = int(value)
        self._stop.wait(rng.uniform(0.02, 0.08))


__all__ = ["Changed", "Ledger", "LedgerDriver", "Minted", "Revoked", "client", "config", "jwt_claims"]
