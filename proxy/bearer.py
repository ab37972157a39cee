"""Step 5 of the gate: the bearer token, from the ``Authorization`` header only (RFC 6750 §2.1).

- The scheme is case-insensitive (RFC 9110 §11.1); the credentials are ``"Bearer" 1*SP b64token``.
- Anything else after the scheme (``Bearer a b``, ``Bearer a,b``, nothing at all) is malformed: 400
  ``invalid_request`` (RFC 6750 §3.1: "The request is missing a required parameter ... or is otherwise
  malformed").
- Two ``Authorization`` headers, or a token in the header and also in the query or a form body: 400
  ``invalid_request`` (RFC 6750 §2: "Clients MUST NOT use more than one method to transmit the token in
  each request"). A token only in the query or body counts as no credentials: those methods are off.
- No credentials, or another scheme: 401 with a bare challenge (RFC 6750 §3.1: "the resource server
  SHOULD NOT include an error code or other error information").
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from authz.errors import BearerError
from proxy import reasons

_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
_B64TOKEN_BYTES = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+/"
"""The common case is checked on the raw header with ``bytes.translate`` (a regex costs ~6 ns per byte of a
1 KiB token): ``Bearer``, any case, spaces, a b64token. Whatever it accepts, the full checks below accept
too, with the same token; whatever it refuses goes through them."""


def extract_bearer(authorization: Sequence[bytes], *, other_method: bool, realm: str) -> str:
    """The token of the single ``Authorization: Bearer`` header, or a ``BearerError``.

    ``other_method`` says the token also appears in the query string or a form body.
    """
    if len(authorization) == 1 and not other_method:
        raw = authorization[0]
        if raw[:7].lower() == b"bearer ":
            candidate = raw[7:].lstrip(b" ")
            body = candidate.rstrip(b"=")
            if body and not body.translate(None, _B64TOKEN_BYTES):
                return candidate.decode("ascii")
    if len(authorization) > 1:
        raise BearerError("invalid_request", "The request carries more than one Authorization header.",
                          realm=realm, reason=reasons.INVALID_REQUEST)
    if not authorization:
        raise BearerError(None, realm=realm, reason=reasons.MISSING_TOKEN)
    value = authorization[0].decode("latin-1")
    scheme, _, rest = value.partition(" ")
    if scheme.lower() != "bearer":
        raise BearerError(None, realm=realm, reason=reasons.MISSING_TOKEN)
    token = rest.lstrip(" ")
    if not _B64TOKEN.fullmatch(token):
        raise BearerError("invalid_request", "The Authorization header is not 'Bearer <token>'.",
                          realm=realm, reason=reasons.INVALID_REQUEST)
    if other_method:
        raise BearerError("invalid_request", "The access token was sent in more than one way.",
                          realm=realm, reason=reasons.INVALID_REQUEST)
    return token
