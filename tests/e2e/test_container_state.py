"""What the container image relies on: with no writable state directory, `scopegate run` stops at once with
one line and a non-zero status (a read-only root filesystem without a state volume), never a traceback."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.e2e.conftest import scopegate_command

pytestmark = pytest.mark.e2e


def test_unwritable_state_dir_builtin_demo_is_one_line(tmp_path: Path) -> None:
    """The built-in demo's state directory (./.scopegate) cannot be made: one line, exit 2, nothing bound."""
    (tmp_path / ".scopegate").write_text("")  # what a read-only root does to mkdir, without needing non-root
    done = subprocess.run([*scopegate_command(), "run"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [
        f"scopegate: cannot open store sqlite:///.scopegate/state.db: cannot create directory "
        f"{tmp_path}/.scopegate: File exists"]
