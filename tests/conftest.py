"""Settings every test shares.

Tests run on one torch thread: the CI box has 2 shared cores, where one thread is faster than
oversubscribed ones, and numbers compared bit for bit (resume, determinism) must not depend on
how many threads a reduction was split over. Tests that need other thread counts set them
themselves; the count is put back to one after each test.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


def pytest_configure(config: pytest.Config) -> None:
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def one_thread():
    yield
    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)


@pytest.fixture
def marker(tmp_path) -> Path:
    """A file that code smuggled into a pickle would create; the test fails if it exists afterwards."""
    path = tmp_path / "MARKER_code_was_executed"
    yield path
    assert not path.exists(), "code from the pickle was executed"
