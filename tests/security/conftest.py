"""Fixtures of the attack bench (defined in ``attack_bench.py``, which the tests import helpers from)."""

from __future__ import annotations

from tests.security.attack_bench import gate, upstream, wire

__all__ = ["gate", "upstream", "wire"]
