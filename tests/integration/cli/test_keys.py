"""`alice-spool keys`: the first admin key is made on the server itself and printed
once; listed without the key; revoked; invites made with a use count and expiry."""

from __future__ import annotations

import json
from pathlib import Path

from alice_spool.store import Store
from tests.integration.cli.results import fails, ok


def test_keys_add_ls_revoke_and_invite(run, data_dir: Path) -> None:
    ok(run("db", "upgrade"))
    assert "server is open" in run("keys", "ls").stderr
    secret = ok(run("keys", "add", "root", "--admin")).strip()
    assert secret.startswith("sd-")
    made = json.loads(ok(run("keys", "add", "sam", "--rate-limit", "60", "--json")))
    assert (made["info"]["role"], made["info"]["rateLimitPerMinute"]) == ("user", 60)
    fails(run("keys", "add", "sam"), 3, "[key_exists]")
    listing = ok(run("keys", "ls"))
    assert "root" in listing and "admin" in listing and "sam" in listing
    assert secret not in listing and made["key"] not in listing
    store = Store.open(f"sqlite:///{data_dir / 'alice.db'}")
    assert store.keys.key_for_secret(secret).name == "root"
    assert ok(run("keys", "revoke", "sam")).strip() == "revoked sam"
    assert [k["enabled"] for k in json.loads(ok(run("keys", "ls", "--json")))] == [True, False]
    fails(run("keys", "revoke", "nobody"), 3, "[not_found]")
    code = ok(run("keys", "invite", "--uses", "2", "--expires", "7d")).strip()
    (invite,) = store.keys.list_invites()
    assert invite.uses_left == 2 and invite.hint == code[:4] and invite.expires_at is not None
    fails(run("keys", "invite", "--expires", "soon"), 3, "not a duration")
    assert store.keys.register("eve", invite_code=code)[0].role == "user"
