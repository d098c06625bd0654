"""Fixtures of the end-to-end tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.ha_world import Started


@pytest.fixture
def started() -> Iterator[Started]:
    """Processes a test starts, all stopped when it ends, however it ends."""
    things = Started()
    yield things
    things.close()
