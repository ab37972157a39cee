"""Fixtures of the attack bench (defined in ``attack_bench.py``, which the tests import helpers from) and
the in-process authorization core of the §4 suite (``as_kit.py``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.authz.oauth_kit import Core
from tests.security.as_kit import core_with
from tests.security.attack_bench import gate, upstream, wire


@pytest.fixture
async def core(tmp_path: Path) -> AsyncIterator[Core]:
    async for built in core_with(tmp_path):
        yield built


__all__ = ["core", "gate", "upstream", "wire"]
