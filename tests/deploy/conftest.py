"""The e2e harness (tests/e2e/conftest.py) starts the real process here too."""

from tests.e2e.conftest import scopegate

__all__ = ["scopegate"]
