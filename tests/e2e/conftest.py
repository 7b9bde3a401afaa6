"""The end-to-end tests' shared fixtures."""

from pathlib import Path

import pytest

from tests.support.bare import make_bare
from tests.support.live_server import install_tiny

__all__ = ["make_bare", "tiny_models"]


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models folder with the tiny model, made once per test process, for `serve(...,
    models=tiny_models)`: servers whose tests are not about serve making the model on
    a fresh data dir (tests/e2e/test_working_directory.py's serve makes its own)."""
    return install_tiny(tmp_path_factory.mktemp("tiny-models"))
