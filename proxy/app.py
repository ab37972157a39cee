"""The proxy listener: a bare ASGI callable running the gate pipeline, then forwarding (DESIGN §2).

No framework on this path (issue 5: "Starlette's routing cost ~1.4x"). Everything that can be built at
start-up is built in ``configure``: the route table, the resource map, the issuer policies, the header
plan and the metric children, as one ``GateTables`` that a reload replaces whole. A request takes the
tables once, as it arrives, and is decided and forwarded by them alone (issue 12 item 5: a form POST whose
body came after a SIGHUP was routed by the old table and forwarded with the new header plan). Per request
the pipeline is, in order:

  guard → normalize path → resource → route → bearer → validate (or cache) → revocation → scopes → forward

Every stage signals a denial by raising an error of ``authz/errors.py`` (BearerError for RFC 6750
challenges, realm = AS id; GateError for the rest); ``_send_error`` is the one place that turns them into
responses. One ``Decision`` per request feeds the metrics and the decision log.

A ``websocket`` scope runs the same pipeline on its opening handshake (as a GET), then ``proxy/websocket.py``
opens the upstream connection and relays frames; a denial is the same HTTP answer (ASGI denial response).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import os
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any, TextIO
from urllib.parse import parse_qsl

from authz.errors import BearerError, GateError, ScopegateError
from config.schema import ScopegateConfig
from proxy import reasons
from proxy.bearer import extract_bearer
from proxy.cache import TokenCache
from proxy.decision import Decision
from proxy.decisionlog import DecisionLog
from proxy.echo import echo
from proxy.forward import ClientGone, Forwarder, HeaderPlan, RequestBody
from proxy.guard import ParseGuard, RequestHead
from proxy.introspection import Introspector
from proxy.keys_api import KeyResolver
from proxy.metrics import ProxyMetrics
from proxy.paths import normalize_path
from proxy.resources import ResourceMap
from proxy.revocation import RevocationLike
from proxy.routes import EXPLICIT_ONLY, FORWARDED_METHODS, UNROUTED, Route, RouteTable
from proxy.validate import IssuerPolicy, TokenValidator, VerifiedToken, build_issuer_policies
from proxy.websocket import Session, SessionWatch, open_upstream, relay, subprotocols
from proxy.websocket import deny as deny_websocket

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

log = logging.getLogger("scopegate.proxy")


@dataclass(frozen=True, slots=True)
class GateTables:
    """Everything one configuration decides for the gate, and the upstream pool it forwards to."""

    cfg: ScopegateConfig
    guard: ParseGuard
    routes: RouteTable
    resources: ResourceMap
    policies: dict[str, IssuerPolicy]
    introspectors: dict[str, Introspector]
    """Remote issuers with RFC 7662 introspection configured: the only way to learn their revocations."""
    validator: TokenValidator
    cache: TokenCache
    headers: HeaderPlan
    echo: bool
    forwarder: Forwarder | None

ECHO = "builtin:echo"


class ProxyApp:
    def __init__(self, config: ScopegateConfig, keys: KeyResolver, revocation: RevocationLike, metrics: ProxyMetrics,
                 log_stream: TextIO | None, now: Callable[[], float] = time.time) -> None:
        self.keys = keys
        self.revocation = revocation
        self.metrics = metrics
        self.log = DecisionLog(log_stream)
        self.now = now
        self._id_prefix = os.urandom(4).hex() + "-"
        self._counter = 0
        self._tasks: set[asyncio.Task[None]] = set()
        age = getattr(revocation, "age", None)
        if callable(age):
            metrics.watch_revocation_age(lambda: float(age(self.now())))
        self.configure(config)

    # ------------------------------------------------------------------------------------------ configuration

    def configure(self, config: ScopegateConfig, forwarder: Forwarder | None = None) -> None:
        """Build every per-configuration table and publish them in one assignment (start-up and SIGHUP).
        ``forwarder`` None keeps the current upstream pool."""
        current = getattr(self, "tables", None)
        policies = build_issuer_policies(config, self.keys)
        find = getattr(self.keys, "introspector", None)
        introspectors: dict[str, Introspector] = {}
        if callable(find):
            for as_id, policy in policies.items():
                if not policy.local and (introspector := find(policy.issuer)) is not None:
                    introspectors[as_id] = introspector
        routes = RouteTable(config.routes)
        self.tables = GateTables(
            cfg=config,
            guard=ParseGuard(config.proxy.limits, config.proxy.identity, config.proxy.strip_headers, config.routes),
            routes=routes,
            resources=ResourceMap(config),
            policies=policies,
            introspectors=introspectors,
            validator=TokenValidator(self.keys, leeway=config.proxy.leeway,
                                     max_token_bytes=config.proxy.limits.max_token_bytes),
            cache=TokenCache(config.proxy.token_cache_size, self.now),
            headers=HeaderPlan(config),
            echo=config.upstream.url == ECHO,
            forwarder=forwarder if forwarder is not None else current.forwarder if current is not None else None,
        )
        watch = getattr(self, "sessions", None)
        if watch is None:
            self.sessions = SessionWatch(self.revocation, self.now, interval=config.revocation.poll_interval,
                                         deny_when_stale=config.revocation.on_stale == "deny")
        else:  # a reload: open sessions stay watched, under the new settings, and are all asked again
            watch.interval = config.revocation.poll_interval
            watch.deny_when_stale = config.revocation.on_stale == "deny"
            watch.check_all()
        self.metrics.prebuild(routes.names)

    @property
    def cfg(self) -> ScopegateConfig:
        return self.tables.cfg

    @property
    def forwarder(self) -> Forwarder | None:
        return self.tables.forwarder

    async def reconfigure(self, config: ScopegateConfig) -> None:
        """SIGHUP: new tables; the upstream pool is kept unless the upstream itself changed. A new pool is started
        before the tables that name it are published, so no request pairs the new tables with the old pool; the
        old pool closes once requests already on it have had ``upstream.timeout`` to finish."""
        old = self.tables.forwarder
        if config.upstream == self.tables.cfg.upstream:
            self.configure(config)
            return
        new = None
        if config.upstream.url != ECHO:
            new = Forwarder(config)
            await new.startup()
        self.configure(config)
        self.tables = dataclasses.replace(self.tables, forwarder=new)
        if old is not None:
            task = asyncio.ensure_future(self._retire_pool(old, config.upstream.timeout))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _retire_pool(old: Forwarder, grace: float) -> None:
        await asyncio.sleep(grace)
        await old.shutdown()

    async def startup(self) -> None:
        if not self.tables.echo and self.tables.forwarder is None:
            forwarder = Forwarder(self.tables.cfg)
            await forwarder.startup()
            self.tables = dataclasses.replace(self.tables, forwarder=forwarder)

    async def shutdown(self) -> None:
        forwarder = self.tables.forwarder
        if forwarder is not None:
            self.tables = dataclasses.replace(self.tables, forwarder=None)
            await forwarder.shutdown()

    # ------------------------------------------------------------------------------------------ ASGI

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        elif kind == "websocket":
            await self._websocket(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:  # reported to the server, which refuses to start
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._counter += 1
        decision = Decision(f"{self._id_prefix}{self._counter:x}", scope["method"], time.perf_counter(), self.now())
        self.metrics.active += 1
        try:
            await self._gate(self.tables, scope, receive, send, decision)
        except ScopegateError as exc:
            if decision.response_started:
                raise
            if decision.decision == reasons.ALLOW and isinstance(exc, GateError):
                decision.reason, decision.status = exc.reason, exc.status_code  # failed while forwarding
            else:
                decision.deny(exc.reason, exc.status_code)
            await self._send_error(send, exc)
        except ClientGone:
            decision.reason, decision.status = "client_gone", 499
        except Exception:
            log.exception("unexpected error in the proxy")
            if decision.response_started:
                raise
            decision.deny(reasons.INTERNAL_ERROR, 500)
            await self._send_error(send, GateError(500, reasons.INTERNAL_ERROR, "Internal error."))
        finally:
            self.metrics.active -= 1
            decision.duration = time.perf_counter() - decision.started
            self.metrics.record(decision)
            self.log.record(decision)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The opening handshake goes through the gate as a GET; then the upstream is dialled and frames relayed."""
        self._counter += 1
        decision = Decision(f"{self._id_prefix}{self._counter:x}", "GET", time.perf_counter(), self.now())
        self.metrics.active += 1
        t = self.tables
        try:
            if (await receive())["type"] != "websocket.connect":
                decision.reason, decision.status = "client_gone", 499
                return
            # The handshake is a GET (RFC 6455 §4.1); X-Forwarded-Proto names the HTTP scheme it arrived on.
            http_scope = {**scope, "method": "GET", "scheme": "https" if scope.get("scheme") == "wss" else "http"}
            head, path, verified, _ = await self._authorize(t, http_scope, receive, decision)
            if t.forwarder is None or t.forwarder.session is None:
                raise GateError(502, reasons.UPSTREAM_UNAVAILABLE, "WebSocket upgrades need an HTTP upstream.")
            headers = t.headers.upstream_headers(head, http_scope, verified, decision.route)
            query = head.query.decode("latin-1")
            url = t.forwarder.base + path + ("?" + query if query else "")
            started = time.perf_counter()
            try:
                upstream = await open_upstream(t.forwarder.session, url, headers, subprotocols(scope),
                                               connect_timeout=t.cfg.upstream.connect_timeout,
                                               max_message_bytes=t.cfg.proxy.limits.max_body_bytes)
                decision.response_started = True
                decision.status = 101
                session = None if verified is None else self._watch(t, head, verified)
                try:
                    await relay(receive, send, upstream, session.ended if session is not None else None)
                finally:
                    if session is not None:
                        self.sessions.discard(session)
            finally:
                decision.upstream_duration = time.perf_counter() - started
        except ScopegateError as exc:
            if decision.response_started:
                raise
            if decision.decision == reasons.ALLOW and isinstance(exc, GateError):
                decision.reason, decision.status = exc.reason, exc.status_code
            else:
                decision.deny(exc.reason, exc.status_code)
            await deny_websocket(scope, send, exc)
        except Exception:
            log.exception("unexpected error in the proxy (websocket)")
            if not decision.response_started:
                decision.deny(reasons.INTERNAL_ERROR, 500)
                await deny_websocket(scope, send, GateError(500, reasons.INTERNAL_ERROR, "Internal error."))
        finally:
            self.metrics.active -= 1
            decision.duration = time.perf_counter() - decision.started
            self.metrics.record(decision)
            self.log.record(decision)

    def _watch(self, t: GateTables, head: RequestHead, verified: VerifiedToken) -> Session:
        """Watch a relayed session's token: it ends at ``exp`` or on revocation (issue 8 item 11)."""
        recheck = None
        introspector = t.introspectors.get(verified.as_id)
        if introspector is not None:
            token = extract_bearer(head.authorization, other_method=False, realm=verified.as_id)
            recheck = functools.partial(introspector.validate_active, token, jti=str(verified.claims.get("jti", "")),
                                        exp=verified.exp)
        return self.sessions.open(verified.claims, verified.exp, recheck)

    async def _send_error(self, send: Send, exc: ScopegateError) -> None:
        """The one place an error of the family becomes the proxy's response."""
        body = exc.body_bytes()
        headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in exc.get_headers().items()]
        headers.append((b"content-length", str(len(body)).encode()))
        if isinstance(exc, GateError) and exc.close:
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": exc.status_code, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    # ------------------------------------------------------------------------------------------ the gate

    async def _gate(self, t: GateTables, scope: Scope, receive: Receive, send: Send, decision: Decision) -> None:
        head, path, verified, body = await self._authorize(t, scope, receive, decision)
        await self._forward(t, scope, receive, send, head, path, verified, decision, body)                # 10

    async def _authorize(self, t: GateTables, scope: Scope, receive: Receive, decision: Decision
                         ) -> tuple[RequestHead, str, VerifiedToken | None, RequestBody | None]:
        """Steps 1-9: what forwarding needs (no token for a public route or a CORS preflight), or the denial."""
        head = t.guard.check(scope)                                  # 1
        path = normalize_path(head.raw_path)                            # 2
        decision.path = path
        resource = t.resources.resolve(path, head.host)              # 3
        route = t.routes.match(head.method, path)                    # 4
        if route is None and head.method in EXPLICIT_ONLY:
            raise GateError(405, reasons.METHOD_NOT_ALLOWED, f"No route allows {head.method} here.",
                            headers={"Allow": FORWARDED_METHODS})
        if route is not None:
            decision.route = route.name
            if route.public:
                decision.allow(reasons.PUBLIC)
                return head, path, None, None
        if resource is None:
            raise GateError(403, reasons.NO_RESOURCE, "No authorization server covers this path.")
        decision.as_id = resource.as_id
        if head.preflight:
            # CORS preflights carry no credentials (Fetch standard); the upstream answers them, as behind Envoy.
            decision.allow(reasons.PREFLIGHT)
            return head, path, None, None
        if route is None:
            decision.route = UNROUTED
            if t.cfg.proxy.unrouted != "any_valid_token":
                raise GateError(403, reasons.NO_ROUTE, "No route allows this method and path.")

        body = self._body(t, receive, head)
        token = extract_bearer(head.authorization, other_method=self._token_in_query(head.query),       # 5
                               realm=resource.as_id)
        verified = await self._verify(t, token, resource.as_id, decision)                                 # 6, 7
        now = self.now()
        if self.revocation.is_stale(now):                                                               # 8
            if t.cfg.revocation.on_stale == "deny":
                raise GateError(503, reasons.STALE_REVOCATION, "Revocation state is stale; try again shortly.")
            stale = True
        else:
            stale = False
        if self.revocation.is_revoked(verified.claims):
            raise BearerError("invalid_token", "The access token has been revoked.", realm=resource.as_id,
                              reason=reasons.REVOKED)
        introspector = t.introspectors.get(resource.as_id)
        if introspector is not None:
            await introspector.validate_active(token, jti=str(verified.claims.get("jti", "")), exp=verified.exp)
        if head.form and body is not None:
            # Read only now: a request whose header token fails never makes the proxy wait for or hold its body.
            body = await self._scanned_form(t, receive, head, resource.as_id)
        self._check_scopes(route, verified, resource.as_id)                                             # 9
        # Issue 10 item 3: allowed on ``scope`` although ``scp`` disagreed; the log line says so (bad_claims).
        decision.allow(reasons.STALE_REVOCATION if stale else reasons.BAD_CLAIMS if verified.scope_conflict
                       else reasons.OK)
        return head, path, verified, body

    async def _verify(self, t: GateTables, token: str, as_id: str, decision: Decision) -> VerifiedToken:
        verified = t.cache.get(as_id, token)
        if verified is not None:
            decision.token_cache = "hit"
            self.metrics.cache_hit.inc()
        else:
            decision.token_cache = "miss"
            self.metrics.cache_miss.inc()
            verified = await t.validator.validate(token, t.policies[as_id], self.now())
            t.cache.put(token, verified)
        decision.subject = verified.subject
        decision.client_id = verified.client_id
        decision.scopes = verified.scope_header
        return verified

    @staticmethod
    def _check_scopes(route: Route | None, verified: VerifiedToken, realm: str) -> None:
        if route is None or route.scopes is None:
            return
        if not route.scopes.is_satisfied_by(verified.scopes):
            raise BearerError("insufficient_scope", "The access token lacks a scope this route needs.", realm=realm,
                              scope=route.scopes.challenge, reason=reasons.INSUFFICIENT_SCOPE)

    @staticmethod
    def _token_in_query(query: bytes) -> bool:
        if not query or (b"access" not in query and b"%" not in query):
            return False
        return any(name == "access_token" for name, _ in parse_qsl(query.decode("latin-1"), keep_blank_values=True))

    @staticmethod
    def _token_in_form(body: bytes) -> bool:
        if b"access" not in body and b"%" not in body:
            return False
        return any(name == "access_token" for name, _ in parse_qsl(body.decode("latin-1"), keep_blank_values=True))

    async def _scanned_form(self, t: GateTables, receive: Receive, head: RequestHead, realm: str) -> RequestBody:
        """The form body, read whole (up to ``maxFormScanBytes``) and free of an ``access_token`` field.

        RFC 6750 §2: "Clients MUST NOT use more than one method to transmit the token in each request". Only a
        whole form can be cleared of a second token, and nothing of it may reach the upstream before, so a form
        over the cap is refused (413) instead of being streamed unsearched."""
        cap = min(t.cfg.proxy.limits.max_form_scan_bytes, t.cfg.proxy.limits.max_body_bytes)
        if head.content_length is not None and head.content_length > cap:
            raise GateError(413, reasons.TOO_LARGE, "A form body sent with a bearer token is too large.", close=True)
        body = self._body(t, receive, head, max_bytes=cap)
        assert body is not None  # the caller saw a body
        if self._token_in_form(await body.read_all()):
            raise BearerError("invalid_request", "The access token was sent in more than one way.", realm=realm,
                              reason=reasons.INVALID_REQUEST)
        return body

    def _body(self, t: GateTables, receive: Receive, head: RequestHead, max_bytes: int | None = None
              ) -> RequestBody | None:
        if not head.chunked and not head.content_length:
            return None
        limits = t.cfg.proxy.limits
        return RequestBody(receive, max_bytes=limits.max_body_bytes if max_bytes is None else max_bytes,
                           deadline=time.monotonic() + limits.read_timeout, length=head.content_length)

    async def _forward(self, t: GateTables, scope: Scope, receive: Receive, send: Send, head: RequestHead, path: str,
                       verified: VerifiedToken | None, decision: Decision, body: RequestBody | None = None) -> None:
        if decision.reason == reasons.PREFLIGHT:
            # Passed without a token, so it carries nothing the client chose beyond the CORS request headers: no
            # body (a preflight has none; an unread one is framed away by the server) and no credentials.
            body = None
            headers = t.headers.preflight_headers(head, scope)
        else:
            if body is None:
                body = self._body(t, receive, head)
            # The route's claim headers; a claim that cannot be sent is a 401 bad_claims before anything is sent.
            headers = t.headers.upstream_headers(head, scope, verified, decision.route)
        query = head.query.decode("latin-1")
        target = path + ("?" + query if query else "")
        started = time.perf_counter()
        try:
            if t.echo:
                decision.status = await echo(head.method, path, query, headers, body, send)
                decision.response_started = True
            else:
                if t.forwarder is None:
                    raise GateError(503, reasons.UPSTREAM_UNAVAILABLE, "The proxy is not started.")
                await t.forwarder.forward(head.method, target, headers, body, send, decision)
        finally:
            decision.upstream_duration = time.perf_counter() - started
