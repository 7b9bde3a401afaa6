"""API keys and invite codes as rows: a key is made here and shown
once (only its SHA-256 is kept, so it is looked up by hash, never compared as text);
`last used` is written at most once a minute; revoked keys stay listed. An invite is
used up in the same transaction that makes the user key it gives, so two people can
never both spend its last use."""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, delete, func, insert, or_, select, update

from .. import errors
from ..records import InviteRecord, KeyRecord
from ..states import ROLES
from ._base import Repository, new_id, utcnow
from .tables import ApiKey, Invite, WebSession

KEY_PREFIX = "sd-"  # as ALICE's keys
# A key's name, shown in lists, logs and the web UI: plain characters only.
KEY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._@-]{0,63}")
SESSION_HANDLE = 16  # hex digits of a session's SHA-256 that name it to an admin
TOUCH_EVERY = timedelta(minutes=1)  # a key's or a session's last use: written this often
MAX_RATE_LIMIT = 1_000_000  # requests a minute: more is no limit at all, and must fit a column
_KEY_COLUMNS = tuple(c for c in ApiKey.__table__.columns if c.name != "key_sha256")
_INVITE_COLUMNS = tuple(c for c in Invite.__table__.columns if c.name != "code_sha256")


def digest(secret: str) -> str:
    # A lone surrogate (a JSON escape a client sent) hashes instead of failing: it
    # matches no key, which is the answer such a secret deserves.
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def _key(conn: Connection, key: str) -> KeyRecord:
    """A key by id or name."""
    row = conn.execute(
        select(*_KEY_COLUMNS).where(or_(ApiKey.id == key, ApiKey.name == key))
    ).first()
    if row is None:
        raise errors.KeyNotFound(f"no API key {key!r}", key=key)
    return KeyRecord.from_row(row)


class Keys(Repository):
    def add_key(
        self,
        name: str,
        *,
        role: str = "user",
        rate_limit_per_minute: int | None = None,
        created_by: str | None = None,
        reserved: Collection[str] = (),
        now: datetime | None = None,
    ) -> tuple[KeyRecord, str]:
        """A new key: its record and the key itself (shown once; never stored).
        `reserved`: the configured keys' names, which no stored key may take
        (`key_exists`, as a stored key's name is)."""
        _check_name(name)
        if role not in ROLES:
            raise errors.InvalidParameters("role must be admin or user", field="role")
        if rate_limit_per_minute is not None and not (0 <= rate_limit_per_minute <= MAX_RATE_LIMIT):
            raise errors.InvalidParameters(
                f"the rate limit must be 0..{MAX_RATE_LIMIT} a minute", field="rate_limit"
            )

        def work(conn: Connection) -> tuple[KeyRecord, str]:
            return _insert_key(conn, name, role, rate_limit_per_minute, created_by, reserved, now)

        return self.db.write_once_more_on_conflict(work)  # a name taken meanwhile: key_exists

    def list_keys(self) -> list[KeyRecord]:
        query = select(*_KEY_COLUMNS).order_by(ApiKey.created_at, ApiKey.name)
        return [KeyRecord.from_row(r) for r in self.db.read(lambda c: c.execute(query).all())]

    def any_keys(self) -> bool:
        """Whether any key is in the database (revoked ones count: once keys were made,
        the server stays closed)."""
        query = select(func.count()).select_from(ApiKey)
        return bool(self.db.read(lambda conn: conn.execute(query).scalar_one()))

    def get_key(self, key: str) -> KeyRecord:
        return self.db.read(lambda conn: _key(conn, key))

    def key_for_secret(self, secret: str) -> KeyRecord | None:
        """The key whose SHA-256 this secret has, revoked or not; None if none has."""
        query = select(*_KEY_COLUMNS).where(ApiKey.key_sha256 == digest(secret))
        row = self.db.read(lambda conn: conn.execute(query).first())
        return None if row is None else KeyRecord.from_row(row)

    def touch_key(self, key_id: str, *, now: datetime | None = None) -> None:
        """Note a key's use, at most once a minute (a write per request would not do)."""
        now = now or utcnow()
        statement = (
            update(ApiKey)
            .where(ApiKey.id == key_id)
            .where(or_(ApiKey.last_used_at.is_(None), ApiKey.last_used_at < now - TOUCH_EVERY))
            .values(last_used_at=now)
        )
        self.db.write(lambda conn: conn.execute(statement))

    def revoke_key(self, key: str, *, now: datetime | None = None) -> KeyRecord:
        """Revoke a key by id or name (it stays listed); revoking it again changes nothing."""

        def work(conn: Connection) -> KeyRecord:
            found = _key(conn, key)
            conn.execute(
                update(ApiKey)
                .where(ApiKey.id == found.id, ApiKey.revoked_at.is_(None))
                .values(revoked_at=now or utcnow())
            )
            return _key(conn, found.id)

        return self.db.write(work)

    def delete_key(self, key: str) -> KeyRecord:
        def work(conn: Connection) -> KeyRecord:
            found = _key(conn, key)
            conn.execute(delete(ApiKey).where(ApiKey.id == found.id))
            return found

        return self.db.write(work)

    # -- invites ---------------------------------------------------------------------------

    def create_invite(
        self,
        *,
        uses: int = 1,
        expires_at: datetime | None = None,
        created_by: str | None = None,
        now: datetime | None = None,
    ) -> tuple[InviteRecord, str]:
        """A new invite code (shown once) good for `uses` registrations."""
        if not 1 <= uses <= 1000:
            raise errors.InvalidParameters("uses must be 1..1000", field="uses")
        code = secrets.token_urlsafe(18)
        values = {
            "id": new_id(),
            "code_sha256": digest(code),
            "hint": code[:4],
            "uses_left": uses,
            "expires_at": expires_at,
            "created_at": now or utcnow(),
            "created_by": created_by,
        }

        def work(conn: Connection) -> InviteRecord:
            conn.execute(insert(Invite).values(**values))
            row = conn.execute(select(*_INVITE_COLUMNS).where(Invite.id == values["id"])).one()
            return InviteRecord.from_row(row)

        return self.db.write(work), code

    def list_invites(self) -> list[InviteRecord]:
        query = select(*_INVITE_COLUMNS).order_by(Invite.created_at)
        rows = self.db.read(lambda conn: conn.execute(query).all())
        return [InviteRecord.from_row(r) for r in rows]

    def delete_invite(self, invite: str) -> InviteRecord:
        """Delete an invite by its id or its code."""

        def work(conn: Connection) -> InviteRecord:
            row = conn.execute(
                select(*_INVITE_COLUMNS).where(
                    or_(Invite.id == invite, Invite.code_sha256 == digest(invite))
                )
            ).first()
            if row is None:
                raise errors.InviteNotFound("no such invite", invite=invite[:4])
            found = InviteRecord.from_row(row)
            conn.execute(delete(Invite).where(Invite.id == found.id))
            return found

        return self.db.write(work)

    def register(
        self,
        name: str,
        *,
        invite_code: str | None,
        reserved: Collection[str] = (),
        now: datetime | None = None,
    ) -> tuple[KeyRecord, str]:
        """A user key for `name`, spending one use of the invite when one is given
        (`invite_invalid` if it is unknown, used up or expired); nothing is spent when
        the key cannot be made (a taken name, stored or one of `reserved`)."""
        _check_name(name)
        now = now or utcnow()

        def work(conn: Connection) -> tuple[KeyRecord, str]:
            by = "registration"
            if invite_code is not None:
                spent = conn.execute(
                    update(Invite)
                    .where(Invite.code_sha256 == digest(invite_code), Invite.uses_left > 0)
                    .where(or_(Invite.expires_at.is_(None), Invite.expires_at > now))
                    .values(uses_left=Invite.uses_left - 1)
                    .returning(Invite.id)
                ).first()
                if spent is None:
                    raise errors.InviteInvalid(
                        "the invite code is not valid (unknown, used up or expired)",
                        field="invite_code",
                    )
                by = f"invite {spent.id}"
            return _insert_key(conn, name, "user", None, by, reserved, now)

        return self.db.write_once_more_on_conflict(work)

    # -- web sessions ----------------------------------------------------------------------

    def open_session(
        self,
        name: str,
        role: str,
        key_id: str | None,
        *,
        max_s: float,
        key_sha256: str | None = None,
        now: datetime | None = None,
    ) -> str:
        """A new session for a key that was just checked (`key_sha256`: that key's
        SHA-256, which each use compares; a session without it and without a stored
        key is never valid); returns its id (the cookie's value, shown this once: only
        its SHA-256 is kept)."""
        now = now or utcnow()
        secret = secrets.token_urlsafe(32)
        values = {
            "id_sha256": digest(secret),
            "name": name,
            "role": role,
            "key_id": key_id,
            "key_sha256": key_sha256,
            "created_at": now,
            "last_seen_at": now,
            "expires_at": now + timedelta(seconds=max_s),
        }
        self.db.write(lambda conn: conn.execute(insert(WebSession).values(**values)))
        return secret

    def session(
        self,
        secret: str,
        *,
        idle_s: float,
        configured: Mapping[str, str] | None = None,
        now: datetime | None = None,
    ) -> SessionRecord | None:
        """The live session with this id; None if there is none, it passed its absolute
        end or sat idle for `idle_s`, or the key it was opened with is gone (then it is
        removed): a stored key revoked or deleted, or a configured key no longer in
        `configured` (name -> SHA-256 of the keys configured now) with that SHA-256. A
        read, but for noting its use at most once a minute (a web page's every request
        must not be a write)."""
        now = now or utcnow()
        key = digest(secret)
        query = (
            select(
                *WebSession.__table__.columns,
                ApiKey.revoked_at,
                ApiKey.id.label("found_key"),
                ApiKey.key_sha256.label("found_sha256"),
                ApiKey.rate_limit_per_minute,
            )
            .outerjoin(ApiKey, ApiKey.id == WebSession.key_id)
            .where(WebSession.id_sha256 == key)
        )
        found = self.db.read(lambda conn: conn.execute(query).first())
        if found is None:
            return None
        idle = found.last_seen_at <= now - timedelta(seconds=idle_s)
        if _key_gone(found, configured or {}) or idle or found.expires_at <= now:
            self.close_session(secret)
            return None
        # Its use noted at most once a minute, and at least ten times within idle_s (so
        # a session in use is never taken for an idle one).
        if found.last_seen_at < now - min(TOUCH_EVERY, timedelta(seconds=idle_s / 10)):
            statement = (
                update(WebSession).where(WebSession.id_sha256 == key).values(last_seen_at=now)
            )
            self.db.write(lambda conn: conn.execute(statement))
        return SessionRecord(
            found.name,
            found.role,
            found.key_id,
            found.expires_at,
            found.key_sha256,
            found.rate_limit_per_minute,
        )

    def list_sessions(self, *, idle_s: float, now: datetime | None = None) -> list[dict[str, Any]]:
        """The live sessions, newest first, for an admin: who, since when, last seen,
        until when, and a handle (the first 16 hex digits of the id's SHA-256: enough
        to end it by, nothing to open it with)."""
        now = now or utcnow()
        rows = self.db.read(
            lambda conn: conn.execute(
                select(*WebSession.__table__.columns)
                .where(
                    WebSession.expires_at > now,
                    WebSession.last_seen_at > now - timedelta(seconds=idle_s),
                )
                .order_by(WebSession.created_at.desc())
            ).all()
        )
        return [
            {
                "id": row.id_sha256[:SESSION_HANDLE],
                "name": row.name,
                "role": row.role,
                "key_id": row.key_id,
                "created_at": row.created_at,
                "last_seen_at": row.last_seen_at,
                "expires_at": row.expires_at,
            }
            for row in rows
        ]

    def end_session(self, handle: str) -> bool:
        """End a session by its handle (`list_sessions`); whether there was one."""
        if len(handle) != SESSION_HANDLE or any(c not in "0123456789abcdef" for c in handle):
            return False
        statement = delete(WebSession).where(WebSession.id_sha256.startswith(handle))
        return bool(self.db.write(lambda conn: conn.execute(statement).rowcount))

    def close_session(self, secret: str) -> bool:
        """End a session (logout); whether there was one."""
        statement = delete(WebSession).where(WebSession.id_sha256 == digest(secret))
        return bool(self.db.write(lambda conn: conn.execute(statement).rowcount))


@dataclass(frozen=True)
class SessionRecord:
    name: str
    role: str
    key_id: str | None
    expires_at: datetime
    key_sha256: str | None = None
    rate_limit_per_minute: int | None = None  # the stored key's own, as its requests have


def _key_gone(found: Any, configured: Mapping[str, str]) -> bool:
    """Whether the key a session row was opened with is no longer valid."""
    if found.key_id is not None:  # a stored key: still there, not revoked, the same one
        if found.found_key is None or found.revoked_at is not None:
            return True
        return found.key_sha256 is not None and found.key_sha256 != found.found_sha256
    # A configured key: the one of that name must still be the one it was opened with;
    # a row without a SHA-256 (opened before they were recorded) cannot be checked.
    return found.key_sha256 is None or configured.get(found.name) != found.key_sha256


def _check_name(name: Any) -> None:
    if not isinstance(name, str) or not KEY_NAME.fullmatch(name):
        raise errors.InvalidParameters(
            "name must be 1..64 characters: letters, digits, space and . _ @ - "
            "(a letter or digit first)",
            field="name",
        )


def _insert_key(
    conn: Connection,
    name: str,
    role: str,
    rate_limit_per_minute: int | None,
    created_by: str | None,
    reserved: Collection[str],
    now: datetime | None,
) -> tuple[KeyRecord, str]:
    name = name.strip()
    # Names are compared without case: "Admin" beside "admin" is one to a person
    # reading a list of keys or a job's client, whoever holds which.
    folded = name.lower()
    taken = conn.execute(select(ApiKey.id).where(func.lower(ApiKey.name) == folded)).first()
    if taken is not None or any(folded == r.strip().lower() for r in reserved):
        raise errors.KeyExists(f"a key named {name!r} exists", field="name")
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    key_id = new_id()
    conn.execute(
        insert(ApiKey).values(
            id=key_id,
            name=name,
            key_sha256=digest(secret),
            role=role,
            created_at=now or utcnow(),
            rate_limit_per_minute=rate_limit_per_minute,
            created_by=created_by,
        )
    )
    return _key(conn, key_id), secret
