"""``Scopegate.reload`` (SIGHUP) when the store cannot take the new file: refused in one line, never an
exception escaping the signal's task (which asyncio reports only as "Task exception was never retrieved")."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from authz.errors import ScopegateError
from config import load_config
from proxy import server


async def test_a_reload_the_store_cannot_take_is_refused_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "scopegate.yaml"
    path.write_text("routes: [{name: public, path: /p, public: true}]\n")

    def unavailable(*args: Any) -> None:
        raise ScopegateError("database is locked")

    monkeypatch.setattr(server, "reconcile", unavailable)
    gate = server.Scopegate(load_config(path), str(path))
    gate.store = object()  # type: ignore[assignment]
    gate.proxy_app = object()  # type: ignore[assignment]
    await gate.reload()
    err = capsys.readouterr().err
    assert "reload refused" in err and "database is locked" in err
    assert err.count("\n") == 1
