"""Step 8 of the gate: is the validated token revoked, and is our knowledge of revocations fresh?

The state itself lives in ``authz/revocation.py`` (explicit revocations by ``(iss, jti)`` and
watermarks, DESIGN §4); the gate only asks it two questions, in memory, with no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol


class RevocationLike(Protocol):
    def is_revoked(self, claims: Mapping[str, Any]) -> bool:
        """True when the token with these (validated) claims is revoked, by ``(iss, jti)`` or a watermark.

        Never keyed on the token string: a re-padded or malleated signature is the same token
        (security.md §0.3, J14)."""
        ...

    def is_stale(self, now: float) -> bool:
        """True when the change feed has not been applied for longer than ``revocation.maxStaleness``."""
        ...
