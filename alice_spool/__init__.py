"""alice-spool: a durable job spool for Stable Diffusion image generation."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("alice-spool")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"
