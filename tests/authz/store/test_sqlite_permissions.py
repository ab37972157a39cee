"""State-file exposure: the SQLite store holds private signing keys, secret hashes and the system log, so its
directory is the user's alone (0700) and the database and its -wal and -shm files are 0600, whatever the umask."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from authz.store.base import open_store


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(params=[0o022, 0o000], ids=["umask-022", "umask-000"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def test_state_file_exposure_new_store_is_private(tmp_path: Path, umask: int) -> None:
    """A new store's directory is 0700 and the database, -wal and -shm files are 0600 (they were 0644)."""
    store = open_store(f"sqlite:///{tmp_path}/state/state.db")
    store.put_object("group", "g", {}, "config")  # a write: the -wal and -shm files exist while it is open
    try:
        state = tmp_path / "state"
        assert mode(state) == 0o700
        files = {name: mode(state / name) for name in ("state.db", "state.db-wal", "state.db-shm")}
        assert files == dict.fromkeys(files, 0o600)
    finally:
        store.close()


def test_state_file_exposure_old_world_readable_files_are_tightened(tmp_path: Path, umask: int) -> None:
    """Files an older version created 0644 are made 0600 when the store opens them again."""
    url = f"sqlite:///{tmp_path}/state.db"
    open_store(url).close()
    for name in ("state.db", "state.db-wal", "state.db-shm"):
        (tmp_path / name).touch()
        (tmp_path / name).chmod(0o644)
    store = open_store(url)
    try:
        assert {name: mode(tmp_path / name) for name in ("state.db", "state.db-wal", "state.db-shm")} == {
            "state.db": 0o600, "state.db-wal": 0o600, "state.db-shm": 0o600}
    finally:
        store.close()


def test_state_file_exposure_existing_directory_is_left_alone(tmp_path: Path) -> None:
    """An existing parent (a mounted volume, /tmp) keeps its mode: only what the store creates is narrowed."""
    tmp_path.chmod(0o1777)
    store = open_store(f"sqlite:///{tmp_path}/state.db")
    store.close()
    assert mode(tmp_path) == 0o1777
    assert mode(tmp_path / "state.db") == 0o600
