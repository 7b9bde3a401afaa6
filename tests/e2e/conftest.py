"""The end-to-end tests' shared fixtures."""

from tests.support.bare import make_bare

__all__ = ["make_bare"]
