from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.authz.management.kit import Api, build_api


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    async for built in build_api(tmp_path):
        yield built
