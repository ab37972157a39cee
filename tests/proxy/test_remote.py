"""Remote issuers: discovery, JWKS fetch and refetch, outages, and RFC 7662 introspection.

The remote issuer is a real HTTP server (aiohttp) on a free port that the tests control: they rotate
its key, make its endpoints fail or hang, and count the requests it receives.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa

from authz.errors import BearerError, GateError
from config.schema import AuthorizationServerConfig, IntrospectionConfig, RemoteIssuer, ScopegateConfig
from proxy.introspection import Introspector
from proxy.keys import IssuerKeys, build_key_resolver
from proxy.remote import RemoteIssuerKeys
from tests.clock import Clock

AS_PATH = "/oauth2/remote"


@functools.cache
def rsa_key(name: str, bits: int = 2048) -> rsa.RSAPrivateKey:
    """One RSA key per name for the whole session (key generation is the slow part)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def public_jwk(name: str, *, bits: int = 2048, **extra: Any) -> dict[str, Any]:
    jwk: dict[str, Any] = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key(name, bits).public_key()))
    jwk.update({"kid": name, "alg": "RS256", "use": "sig"})
    jwk.update(extra)
    return {k: v for k, v in jwk.items() if v is not None}


@dataclass
class FakeIssuer:
    """A remote authorization server under the test's control."""

    base: str = ""
    keys: list[dict[str, Any]] = field(default_factory=lambda: [public_jwk("k1")])
    jwks_status: int = 200
    jwks_body: bytes | None = None
    hang_keys: bool = False
    rfc8414: bool = True
    metadata_issuer: str | None = None
    introspection_status: int = 200
    introspection_body: dict[str, Any] | None = None
    active: dict[str, bool] = field(default_factory=dict)
    hang_introspection: bool = False
    requests: list[str] = field(default_factory=list)
    introspection_auth: list[str] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def issuer(self) -> str:
        return self.base + AS_PATH

    def count(self, path: str) -> int:
        return sum(1 for p in self.requests if p == AS_PATH + path)

    def metadata(self) -> dict[str, Any]:
        return {"issuer": self.metadata_issuer or self.issuer, "jwks_uri": self.issuer + "/v1/keys",
                "introspection_endpoint": self.issuer + "/v1/introspect"}

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(request.path)
        path = request.path.removeprefix(AS_PATH)
        if path == "/.well-known/oauth-authorization-server" and self.rfc8414:
            return web.json_response(self.metadata())
        if path == "/.well-known/openid-configuration":
            return web.json_response(self.metadata())
        if path == "/v1/keys":
            if self.hang_keys:
                await self.release.wait()
            if self.jwks_body is not None:
                return web.Response(body=self.jwks_body, status=self.jwks_status, content_type="application/json")
            return web.json_response({"keys": self.keys}, status=self.jwks_status)
        if path == "/v1/introspect" and request.method == "POST":
            self.introspection_auth.append(request.headers.get("Authorization", ""))
            if self.hang_introspection:
                await self.release.wait()
            form = await request.post()
            if self.introspection_body is not None:
                return web.json_response(self.introspection_body, status=self.introspection_status)
            token = str(form.get("token"))
            return web.json_response({"active": self.active.get(token, False)}, status=self.introspection_status)
        return web.json_response({"error": "not_found"}, status=404)


@pytest.fixture
async def issuer() -> AsyncIterator[FakeIssuer]:
    fake = FakeIssuer()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", fake.handle)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    fake.base = f"http://{host}:{port}"
    yield fake
    fake.release.set()
    await runner.cleanup()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as c:
        yield c


def remote_config(fake: FakeIssuer, **kwargs: Any) -> RemoteIssuer:
    return RemoteIssuer(issuer=fake.issuer, audience="https://api.example.com/orders", **kwargs)


def make_keys(fake: FakeIssuer, client: httpx.AsyncClient, clock: Clock, **kwargs: Any) -> RemoteIssuerKeys:
    remote = remote_config(fake, **kwargs)
    return RemoteIssuerKeys(remote, ["RS256"], client, now=clock)


class TestDiscoveryAndFetch:
    async def test_discovers_metadata_and_fetches_the_key_set(self, issuer: FakeIssuer, client: httpx.AsyncClient) -> None:
        """The first start reads RFC 8414 metadata under the issuer, then the JWKS it names."""
        keys = make_keys(issuer, client, Clock(1_000_000.0))
        await keys.start()
        assert keys.metadata is not None and keys.metadata.jwks_uri == issuer.issuer + "/v1/keys"
        assert issuer.requests == [AS_PATH + "/.well-known/oauth-authorization-server", AS_PATH + "/v1/keys"]
        key = await keys.resolve(issuer.issuer, "k1")
        assert key is not None and key.algorithm_name == "RS256"

    async def test_falls_back_to_openid_configuration(self, issuer: FakeIssuer, client: httpx.AsyncClient) -> None:
        """An issuer without RFC 8414 metadata is discovered through openid-configuration."""
        issuer.rfc8414 = False
        keys = make_keys(issuer, client, Clock(1_000_000.0))
        await keys.start()
        assert issuer.count("/.well-known/openid-configuration") == 1
        assert await keys.resolve(issuer.issuer, "k1") is not None

    async def test_metadata_naming_another_issuer_is_not_used(self, issuer: FakeIssuer, client: httpx.AsyncClient) -> None:
        """RFC 8414 §3.3: metadata whose issuer differs from the configured one is refused, and no key is fetched."""
        issuer.metadata_issuer = "https://evil.example.com/oauth2/remote"
        keys = make_keys(issuer, client, Clock(1_000_000.0))
        await keys.start()
        assert issuer.count("/v1/keys") == 0
        assert await keys.resolve(issuer.issuer, "k1") is None
        assert keys.last_error is not None and "evil" in keys.last_error

    async def test_a_hit_makes_no_request(self, issuer: FakeIssuer, client: httpx.AsyncClient) -> None:
        """Known keys are answered from memory: a thousand lookups cost no request."""
        keys = make_keys(issuer, client, Clock(1_000_000.0))
        await keys.start()
        before = len(issuer.requests)
        for _ in range(1000):
            assert await keys.resolve(issuer.issuer, "k1") is not None
        assert len(issuer.requests) == before

    async def test_never_answers_for_another_issuer(self, issuer: FakeIssuer, client: httpx.AsyncClient) -> None:
        """J26: this issuer's key is never returned for a token claiming another issuer, even with the same kid."""
        keys = make_keys(issuer, client, Clock(1_000_000.0))
        await keys.start()
        assert await keys.resolve(issuer.issuer + "/", "k1") is None
        assert await keys.resolve("https://other.example.com/oauth2/default", "k1") is None


class TestKeyFiltering:
    async def test_unusable_keys_are_ignored(self, issuer: FakeIssuer, client: httpx.AsyncClient) -> None:
        """Keys for encryption, with an alg outside the allow-list, RSA under 2048 bits, or with private
        members never verify (J23)."""
        issuer.keys = [
            public_jwk("enc", use="enc"),
            public_jwk("ps", alg="PS256"),
            public_jwk("hs", alg="HS256"),
            public_jwk("weak", bits=1024),
            public_jwk("ops", key_ops=["encrypt"]),
            {**public_jwk("priv"), "d": "AAAA"},
            {"kty": "oct", "kid": "oct", "k": "c2VjcmV0", "alg": "HS256"},
            public_jwk("good"),
        ]
        keys = make_keys(issuer, client, Clock(1_000_000.0))
        await keys.start()
        assert keys.kids == {"good"}

    async def test_duplicate_kids_name_no_key(self, issuer: FakeIssuer, client: httpx.AsyncClient) -> None:
        """security.md §4.4: a kid that names two keys is ambiguous, so neither is used."""
        issuer.keys = [public_jwk("dup"), {**public_jwk("other"), "kid": "dup"}, public_jwk("k1")]
        keys = make_keys(issuer, client, Clock(1_000_000.0))
        await keys.start()
        assert keys.kids == {"k1"}

    async def test_key_without_alg_takes_the_single_allowed_algorithm(self, issuer: FakeIssuer, client: httpx.AsyncClient) -> None:
        """A JWK with no alg is pinned to the one allowed algorithm of its key type."""
        issuer.keys = [public_jwk("k1", alg=None)]
        keys = make_keys(issuer, client, Clock(1_000_000.0))
        await keys.start()
        key = await keys.resolve(issuer.issuer, "k1")
        assert key is not None and key.algorithm_name == "RS256"

    @pytest.mark.parametrize("body", [b"not json", b'{"keys": [], "keys": []}', b"[]", b'{"keys": NaN}'])
    async def test_a_malformed_key_set_keeps_the_old_keys(self, issuer: FakeIssuer, client: httpx.AsyncClient,
                                                          body: bytes) -> None:
        """A key set that is not JSON, has duplicate members or is no JWK Set is a failed fetch."""
        clock = Clock(1_000_000.0)
        keys = make_keys(issuer, client, clock)
        await keys.start()
        issuer.jwks_body = body
        clock.advance(31)
        assert await keys.resolve(issuer.issuer, "k2") is None
        assert keys.kids == {"k1"}

    async def test_an_oversized_key_set_is_refused(self, issuer: FakeIssuer, client: httpx.AsyncClient) -> None:
        """security.md §4.4: a huge JWKS is not read to the end."""
        issuer.jwks_body = b'{"keys": [' + b'{"kty":"RSA"},' * 100_000 + b"{}]}"
        keys = make_keys(issuer, client, Clock(1_000_000.0))
        await keys.start()
        assert keys.kids == frozenset()
        assert keys.last_error is not None and "larger" in keys.last_error


class TestRefetch:
    async def test_rotation_is_picked_up_on_an_unknown_kid_after_the_cooldown(self, issuer: FakeIssuer,
                                                                             client: httpx.AsyncClient) -> None:
        """A new kid refetches the key set once the cooldown since the last fetch has passed."""
        clock = Clock(1_000_000.0)
        keys = make_keys(issuer, client, clock, jwks_refetch_cooldown=30)
        await keys.start()
        issuer.keys = [public_jwk("k1"), public_jwk("k2")]
        clock.advance(30)
        assert await keys.resolve(issuer.issuer, "k2") is not None
        assert issuer.count("/v1/keys") == 2
        assert issuer.count("/.well-known/oauth-authorization-server") == 1

    async def test_unknown_kids_refetch_at_most_once_per_cooldown(self, issuer: FakeIssuer, client: httpx.AsyncClient) -> None:
        """J5: a storm of unknown kids costs at most one fetch per cooldown."""
        clock = Clock(1_000_000.0)
        keys = make_keys(issuer, client, clock, jwks_refetch_cooldown=30)
        await keys.start()
        for i in range(50):
            assert await keys.resolve(issuer.issuer, f"nope-{i}") is None
        assert issuer.count("/v1/keys") == 1
        clock.advance(30)
        for i in range(50):
            assert await keys.resolve(issuer.issuer, f"again-{i}") is None
        assert issuer.count("/v1/keys") == 2
        clock.advance(29)
        assert await keys.resolve(issuer.issuer, "still-unknown") is None
        assert issuer.count("/v1/keys") == 2

    async def test_concurrent_misses_share_one_fetch(self, issuer: FakeIssuer, client: httpx.AsyncClient) -> None:
        """Single flight: a hundred concurrent misses wait for one fetch, and all see the new key."""
        clock = Clock(1_000_000.0)
        keys = make_keys(issuer, client, clock)
        await keys.start()
        issuer.keys = [public_jwk("k2")]
        clock.advance(60)
        results = await asyncio.gather(*(keys.resolve(issuer.issuer, "k2") for _ in range(100)))
        assert all(r is not None for r in results)
        assert issuer.count("/v1/keys") == 2

    async def test_an_outage_of_the_keys_endpoint_keeps_the_old_keys(self, issuer: FakeIssuer,
                                                                      client: httpx.AsyncClient) -> None:
        """A 500 from the keys endpoint leaves the keys already held in place; recovery brings the new ones."""
        clock = Clock(1_000_000.0)
        keys = make_keys(issuer, client, clock)
        await keys.start()
        issuer.jwks_status = 500
        issuer.keys = [public_jwk("k2")]
        clock.advance(60)
        assert await keys.resolve(issuer.issuer, "k2") is None
        assert await keys.resolve(issuer.issuer, "k1") is not None
        assert keys.last_error is not None and "500" in keys.last_error
        issuer.jwks_status = 200
        clock.advance(60)
        assert await keys.resolve(issuer.issuer, "k2") is not None
        assert await keys.resolve(issuer.issuer, "k1") is None, "a key the issuer withdrew stops verifying"

    async def test_a_hanging_keys_endpoint_times_out_and_keeps_the_old_keys(self, issuer: FakeIssuer,
                                                                            client: httpx.AsyncClient) -> None:
        """A keys endpoint that never answers costs one timeout, not a stuck request; old keys stay."""
        clock = Clock(1_000_000.0)
        keys = make_keys(issuer, client, clock, jwks_timeout=0.2)
        await keys.start()
        issuer.hang_keys = True
        clock.advance(60)
        async with asyncio.timeout(5):
            assert await keys.resolve(issuer.issuer, "k2") is None
        assert await keys.resolve(issuer.issuer, "k1") is not None
        assert keys.last_error is not None and "0.2s" in keys.last_error

    async def test_an_issuer_down_at_start_is_fetched_on_first_use(self, client: httpx.AsyncClient,
                                                                    issuer: FakeIssuer) -> None:
        """Start-up does not fail when a remote issuer is down; its keys come once it answers."""
        clock = Clock(1_000_000.0)
        issuer.jwks_status = 503
        keys = make_keys(issuer, client, clock)
        await keys.start()
        assert await keys.resolve(issuer.issuer, "k1") is None
        issuer.jwks_status = 200
        clock.advance(30)
        assert await keys.resolve(issuer.issuer, "k1") is not None

    async def test_an_old_key_set_is_renewed_in_the_background(self, issuer: FakeIssuer, client: httpx.AsyncClient) -> None:
        """After max_age, a hit still answers at once and starts one background refetch."""
        clock = Clock(1_000_000.0)
        keys = make_keys(issuer, client, clock)
        await keys.start()
        clock.advance(keys.max_age + 1)
        assert await keys.resolve(issuer.issuer, "k1") is not None
        assert await keys.resolve(issuer.issuer, "k1") is not None
        for _ in range(100):
            if issuer.count("/v1/keys") == 2:
                break
            await asyncio.sleep(0.01)
        assert issuer.count("/v1/keys") == 2


def token_for(jti: str, suffix: str = "") -> str:
    body = base64.urlsafe_b64encode(json.dumps({"jti": jti}).encode()).rstrip(b"=").decode()
    return f"eyJhbGciOiJSUzI1NiJ9.{body}.c2ln{suffix}"


def introspector(fake: FakeIssuer, client: httpx.AsyncClient, clock: Clock, *, ttl: float = 30,
                 timeout: float = 2, client_id: str = "gate", secret: str = "s3cret-value-123") -> Introspector:
    return Introspector(issuer=fake.issuer, endpoint=fake.issuer + "/v1/introspect", client_id=client_id,
                        client_secret=secret, cache_ttl=ttl, client=client, timeout=timeout, realm="remote",
                        now=clock)


class TestIntrospection:
    async def test_active_token_passes_and_is_cached(self, issuer: FakeIssuer, client: httpx.AsyncClient) -> None:
        """An active answer lets the token through; a second check within the TTL asks nobody."""
        clock = Clock(1_000_000.0)
        tok = token_for("j1")
        issuer.active[tok] = True
        check = introspector(issuer, client, clock)
        await check.validate_active(tok, jti="j1", exp=clock() + 3600)
        await check.validate_active(tok, jti="j1", exp=clock() + 3600)
        assert issuer.count("/v1/introspect") == 1

    async def test_inactive_token_is_refused_as_revoked(self, issuer: FakeIssuer, client: httpx.AsyncClient) -> None:
        """RFC 7662 §2.2: active false → 401 invalid_token, reason revoked."""
        clock = Clock(1_000_000.0)
        check = introspector(issuer, client, clock)
        with pytest.raises(BearerError) as err:
            await check.validate_active(token_for("j1"), jti="j1", exp=clock() + 3600)
        assert err.value.status_code == 401 and err.value.reason == "revoked"
        assert err.value.error == "invalid_token"

    async def test_cache_lives_no_longer_than_cache_ttl(self, issuer: FakeIssuer, client: httpx.AsyncClient) -> None:
        """A revocation at the issuer is seen once cacheTTL has passed."""
        clock = Clock(1_000_000.0)
        tok = token_for("j1")
        issuer.active[tok] = True
        check = introspector(issuer, client, clock, ttl=30)
        await check.validate_active(tok, jti="j1", exp=clock() + 3600)
        issuer.active[tok] = False
        clock.advance(29)
        await check.validate_active(tok, jti="j1", exp=clock() + 3600)
        clock.advance(1)
        with pytest.raises(BearerError):
            await check.validate_active(tok, jti="j1", exp=clock() + 3600)
        assert issuer.count("/v1/introspect") == 2

    async def test_cache_never_outlives_exp(self, issuer: FakeIssuer, client: httpx.AsyncClient) -> None:
        """A result is not kept past the token's exp, even when cacheTTL is longer."""
        clock = Clock(1_000_000.0)
        tok = token_for("j1")
        issuer.active[tok] = True
        check = introspector(issuer, client, clock, ttl=300)
        exp = clock() + 10
        await check.validate_active(tok, jti="j1", exp=exp)
        assert check.cached("j1") is not None
        clock.advance(10)
        assert check.cached("j1") is None

    async def test_cache_is_keyed_by_jti_not_by_token_string(self, issuer: FakeIssuer, client: httpx.AsyncClient) -> None:
        """J14: a re-padded signature is the same token and finds the same (inactive) result."""
        clock = Clock(1_000_000.0)
        check = introspector(issuer, client, clock)
        with pytest.raises(BearerError):
            await check.validate_active(token_for("j1"), jti="j1", exp=clock() + 3600)
        with pytest.raises(BearerError):
            await check.validate_active(token_for("j1", "=="), jti="j1", exp=clock() + 3600)
        assert issuer.count("/v1/introspect") == 1

    @pytest.mark.parametrize(("status", "body"), [(500, {"error": "boom"}), (401, {"error": "invalid_client"}),
                                                  (200, {"active": "true"}), (200, {"scope": "x"})])
    async def test_an_unusable_answer_fails_closed(self, issuer: FakeIssuer, client: httpx.AsyncClient,
                                                   status: int, body: dict[str, Any]) -> None:
        """A token whose state cannot be learned is denied: 503 introspection_unavailable, not cached."""
        clock = Clock(1_000_000.0)
        issuer.introspection_status, issuer.introspection_body = status, body
        check = introspector(issuer, client, clock)
        for _ in range(2):
            with pytest.raises(GateError) as err:
                await check.validate_active(token_for("j1"), jti="j1", exp=clock() + 3600)
            assert err.value.status_code == 503 and err.value.reason == "introspection_unavailable"
        assert issuer.count("/v1/introspect") == 2

    async def test_a_hanging_endpoint_times_out_closed(self, issuer: FakeIssuer, client: httpx.AsyncClient) -> None:
        """An introspection endpoint that never answers is a denial after the timeout."""
        clock = Clock(1_000_000.0)
        issuer.hang_introspection = True
        check = introspector(issuer, client, clock, timeout=0.2)
        async with asyncio.timeout(5):
            with pytest.raises(GateError):
                await check.validate_active(token_for("j1"), jti="j1", exp=clock() + 3600)

    async def test_concurrent_checks_of_one_token_share_one_call(self, issuer: FakeIssuer, client: httpx.AsyncClient) -> None:
        """Fifty simultaneous requests with one token cause one introspection call."""
        clock = Clock(1_000_000.0)
        tok = token_for("j1")
        issuer.active[tok] = True
        check = introspector(issuer, client, clock)
        await asyncio.gather(*(check.validate_active(tok, jti="j1", exp=clock() + 3600) for _ in range(50)))
        assert issuer.count("/v1/introspect") == 1

    async def test_client_authenticates_with_form_encoded_basic_credentials(self, issuer: FakeIssuer,
                                                                             client: httpx.AsyncClient) -> None:
        """RFC 6749 §2.3.1: id and secret are form-urlencoded before base64 (client_secret_basic)."""
        clock = Clock(1_000_000.0)
        check = introspector(issuer, client, clock, client_id="gate:1", secret="p%ss+word/xyz1234")
        with pytest.raises(BearerError):
            await check.validate_active(token_for("j1"), jti="j1", exp=clock() + 3600)
        scheme, _, value = issuer.introspection_auth[0].partition(" ")
        assert scheme == "Basic"
        assert base64.b64decode(value).decode() == "gate%3A1:p%25ss%2Bword%2Fxyz1234"


def remote_server_config(fake: FakeIssuer, **remote: Any) -> AuthorizationServerConfig:
    return AuthorizationServerConfig(id="remote", name="Remote", remote=remote_config(fake, **remote))


class TestResolverWiring:
    async def test_build_key_resolver_serves_a_remote_issuer(self, issuer: FakeIssuer) -> None:
        """The configured remote AS is discovered at start and resolvable by its issuer."""
        cfg = ScopegateConfig(authorization_servers=[remote_server_config(issuer)])
        resolver = build_key_resolver(cfg, None)
        try:
            await resolver.start()
            assert resolver.issuer_for_as("remote") == issuer.issuer
            assert await resolver.resolve(issuer.issuer, "k1") is not None
            assert resolver.introspector(issuer.issuer) is None
        finally:
            await resolver.aclose()

    async def test_introspection_endpoint_comes_from_discovery(self, issuer: FakeIssuer) -> None:
        """With introspection configured, the endpoint named in the metadata is called with the client's credentials."""
        cfg = ScopegateConfig(authorization_servers=[remote_server_config(
            issuer, introspection=IntrospectionConfig(client_id="gate", client_secret="secret-secret-1"))])
        resolver: IssuerKeys = build_key_resolver(cfg, None)
        try:
            await resolver.start()
            check = resolver.introspector(issuer.issuer)
            assert check is not None
            tok = token_for("j9")
            issuer.active[tok] = True
            await check.validate_active(tok, jti="j9", exp=4_000_000_000)
            assert issuer.count("/v1/introspect") == 1
        finally:
            await resolver.aclose()
