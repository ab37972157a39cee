"""Client secrets and user passwords at rest: scrypt hashes, constant-time verification.

Issue 8 item 5: every scrypt runs on one bounded pool of its own (``HashingPool``), never in asyncio's
default thread pool, which carries the store calls of every request. Once ``threads + queue`` hashes are
in flight, ``verify_secret`` sheds the request with ``HashingBusy`` (503 ``temporarily_unavailable`` and
Retry-After on the protocol endpoints) instead of queueing without bound: a flood of wrong passwords then
costs the flooder refusals, not everyone else latency.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from authz.errors import OAuthError

T = TypeVar("T")

# scrypt parameters: n=2**14, r=8, p=1 is the interactive-login setting of the scrypt paper (~16 MiB).
_N, _R, _P, _LEN = 2**14, 8, 1, 32

BUSY = "The server is busy verifying credentials. Please try again later."


class HashingBusy(OAuthError):
    """Every hashing thread is busy and the queue is full: RFC 6749 §4.1.2.1's ``temporarily_unavailable``,
    answered 503 with Retry-After (RFC 9110 §15.6.4) by the token, introspection and revocation endpoints."""

    def __init__(self, retry_after: int = 1) -> None:
        super().__init__("temporarily_unavailable", BUSY, status_code=503, reason="hashing_saturated",
                         headers={"Retry-After": str(retry_after)})


class HashingPool:
    """A bounded executor for password and secret hashing, with load shedding.

    ``threads`` hashes run at once (hashlib.scrypt releases the GIL, so they run in parallel with the event
    loop); up to ``queue`` more wait. A hash beyond that is refused at once with ``HashingBusy`` unless the
    caller asks to wait (``shed=False``: configuration reloads and admin writes, which must not fail for a
    flood they did not cause). ``shed`` counts the refusals.
    """

    def __init__(self, threads: int = 2, queue: int = 8) -> None:
        self.threads = threads
        self.queue = queue
        self.capacity = threads + queue
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="scopegate-hash")
        self._lock = threading.Lock()
        self.in_flight = 0
        self.shed = 0
        """Hashes refused since start (``HashingBusy``)."""

    def _admit(self, shed: bool) -> None:
        with self._lock:
            if shed and self.in_flight >= self.capacity:
                self.shed += 1
                raise HashingBusy()
            self.in_flight += 1

    def _release(self, _: object = None) -> None:
        with self._lock:
            self.in_flight -= 1

    def _submit(self, func: Callable[..., T], args: tuple[Any, ...], shed: bool) -> Future[T]:
        self._admit(shed)
        try:
            future = self._executor.submit(func, *args)
        except BaseException:
            self._release()
            raise
        # Released when the hash is done, not when the caller stops waiting: a cancelled request's scrypt
        # still occupies its thread.
        future.add_done_callback(self._release)
        return future

    def run(self, func: Callable[..., T], *args: Any, shed: bool = True) -> T:
        """Run ``func`` on the pool and wait for it (from a worker thread; blocks the caller)."""
        if threading.current_thread().name.startswith("scopegate-hash"):
            return func(*args)  # already on the pool: submitting again could wait for ourselves
        return self._submit(func, args, shed).result()

    async def arun(self, func: Callable[..., T], *args: Any, shed: bool = True) -> T:
        """Run ``func`` on the pool from the event loop, holding no other thread while it waits."""
        return await asyncio.wrap_future(self._submit(func, args, shed))

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=False)


_pool: HashingPool | None = None
_pool_lock = threading.Lock()


def hashing_pool() -> HashingPool:
    """The process's hashing pool (2 threads, a queue of 8 until ``configure_hashing`` says otherwise)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = HashingPool()
        return _pool


def configure_hashing(threads: int, queue: int) -> HashingPool:
    """Use a pool of ``threads`` and ``queue`` (``core.hashingThreads``, ``core.hashingQueue``) from now on."""
    global _pool
    with _pool_lock:
        if _pool is not None and (_pool.threads, _pool.queue) == (threads, queue):
            return _pool
        old, _pool = _pool, HashingPool(threads, queue)
    if old is not None:
        old.close()
    return _pool


def hash_secret(secret: str) -> str:
    """``scrypt$n$r$p$salt$hash`` (base64url), safe to store and to log. Runs on the hashing pool and waits
    for it (admin writes and configuration loads are not shed)."""
    return hashing_pool().run(_hash_secret, secret, shed=False)


def _hash_secret(secret: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(secret.encode(), salt=salt, n=_N, r=_R, p=_P, dklen=_LEN)
    return "$".join(["scrypt", str(_N), str(_R), str(_P), _b64(salt), _b64(digest)])


def verify_secret(secret: str, stored: str | None, *, shed: bool = True) -> bool:
    """True if ``secret`` matches ``stored``; compares in constant time and never raises on bad input.

    Runs on the hashing pool; raises ``HashingBusy`` when the pool is saturated (unless ``shed`` is False).
    """
    return hashing_pool().run(_verify_secret, secret, stored, shed=shed)


async def averify_secret(secret: str, stored: str | None) -> bool:
    """``verify_secret`` from the event loop: no default-pool thread waits for the hash."""
    return await hashing_pool().arun(_verify_secret, secret, stored)


def _verify_secret(secret: str, stored: str | None) -> bool:
    if stored is None:
        # Burn comparable time so that "no such client" and "wrong secret" are indistinguishable.
        hashlib.scrypt(secret.encode(), salt=b"\0" * 16, n=_N, r=_R, p=_P, dklen=_LEN)
        return False
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        candidate = hashlib.scrypt(secret.encode(), salt=_unb64(salt), n=int(n), r=int(r), p=int(p),
                                   dklen=len(_unb64(digest)))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(candidate, _unb64(digest))


def token_hash(value: str) -> str:
    """Lookup key for high-entropy opaque values (refresh tokens, codes): SHA-256 is enough, and fast."""
    return hashlib.sha256(value.encode()).hexdigest()


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
