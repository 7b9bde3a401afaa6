"""alice-spool: a durable job spool for Stable Diffusion image generation."""

from __future__ import annotations


def __getattr__(name: str) -> str:
    # `__version__` is read on first use: importlib.metadata takes tens of milliseconds to
    # import, and every command imports this package before it can hold a stop signal.
    if name != "__version__":
        raise AttributeError(f"module 'alice_spool' has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        found = version("alice-spool")
    except PackageNotFoundError:  # running from a source tree that is not installed
        found = "0.0.0+unknown"
    globals()["__version__"] = found
    return found
