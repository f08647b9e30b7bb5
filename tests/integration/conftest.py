"""Fixtures the integration test modules share; a module that needs a differently configured one defines its own."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.apiserver import ServerProcess, running_server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One `kwire server` (SQLite, every add-on) per test module, driven with the real kubectl."""
    with running_server(tmp_path_factory.mktemp("server")) as srv:
        yield srv
