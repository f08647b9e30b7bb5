"""Fixtures the integration test modules share; a module that needs a differently configured one defines its own."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration import labkit
from tests.integration.apiserver import ServerProcess, running_server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One `kwire server` (SQLite, every add-on) per test module, driven with the real kubectl."""
    with running_server(tmp_path_factory.mktemp("server")) as srv:
        yield srv


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failing test's report carries the log tails of the labs this process has up (taking a lab down removes
    its logs, so a red CI run would otherwise show no agent's or server's own words)."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.failed and call.when in ("setup", "call"):
        for name in sorted(labkit.ACTIVE):
            report.sections.append((f"lab {name}: log tails", labkit.log_tails(name)))
