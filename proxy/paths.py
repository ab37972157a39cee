"""Step 2 of the gate: the request path, normalized once.

Route matching, scope checks, the decision log and the forwarded request all use the string this module
returns, so the upstream receives byte for byte the path that was authorized (security.md §0.5: "Canonicalize
once and reject anything ambiguous. Evaluate policy on the canonical path. Forward exactly that canonical
path."). Nothing is collapsed silently (DESIGN §2.2): what cannot be normalized unambiguously is a 400.

- Percent-escapes of unreserved characters are decoded, once (RFC 3986 §6.2.2.2: "should be decoded");
  other escapes keep their octet with upper-case hex digits (RFC 3986 §6.2.2.1).
- Dot segments are removed (RFC 3986 §5.2.4); a ``..`` that would climb above the root is refused.
- Refused: ``%2F`` ``%5C`` ``%00`` (encoded separators and NUL), ``%25`` followed by two hex digits once the
  unreserved escapes are decoded (double encoding, ``%25%32%65`` included), invalid escapes, raw ``\\``, ``;``
  (matrix parameters), ``#``, empty segments (``//``), control characters, spaces and non-ASCII bytes.
"""

from __future__ import annotations

import re

from authz.errors import GateError
from proxy import reasons

_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_FORBIDDEN_DECODED = frozenset({0x2F, 0x5C, 0x00})  # '/', '\', NUL: "reject encoded / \ NUL" (issue 5 step 2)
_HEX = frozenset(b"0123456789abcdefABCDEF")
# pchar (RFC 3986 §3.3) minus ';' (matrix parameters, a known bypass: security.md §3.4) plus '/'.
_ALLOWED_RAW = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,=:@/%")
_DOUBLE_ENCODED = re.compile(rb"%25[0-9A-Fa-f]{2}")
"""An encoded '%' still followed by two hex digits: a second decoder would read an escape there."""
_PLAIN = re.compile(rb"^(?:/[A-Za-z0-9\-_~!$&'()*+,=:@]+(?:\.[A-Za-z0-9\-_~!$&'()*+,=:@]*)*)+/?$|^/$")
"""The common case, already normal: no escapes, no dot segments, no empty segments. Checked in one regex."""


class PathError(GateError):
    def __init__(self, description: str) -> None:
        super().__init__(400, reasons.BAD_PATH, description)


def normalize_path(raw: bytes) -> str:
    """The one normalized form of a request path (without its query), or ``PathError`` (400)."""
    if _PLAIN.match(raw) and b"/." not in raw:
        return raw.decode("ascii")
    if not raw.startswith(b"/"):
        raise PathError("The request path must start with '/'.")
    for byte in raw:
        if byte not in _ALLOWED_RAW:
            raise PathError("The request path contains a character that is not allowed.")
    decoded = _decode_unreserved(raw)
    return _remove_dot_segments(decoded)


def _decode_unreserved(raw: bytes) -> str:
    out = bytearray()
    i, n = 0, len(raw)
    while i < n:
        byte = raw[i]
        if byte != 0x25:  # '%'
            out.append(byte)
            i += 1
            continue
        if i + 3 > n:
            raise PathError("The request path contains an invalid percent-escape.")
        hi, lo = raw[i + 1], raw[i + 2]
        if hi not in _HEX or lo not in _HEX:
            raise PathError("The request path contains an invalid percent-escape.")
        value = int(raw[i + 1:i + 3], 16)
        if value in _FORBIDDEN_DECODED:
            raise PathError("The request path contains an encoded '/', '\\' or NUL.")
        if value in _UNRESERVED:
            out.append(value)
        else:
            out += b"%%%02X" % value
        i += 3
    # Checked on the decoded form, not the raw one: in "%25%32%65" the digits after "%25" are escapes
    # themselves and only become "2e" here, so the raw "%25" + two hex digits test misses it (issue 8 item 8).
    if _DOUBLE_ENCODED.search(out):
        raise PathError("The request path is percent-encoded twice.")
    return out.decode("ascii")


def _remove_dot_segments(path: str) -> str:
    segments = path.split("/")[1:]
    output: list[str] = []
    last = len(segments) - 1
    for index, segment in enumerate(segments):
        if segment == "..":
            if not output:
                raise PathError("The request path climbs above the root.")
            output.pop()
            if index == last:
                output.append("")
        elif segment == ".":
            if index == last:
                output.append("")
        elif segment == "" and index != last:
            raise PathError("The request path contains an empty segment ('//').")
        else:
            output.append(segment)
    return "/" + "/".join(output)
