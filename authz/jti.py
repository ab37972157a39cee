"""Token ids that carry their place in the issued-token order.

A watermark revokes "every token of client C issued before point P" (DESIGN §4). Timestamps cannot
draw that line: ``iat`` has one-second resolution, and a token minted in the same second as a change
must stay valid (no false positives). So every token's ``jti`` embeds the store-allocated sequence
number, and the revocation state compares it with the watermark using the token's claims alone.
"""

from __future__ import annotations

import secrets

PREFIXES = ("AT", "ID", "RT")


def make_jti(prefix: str, seq: int) -> str:
    """``AT.<seq in hex>.<random>``; the random part keeps ids unguessable."""
    if prefix not in PREFIXES or seq < 0:
        raise ValueError(f"bad jti prefix {prefix!r} or seq {seq}")
    return f"{prefix}.{seq:x}.{secrets.token_urlsafe(16)}"


def seq_of(jti: object) -> int | None:
    """The sequence number embedded in a jti minted here, or None for any other value."""
    if not isinstance(jti, str) or len(jti) > 128:
        return None
    parts = jti.split(".")
    if len(parts) != 3 or parts[0] not in PREFIXES:
        return None
    try:
        return int(parts[1], 16)
    except ValueError:
        return None
