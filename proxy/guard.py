"""Step 1 of the gate: the parse guard. What reaches ASGI is checked before anything else.

uvicorn's httptools parser already refuses some malformed framing (CL+TE, bad chunk sizes) and reduces an
absolute-form target to its path; h11 does less (security.md §0.4). Either way this guard checks the
request as the app sees it, so the decision does not depend on which parser ran:

- ambiguous framing: both ``Content-Length`` and ``Transfer-Encoding``, a repeated or malformed
  ``Content-Length``, a ``Transfer-Encoding`` other than one ``chunked`` → 400 and the connection closed
  (RFC 9112 §6.1: a server that processes such a message "MUST close the connection after responding");
- NUL, CR or LF in a header value (obs-fold included: RFC 9112 §5.2 lets a server reject it) → 400;
- ``_``, ``.`` or other punctuation in the name of an identity, forwarding, claim (``proxy.identity.claims``,
  ``routes[].claims``) or ``proxy.stripHeaders`` header or under a ``stripHeaders`` prefix (CGI-style backends
  fold ``_`` into ``-``, Apache any non-alphanumeric) → 400; other such names are dropped before forwarding, as
  nginx does by default;
- a repeated ``Host`` (a decision input: security.md §3.3 "Reject duplicates of any header used for a
  decision") → 400;
- a fragment in the target → 400; an absolute-form target (RFC 9112 §3.2.2: "a server MUST accept the
  absolute-form") is reduced to its path, and its authority chooses nothing;
- a method that is not an upper-case token → 400 (security.md §3.1: lowercase methods);
- CONNECT → 405 and the connection closed: the proxy never tunnels (issue 8 items 1, 16);
- an ``Upgrade`` header on an HTTP request → 400 and the connection closed (issue 8 item 1): a valid
  WebSocket handshake arrives as a ``websocket`` scope, so this is an upgrade the server did not take, whose
  body httptools skips; ``proxy/protocol.py`` refuses those before the app already, this is the backstop;
- HTTP/0.9, and HTTP/1.1 without ``Host`` → 400 (RFC 9112 §3.2: "A server MUST respond with a 400 (Bad
  Request) status code to any HTTP/1.1 request message that lacks a Host header field"); a ``Host`` that is
  not ``host[:port]`` (RFC 3986 §3.2.2-3.2.3) → 400, since it becomes ``X-Forwarded-Host``;
- too many or too large headers → 431, a target over the limit → 414, a declared body over the limit →
  413 and the connection closed (security.md §3.6), all before any token work.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from authz.errors import GateError
from config.headers import FORWARDING, FORWARDING_PREFIXES, GATEWAY_IDENTITIES, HOP_BY_HOP
from config.schema import Identity, Limits
from config.schema import Route as RouteConfig
from proxy import reasons
from proxy.routes import FORWARDED_METHODS

_METHOD = re.compile(r"[A-Z]{1,20}")
_REG_NAME_CHAR = r"[A-Za-z0-9\-._~!$&'()*+;=]|%[0-9A-Fa-f]{2}"
_HOST = re.compile(rf"(?:(?:{_REG_NAME_CHAR})+|\[(?P<literal>[0-9A-Fa-f:.]+|v[0-9A-Fa-f]+\.(?:[A-Za-z0-9\-._~!$&'()*+;=:])+)\])"
                   r"(?::[0-9]{1,5})?")
"""RFC 3986 §3.2.2-3.2.3 ``host [ ":" port ]``: a reg-name (an IPv4 address is one too) or an IP-literal, and
a non-empty port. The sub-delim ``,`` is left out: it separates the values of ``X-Forwarded-Host``, where
this Host ends up, and no DNS name holds one."""
_FORWARDING = FORWARDING | GATEWAY_IDENTITIES
"""Forwarding, rewrite, method-override and client-address headers, and other gateways' identities
(``config/headers.py``: the config refuses claim headers of the first kinds)."""
_PROTECTED_PREFIXES = (
    "x-scopegate-", *FORWARDING_PREFIXES,
    "x-user-", "x-auth-",                        # security.md §3.3 "X-User*, X-Auth-*" (oauth2-proxy X-Auth-Request-*)
    "x-authenticated-", "x-consumer-",           # Kong
    "x-ms-client-principal",                     # Azure App Service authentication
    "x-goog-authenticated-user-", "x-goog-iap-",  # Google IAP
    "x-amzn-oidc-",                              # AWS ALB
    "cf-access-",                                # Cloudflare Access
    "x-webauth-",                                # Grafana's auth proxy default
    "x-pomerium-",                               # Pomerium
)

_FOLD = bytes(c + 32 if 0x41 <= c <= 0x5A else c if (0x30 <= c <= 0x39 or 0x61 <= c <= 0x7A or c == 0x2D) else 0x2D
              for c in range(256))
"""Header-name folding as backends do it: lower case, and every byte other than a letter, digit or '-' as '-'
(CGI turns '-' into '_', so '_' reads as '-'; Apache's CGI environment maps any non-alphanumeric to '_')."""
_PLAIN_NAME_BYTES = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-"


def fold_name(name: bytes) -> str:
    """The name a folding backend reads: ``X.Scopegate_Subject`` → ``x-scopegate-subject``."""
    return name.translate(_FOLD).decode("latin-1")


def is_plain_name(name: bytes) -> bool:
    """Letters, digits and '-' only: the names the proxy forwards (nginx's default ``ignore_invalid_headers``)."""
    return not name.translate(None, _PLAIN_NAME_BYTES)


@dataclass(frozen=True, slots=True)
class Protected:
    """Header names (lower-case, ``-`` spelling) a client may never send to the upstream, and name prefixes."""

    names: frozenset[str]
    prefixes: tuple[str, ...]

    def __contains__(self, canonical: object) -> bool:
        return canonical in self.names or (isinstance(canonical, str) and canonical.startswith(self.prefixes))


def protected_names(identity: Identity, strip_headers: Iterable[str] = (), routes: Iterable[RouteConfig] = ()
                    ) -> Protected:
    """The built-in list, the identity headers, every claim header (global and per route, so a route without
    claims still never forwards a client's copy) and ``proxy.stripHeaders`` (a ``*`` entry is a prefix)."""
    configured = {identity.subject_header, identity.client_id_header, identity.scopes_header,
                  identity.auth_server_header, *identity.claims}
    for route in routes:
        configured.update(route.claims or ())
    prefixes = []
    for name in strip_headers:
        if name.endswith("*"):
            prefixes.append(fold_name(name[:-1].encode("latin-1")))
        else:
            configured.add(name)
    return Protected(_FORWARDING | {fold_name(name.encode("latin-1")) for name in configured},
                     _PROTECTED_PREFIXES + tuple(prefixes))


def is_protected(canonical: str, protected: Protected) -> bool:
    return canonical in protected


@dataclass(slots=True)
class RequestHead:
    """What the guard learned from the request line and headers, once."""

    method: str
    raw_path: bytes
    """Origin-form path, without the query."""
    query: bytes
    host: str | None
    authorization: list[bytes]
    content_length: int | None
    chunked: bool
    form: bool
    preflight: bool
    headers: list[tuple[bytes, bytes]]
    forward: list[tuple[str, str]]
    """The client's headers that may go to the upstream, in order (forward.py's steps (1) and (2), less the names
    ``Connection`` lists): found in the same scan that checks them."""
    connection_named: frozenset[str] | set[str] = frozenset()
    """Lower-case names the client's ``Connection`` headers list (hop-by-hop for this request)."""


_AUTHORIZATION, _HOST_NAME, _CONTENT_LENGTH, _TRANSFER_ENCODING, _CONTENT_TYPE, _ORIGIN, _ACRM, _UPGRADE = 1, 2, 3, 4, 5, 6, 7, 8
_CONNECTION, _REFUSED = 9, 10
_KINDS = {b"authorization": _AUTHORIZATION, b"host": _HOST_NAME, b"content-length": _CONTENT_LENGTH,
          b"transfer-encoding": _TRANSFER_ENCODING, b"content-type": _CONTENT_TYPE, b"origin": _ORIGIN,
          b"access-control-request-method": _ACRM, b"upgrade": _UPGRADE, b"connection": _CONNECTION}
"""The names the guard reads; any other is kind 0 (only forwarded or not), or ``_REFUSED``."""


class ParseGuard:
    _MAX_NAMES = 1024
    """Bound on the memo of client header names (they are client-chosen: the memo must not grow without end)."""

    def __init__(self, limits: Limits, identity: Identity, strip_headers: Iterable[str] = (),
                 routes: Iterable[RouteConfig] = ()) -> None:
        self.limits = limits
        self.protected = protected_names(identity, strip_headers, routes)
        self.forward_authorization = identity.forward_authorization
        self._names: dict[bytes, tuple[int, str | None]] = {}
        """Raw header name → (its kind, the name it is forwarded under or None): each name is classified once."""

    def _classify(self, raw_name: bytes) -> tuple[int, str | None]:
        """A name's kind, and forward.py's steps (1) and (2) for it: None when hop-by-hop, spelled with '_', '.'
        or other punctuation, protected, or a withheld token."""
        kind = _KINDS.get(raw_name, 0)
        name = raw_name.decode("latin-1")
        kept: str | None = name
        if not is_plain_name(raw_name):
            kept = None
            if is_protected(fold_name(raw_name), self.protected):
                kind = _REFUSED
        elif (name in HOP_BY_HOP or is_protected(name, self.protected)
              or (kind == _AUTHORIZATION and not self.forward_authorization)):
            kept = None
        if len(self._names) < self._MAX_NAMES:
            self._names[raw_name] = (kind, kept)
        return kind, kept

    def check(self, scope: Mapping[str, Any]) -> RequestHead:
        limits = self.limits
        method: str = scope["method"]
        if not _METHOD.fullmatch(method):
            raise GateError(400, reasons.BAD_METHOD, "The request method must be an upper-case token.")
        if method == "CONNECT":
            raise GateError(405, reasons.METHOD_NOT_ALLOWED, "CONNECT is not supported.", close=True,
                            headers={"Allow": FORWARDED_METHODS})
        # ASGI's raw_path excludes the query, but some servers and test transports include it.
        raw_path: bytes = (scope.get("raw_path") or scope["path"].encode("utf-8")).partition(b"?")[0]
        query: bytes = scope.get("query_string", b"")
        if len(raw_path) + len(query) + 1 > limits.max_target_bytes:
            raise GateError(414, reasons.TARGET_TOO_LONG, "The request target is too long.", close=True)
        if b"#" in raw_path or b"#" in query:
            raise GateError(400, reasons.BAD_PATH, "The request target must not carry a fragment.")
        if not raw_path.startswith(b"/"):
            raw_path = _origin_form(raw_path)

        headers: list[tuple[bytes, bytes]] = scope["headers"]
        if len(headers) > limits.max_headers:
            raise GateError(431, reasons.HEADERS_TOO_LARGE, "The request has too many headers.", close=True)
        total = 0
        host: str | None = None
        hosts = 0
        authorization: list[bytes] = []
        content_lengths: list[bytes] = []
        transfer_encodings: list[bytes] = []
        form = False
        origin = False
        acrm = False
        upgrade = False
        forward: list[tuple[str, str]] = []
        connection_named: set[str] | None = None
        names = self._names
        for name, value in headers:
            total += len(name) + len(value) + 4
            if b"\x00" in value or b"\r" in value or b"\n" in value:
                raise GateError(400, reasons.BAD_HEADER, "A header value contains a control character.", close=True)
            kind, kept = names.get(name) or self._classify(name)
            if kind:
                if kind == _AUTHORIZATION:
                    authorization.append(value)
                elif kind == _HOST_NAME:
                    hosts += 1
                    host = value.decode("latin-1")
                elif kind == _CONTENT_LENGTH:
                    content_lengths.append(value)
                elif kind == _TRANSFER_ENCODING:
                    transfer_encodings.append(value)
                elif kind == _CONTENT_TYPE:
                    # Any Content-Type naming a form makes it one: with two, the upstream may read either.
                    form = form or value[:33].lower() == b"application/x-www-form-urlencoded"
                elif kind == _ORIGIN:
                    origin = True
                elif kind == _ACRM:
                    acrm = True
                elif kind == _UPGRADE:
                    upgrade = True
                elif kind == _CONNECTION:
                    if connection_named is None:
                        connection_named = set()
                    connection_named.update(t.strip().lower() for t in value.decode("latin-1").split(","))
                else:
                    raise GateError(400, reasons.BAD_HEADER,
                                    "Identity and forwarding headers cannot be spelled with '_', '.' or other punctuation.")
            if kept is not None:
                forward.append((kept, value.decode("latin-1")))
        if total > limits.max_header_bytes:
            raise GateError(431, reasons.HEADERS_TOO_LARGE, "The request headers are too large.", close=True)
        if hosts > 1:
            raise GateError(400, reasons.BAD_HEADER, "The request carries more than one Host header.", close=True)
        _check_protocol(scope, host, upgrade)

        content_length = _content_length(content_lengths)
        chunked = False
        if transfer_encodings:
            if content_lengths:
                raise GateError(400, reasons.BAD_FRAMING, "Content-Length and Transfer-Encoding together are ambiguous.",
                                close=True)
            if len(transfer_encodings) > 1 or transfer_encodings[0].strip().lower() != b"chunked":
                raise GateError(400, reasons.BAD_FRAMING, "Only 'Transfer-Encoding: chunked' is accepted.", close=True)
            chunked = True
        if content_length is not None and content_length > limits.max_body_bytes:
            raise GateError(413, reasons.TOO_LARGE, "The request body is too large.", close=True)
        if connection_named:
            forward = [(name, value) for name, value in forward if name not in connection_named]
        return RequestHead(method, raw_path, query, host, authorization, content_length, chunked, form,
                           method == "OPTIONS" and origin and acrm, headers, forward, connection_named or frozenset())


def _check_protocol(scope: Mapping[str, Any], host: str | None, upgrade: bool) -> None:
    """Upgrade on an HTTP request, HTTP/0.9, a missing or malformed Host (see the module docstring)."""
    if upgrade and scope.get("type") == "http":
        raise GateError(400, reasons.BAD_FRAMING, "Only a WebSocket handshake may carry Upgrade.", close=True)
    version = scope.get("http_version", "1.1")
    if version == "0.9":
        raise GateError(400, reasons.BAD_FRAMING, "HTTP/0.9 is not supported.", close=True)
    if host is None:
        if version != "1.0":
            raise GateError(400, reasons.BAD_HEADER, "An HTTP/1.1 request must carry Host.", close=True)
    elif not is_valid_host(host):
        raise GateError(400, reasons.BAD_HEADER, "The Host header is not a host[:port].", close=True)


def is_valid_host(value: str) -> bool:
    """``host[:port]`` per RFC 3986 (reg-name without ``,``, IPv4, or a bracketed IPv6/IPvFuture literal)."""
    match = _HOST.fullmatch(value)
    if match is None:
        return False
    literal = match["literal"]
    if literal is not None and literal[0] not in "vV":
        try:
            ipaddress.IPv6Address(literal)
        except ValueError:
            return False
    return True


def _content_length(values: Iterable[bytes]) -> int | None:
    values = list(values)
    if not values:
        return None
    if len(values) > 1:
        raise GateError(400, reasons.BAD_FRAMING, "The request repeats Content-Length.", close=True)
    value = values[0]
    if not value.isdigit() or len(value) > 18:
        raise GateError(400, reasons.BAD_FRAMING, "The Content-Length is malformed.", close=True)
    return int(value)


def _origin_form(target: bytes) -> bytes:
    """RFC 9112 §3.2.2: keep the path of an absolute-form target; its authority is ignored."""
    lowered = target[:8].lower()
    for scheme in (b"http://", b"https://"):
        if lowered.startswith(scheme):
            rest = target[len(scheme):]
            slash = rest.find(b"/")
            return b"/" if slash < 0 else rest[slash:]
    return target
