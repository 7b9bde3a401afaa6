"""The HTTP API: a Starlette app over the store (`app.create_app`). It never imports
torch; it talks to the runner only through the database and the outbox."""

from .app import create_app

__all__ = ["create_app"]
