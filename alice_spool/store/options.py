"""Client options: a dialect's per-client settings (A1111's checkpoint), by owner."""

from __future__ import annotations

from sqlalchemy import Connection, delete, insert, select

from ..models import ClientOption
from ._base import StoreBase


class Options(StoreBase):
    def client_option(self, owner: str | None, name: str) -> str | None:
        """The owner's setting (None: the admin's), if it set one."""
        query = select(ClientOption.value).where(
            ClientOption.owner == (owner or ""), ClientOption.name == name
        )
        return self.db.read(lambda conn: conn.scalar(query))

    def set_client_option(self, owner: str | None, name: str, value: str) -> None:
        key = {"owner": owner or "", "name": name}

        def work(conn: Connection) -> None:
            conn.execute(
                delete(ClientOption).where(
                    ClientOption.owner == key["owner"], ClientOption.name == name
                )
            )
            conn.execute(insert(ClientOption).values(**key, value=value))

        self.db.write(work)
