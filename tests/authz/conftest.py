from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.authz.oauth_kit import Core, build_core


@pytest.fixture
async def core(tmp_path: Path) -> AsyncIterator[Core]:
    async for built in build_core(tmp_path):
        yield built
