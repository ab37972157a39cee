"""The clock tests move by hand: anything that checks time takes a ``now`` callable, and no unit test sleeps."""

from __future__ import annotations

T0 = 1_800_000_000.0


class Clock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds
