"""API keys and invites in the store: only a key's SHA-256 is kept,
names are unique, revoked keys stay listed, `last used` is written at most once a
minute, and an invite is spent in the same transaction that makes its user key."""

from __future__ import annotations

import hashlib
from datetime import timedelta

import pytest
from sqlalchemy import text

from alice_spool import errors
from alice_spool.store import Store, utcnow

pytestmark = pytest.mark.both_databases  # SQLite and PostgreSQL (tests/conftest.py)


def test_a_key_is_shown_once_and_kept_only_as_its_sha256(store: Store) -> None:
    record, secret = store.keys.add_key("alice", role="admin", rate_limit_per_minute=30)
    assert secret.startswith("sd-") and len(secret) > 40
    assert (record.name, record.role, record.enabled, record.rate_limit_per_minute) == (
        "alice", "admin", True, 30
    )  # fmt: skip
    stored = store.db.read(lambda c: c.execute(text("SELECT * FROM api_keys")).mappings().all())
    assert [row["key_sha256"] for row in stored] == [hashlib.sha256(secret.encode()).hexdigest()]
    assert secret not in repr(stored) and "key" not in record.to_dict()
    assert store.keys.key_for_secret(secret) == record
    assert store.keys.key_for_secret(secret + "x") is None
    assert store.keys.any_keys()


def test_names_are_unique_and_bad_ones_refused(store: Store) -> None:
    store.keys.add_key("alice")
    with pytest.raises(errors.KeyExists):
        store.keys.add_key("alice", role="admin")
    for bad in ("", "   ", "x" * 65, "tab\there"):
        with pytest.raises(errors.InvalidParameters):
            store.keys.add_key(bad)
    with pytest.raises(errors.InvalidParameters):
        store.keys.add_key("bob", role="root")
    assert [k.name for k in store.keys.list_keys()] == ["alice"]


def test_revoked_keys_stay_listed_and_deleted_ones_go(store: Store) -> None:
    record, secret = store.keys.add_key("bob")
    revoked = store.keys.revoke_key("bob")
    assert revoked.revoked_at is not None and not revoked.enabled
    assert store.keys.revoke_key(record.id).revoked_at == revoked.revoked_at  # again: the same
    found = store.keys.key_for_secret(secret)
    assert found is not None and not found.enabled
    assert store.keys.any_keys()  # a revoked key still means the server has keys
    store.keys.delete_key(record.id)
    assert store.keys.list_keys() == [] and store.keys.key_for_secret(secret) is None
    with pytest.raises(errors.KeyNotFound):
        store.keys.revoke_key("bob")


def test_last_used_is_written_at_most_once_a_minute(store: Store) -> None:
    record, _ = store.keys.add_key("carol")
    start = utcnow()
    store.keys.touch_key(record.id, now=start)
    store.keys.touch_key(record.id, now=start + timedelta(seconds=30))
    assert store.keys.get_key("carol").last_used_at == start
    store.keys.touch_key(record.id, now=start + timedelta(seconds=61))
    assert store.keys.get_key("carol").last_used_at == start + timedelta(seconds=61)


def test_an_invite_is_used_up_and_a_failed_registration_spends_nothing(store: Store) -> None:
    invite, code = store.keys.create_invite(uses=2)
    assert (invite.uses_left, invite.hint) == (2, code[:4])
    first, secret = store.keys.register("dave", invite_code=code)
    assert (first.role, first.created_by) == ("user", f"invite {invite.id}")
    assert store.keys.key_for_secret(secret) == first
    with pytest.raises(errors.KeyExists):
        store.keys.register("dave", invite_code=code)  # a taken name: the use is not spent
    assert store.keys.list_invites()[0].uses_left == 1
    store.keys.register("erin", invite_code=code)
    with pytest.raises(errors.InviteInvalid):
        store.keys.register("frank", invite_code=code)  # used up
    with pytest.raises(errors.InviteInvalid):
        store.keys.register("frank", invite_code="not-a-code")
    assert sorted(k.name for k in store.keys.list_keys()) == ["dave", "erin"]


def test_an_expired_invite_is_refused_and_invites_are_deleted_by_id_or_code(
    store: Store,
) -> None:
    _, old = store.keys.create_invite(expires_at=utcnow() - timedelta(seconds=1))
    with pytest.raises(errors.InviteInvalid):
        store.keys.register("gina", invite_code=old)
    kept, code = store.keys.create_invite(uses=3)
    with pytest.raises(errors.InvalidParameters):
        store.keys.create_invite(uses=0)
    assert store.keys.delete_invite(code).id == kept.id
    remaining = store.keys.list_invites()
    assert len(remaining) == 1
    store.keys.delete_invite(remaining[0].id)
    with pytest.raises(errors.InviteNotFound):
        store.keys.delete_invite(code)
    assert store.keys.list_invites() == [] and store.keys.list_keys() == []


def test_a_session_ends_when_idle_at_its_absolute_end_or_when_its_key_is_revoked(
    store: Store,
) -> None:
    record, _ = store.keys.add_key("web")
    start = utcnow()
    cookie = store.keys.open_session("web", "user", record.id, max_s=60, now=start)
    rows = store.db.read(lambda c: c.execute(text("SELECT * FROM sessions")).mappings().all())
    assert [r["id_sha256"] for r in rows] == [hashlib.sha256(cookie.encode()).hexdigest()]
    at = start
    for _ in range(5):  # used every 9 s: never idle 10 s, alive until its absolute end
        at += timedelta(seconds=9)
        found = store.keys.session(cookie, idle_s=10, now=at)
        assert found is not None and (found.name, found.role) == ("web", "user")
    assert store.keys.session(cookie, idle_s=10, now=start + timedelta(seconds=61)) is None
    assert store.keys.session(cookie, idle_s=10, now=at) is None  # removed, not just refused
    idle = store.keys.open_session("web", "user", record.id, max_s=60, now=start)
    assert store.keys.session(idle, idle_s=10, now=start + timedelta(seconds=11)) is None
    revoked = store.keys.open_session("web", "user", record.id, max_s=60)
    store.keys.revoke_key("web")
    assert store.keys.session(revoked, idle_s=10) is None
    closing = store.keys.open_session("root", "admin", None, max_s=60)  # a configured key's
    assert store.keys.close_session(closing) and not store.keys.close_session(closing)
    assert store.keys.session(closing, idle_s=10) is None


def test_names_are_unique_without_case_and_configured_names_are_reserved(store: Store) -> None:
    store.keys.add_key("alice")
    for taken in ("ALICE", "Alice "):
        with pytest.raises(errors.KeyExists):
            store.keys.add_key(taken)
    for reserved in ("ops", "OPS"):
        with pytest.raises(errors.KeyExists):
            store.keys.add_key(reserved, reserved={"ops"})
    _, code = store.keys.create_invite(uses=1)
    with pytest.raises(errors.KeyExists):
        store.keys.register("Ops", invite_code=code, reserved={"ops"})
    assert store.keys.list_invites()[0].uses_left == 1  # a taken name spends nothing
    assert store.keys.register("opsbot", invite_code=code, reserved={"ops"})[0].name == "opsbot"
    for limit in (-1, 1_000_001, 10**30):
        with pytest.raises(errors.InvalidParameters):
            store.keys.add_key("limited", rate_limit_per_minute=limit)
    assert store.keys.add_key("limited", rate_limit_per_minute=1_000_000)[0].rate_limit_per_minute
    assert sorted(k.name for k in store.keys.list_keys()) == ["alice", "limited", "opsbot"]


def test_a_session_lives_only_while_the_key_it_was_opened_with_does(store: Store) -> None:
    sha = hashlib.sha256(b"k-ops").hexdigest()
    configured = store.keys.open_session("ops", "admin", None, max_s=60, key_sha256=sha)
    found = store.keys.session(configured, idle_s=10, configured={"ops": sha})
    assert found is not None and (found.key_id, found.key_sha256) == (None, sha)
    assert store.keys.session(configured, idle_s=10, configured={"ops": "0" * 64}) is None
    assert store.keys.session(configured, idle_s=10, configured={"ops": sha}) is None  # removed
    moved = store.keys.open_session("ops", "admin", None, max_s=60, key_sha256=sha)
    assert store.keys.session(moved, idle_s=10, configured={"cron": sha}) is None  # another name
    unchecked = store.keys.open_session("ops", "admin", None, max_s=60)  # no SHA-256 recorded
    assert store.keys.session(unchecked, idle_s=10, configured={"ops": sha}) is None
    record, secret = store.keys.add_key("web", rate_limit_per_minute=7)
    own = hashlib.sha256(secret.encode()).hexdigest()
    stored = store.keys.open_session("web", "user", record.id, max_s=60, key_sha256=own)
    found = store.keys.session(stored, idle_s=10)
    assert found is not None and found.rate_limit_per_minute == 7
    wrong = store.keys.open_session("web", "user", record.id, max_s=60, key_sha256="f" * 64)
    assert store.keys.session(wrong, idle_s=10) is None  # not the key that id has
    store.keys.delete_key(record.id)
    assert store.keys.session(stored, idle_s=10) is None
    assert store.db.read(lambda c: c.execute(text("SELECT * FROM sessions")).all()) == []


def test_a_lone_surrogate_matches_no_key_and_no_invite(store: Store) -> None:
    store.keys.add_key("alice")
    _, code = store.keys.create_invite(uses=1)
    assert store.keys.key_for_secret("sd-\ud800") is None
    with pytest.raises(errors.InviteInvalid):
        store.keys.register("eve", invite_code="\ud800")
    assert store.keys.list_invites()[0].uses_left == 1 and code
