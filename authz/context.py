"""What every core endpoint needs, built once by the process wiring (``proxy/server.py``) and passed in."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from authz.authfailures import ClientAuthFailures
from authz.lockout import SignInThrottle
from config.schema import ScopegateConfig

if TYPE_CHECKING:
    from authz.metrics import TokenMetrics
    from authz.revocation import RevocationState
    from authz.store.base import Store
    from authz.syslog import SystemLog


async def _no_refresh() -> None:
    return None


@dataclass
class CoreContext:
    config: ScopegateConfig
    """The configuration the process started with (issuer base URL, admin tokens, listeners)."""
    store: Store
    syslog: SystemLog
    revocation: RevocationState
    now: Callable[[], float] = time.time
    refresh_revocations: Callable[[], Awaitable[None]] = field(default=_no_refresh)
    """Apply the change feed now. A revoking endpoint awaits it after committing, so that the proxy in
    the same process refuses the token before the revoking request returns (issue 4)."""
    auth_failures: ClientAuthFailures | None = None
    """Failed client authentications (security.md §4.1 back-off); built from ``config.core`` if not given."""
    token_metrics: TokenMetrics | None = None
    """Tokens issued and denied, on the ops listener's registry (``authz/metrics.py``); none in unit tests."""

    sign_in_throttle: SignInThrottle | None = None
    """Failed sign-ins at the /authorize form per username and source (issue 8 item 5); from ``config.core``."""

    def __post_init__(self) -> None:
        if self.auth_failures is None:
            self.auth_failures = ClientAuthFailures.from_settings(self.config.core)
        if self.sign_in_throttle is None:
            self.sign_in_throttle = SignInThrottle.from_settings(self.config.core)

    def issuer_for(self, as_id: str) -> str:
        return self.config.issuer_for(as_id)
