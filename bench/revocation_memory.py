"""Memory and time of the revocation state with a million explicit revocations (issue 4).

Run: ``python3 bench/revocation_memory.py [N]``. Prints the bytes held (tracemalloc, so the timings are
slower than in production), and what is left after every entry has expired.
"""

from __future__ import annotations

import sys
import time
import tracemalloc

from authz.jti import make_jti
from authz.revocation import RevocationState
from authz.store.base import Change

T0 = 1_800_000_000.0


def main(n: int) -> None:
    clock = [T0]
    state = RevocationState({"https://issuer/oauth2/aus1": "aus1"}, now=lambda: clock[0], leeway=60)
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    started = time.perf_counter()
    for start in range(0, n, 10_000):
        state.apply([Change(seq=i + 1, kind="revoke_jti",
                            data={"as_id": "aus1", "jti": make_jti("AT", i), "exp": T0 + 60 + (i % 3600)},
                            created=T0) for i in range(start, min(n, start + 10_000))])
    applied = time.perf_counter() - started
    held = tracemalloc.get_traced_memory()[0] - base
    clock[0] = T0 + 3600 + 200
    started = time.perf_counter()
    state.purge()
    purged = time.perf_counter() - started
    left = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    print(f"{n} revocations: {held / 2**20:.0f} MiB held ({held / n:.0f} B each), apply {applied:.1f}s; "
          f"after expiry {state.size()} entries, {left / 2**10:.0f} KiB left, purge {purged:.2f}s "
          "(timings under tracemalloc)")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000)
