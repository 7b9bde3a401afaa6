"""Client options: a dialect's per-client settings (A1111's checkpoint and options
object), by owner."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from sqlalchemy import Connection, delete, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite

from ._base import Repository
from .tables import ClientOption


class Options(Repository):
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

    def client_options(self, owner: str | None, name: str) -> dict[str, Any]:
        """The owner's JSON object option `name` ({} if it set none)."""
        return _object(self.client_option(owner, name))

    def merge_client_options(
        self,
        owner: str | None,
        name: str,
        changes: Mapping[str, Any],
        *,
        also: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """Set some keys of the owner's JSON object option `name`, keeping the others:
        one transaction that holds the row, so two API nodes' changes to different keys
        both stay; and, in the same transaction, the plain options `also`. Returns the
        whole object."""
        owner_key = owner or ""

        def work(conn: Connection) -> dict[str, Any]:
            for plain, value in (also or {}).items():
                conn.execute(
                    delete(ClientOption).where(
                        ClientOption.owner == owner_key, ClientOption.name == plain
                    )
                )
                conn.execute(insert(ClientOption).values(owner=owner_key, name=plain, value=value))
            make = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
            conn.execute(
                make(ClientOption)
                .values(owner=owner_key, name=name, value="{}")
                .on_conflict_do_nothing(index_elements=[ClientOption.owner, ClientOption.name])
            )
            held = select(ClientOption.value).where(
                ClientOption.owner == owner_key, ClientOption.name == name
            )
            merged = {**_object(conn.scalar(held.with_for_update())), **changes}
            conn.execute(
                update(ClientOption)
                .where(ClientOption.owner == owner_key, ClientOption.name == name)
                .values(value=json.dumps(merged))
            )
            return merged

        return self.db.write(work)


def _object(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    value = json.loads(text)
    return value if isinstance(value, dict) else {}
