"""Keys and web sessions, hardened: a session lives only as long as
the key it was opened with (a restart with a replaced or removed configured key ends
it), a key's name is unique across configured and stored keys, rate limits and stream
slots are kept per key and never per name, every credential in a URL setting is masked
wherever the configuration is shown, and text that is not text is a 400 naming it."""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from click.testing import CliRunner
from sqlalchemy import text

from alice_spool import migrate
from alice_spool.api import create_app
from alice_spool.cli import cli
from alice_spool.config import Settings, load_settings
from alice_spool.store import Store
from tests.support.bare import Bare
from tests.support.live_server import free_port, wait_until

ADMIN = "/v1/admin/config"


def log_in(url: str, key: str) -> str:
    """A web session's cookie, opened with `key`."""
    answer = httpx.post(url + "/v1/auth/login", json={"key": key}, timeout=10)
    assert answer.status_code == 200, answer.text
    return answer.cookies["alice_session"]


def with_cookie(url: str, path: str, cookie: str, method: str = "GET", **kw: Any) -> httpx.Response:
    """A request as the browser holding `cookie` makes it (from the server's own page)."""
    headers = {"Origin": url} if method != "GET" else {}
    with httpx.Client(base_url=url, cookies={"alice_session": cookie}, timeout=10) as browser:
        return browser.request(method, path, headers=headers, **kw)


def session_rows(store: Store) -> list[dict[str, Any]]:
    query = text("SELECT name, key_id, key_sha256 FROM sessions")
    return [dict(r) for r in store.db.read(lambda c: c.execute(query).mappings().all())]


# -- a session lives as long as its key ----------------------------------------------------


def test_a_configured_keys_session_ends_when_a_restart_replaces_or_removes_the_key(
    make_bare: Callable[..., Bare],
) -> None:
    first = make_bare(**{"server.api_keys": {"ops": "k-ops-first"}})
    cookie = log_in(first.url, "k-ops-first")
    assert with_cookie(first.url, ADMIN, cookie).status_code == 200
    sha = hashlib.sha256(b"k-ops-first").hexdigest()
    assert session_rows(first.store) == [{"name": "ops", "key_id": None, "key_sha256": sha}]
    # Restarted (a new app on the same database) with the same key: the session lives.
    same = make_bare(**{"server.api_keys": {"ops": "k-ops-first"}})
    assert with_cookie(same.url, ADMIN, cookie).status_code == 200
    # Restarted with the key replaced: the old cookie mints nothing and reads nothing.
    replaced = make_bare(**{"server.api_keys": {"ops": "k-ops-second"}})
    minted = with_cookie(
        replaced.url, "/v1/auth/keys/generate", cookie, "POST", json={"name": "spare"}
    )
    assert minted.status_code == 401 and minted.json()["error"]["code"] == "unauthorized"
    assert with_cookie(replaced.url, ADMIN, cookie).status_code == 401
    assert replaced.store.keys.list_keys() == [] and session_rows(replaced.store) == []  # ended
    assert with_cookie(first.url, ADMIN, cookie).status_code == 401  # on every node
    # The new key's session works, until a restart whose configuration has no `ops`.
    second = log_in(replaced.url, "k-ops-second")
    assert with_cookie(replaced.url, ADMIN, second).status_code == 200
    removed = make_bare(**{"server.api_keys": {"cron": "k-cron"}})
    assert with_cookie(removed.url, ADMIN, second).status_code == 401
    assert session_rows(removed.store) == []


def test_a_stored_keys_session_ends_with_its_key_and_old_sessions_are_checked_too(
    make_bare: Callable[..., Bare],
) -> None:
    bare = make_bare(**{"server.api_keys": {"ops": "k-ops"}})
    record, alice = bare.store.keys.add_key("alice")
    cookie = log_in(bare.url, alice)
    assert with_cookie(bare.url, "/v1/jobs", cookie).status_code == 200
    (row,) = session_rows(bare.store)
    assert (
        row["key_id"] == record.id
        and row["key_sha256"] == hashlib.sha256(alice.encode()).hexdigest()
    )
    bare.store.keys.delete_key(record.id)
    assert with_cookie(bare.url, "/v1/jobs", cookie).status_code == 401
    # Sessions opened before their key's SHA-256 was recorded: a stored key's is
    # still checked by the key's id; a configured key's cannot be checked and ends.
    _, bob_key = bare.store.keys.add_key("bob")
    bob = bare.store.keys.key_for_secret(bob_key)
    assert bob is not None
    old_stored = bare.store.keys.open_session("bob", "user", bob.id, max_s=600)
    old_configured = bare.store.keys.open_session("ops", "admin", None, max_s=600)
    assert with_cookie(bare.url, "/v1/jobs", old_stored).status_code == 200
    assert with_cookie(bare.url, ADMIN, old_configured).status_code == 401
    bare.store.keys.revoke_key("bob")
    assert with_cookie(bare.url, "/v1/jobs", old_stored).status_code == 401


def test_a_session_spends_its_keys_own_rate_limit(make_bare: Callable[..., Bare]) -> None:
    bare = make_bare(**{"server.api_keys": {"ops": "k-ops"}})
    _, limited = bare.store.keys.add_key("slow", rate_limit_per_minute=5)  # bursts of 5
    cookie = log_in(bare.url, limited)
    statuses = [with_cookie(bare.url, "/v1/jobs", cookie).status_code for _ in range(7)]
    assert statuses[:5] == [200] * 5 and statuses[-1] == 429
    assert httpx.get(bare.url + "/v1/jobs", headers={"X-Api-Key": "k-ops"}).status_code == 200


# -- names are unique; limits and stream slots are per key ---------------------------------


def test_no_key_takes_a_name_another_key_has(
    make_bare: Callable[..., Bare], tmp_path: Path
) -> None:
    config = {"server.api_keys": {"ops": "k-ops"}}
    opened = make_bare(**config, **{"server.registration": "open"})
    ops = {"X-Api-Key": "k-ops"}
    for name in ("ops", "OPS", "ops "):  # the configured admin's name, however written
        taken = httpx.post(opened.url + "/v1/auth/register", json={"name": name})
        assert taken.status_code == 409, (name, taken.text)
        assert (taken.json()["error"]["code"], taken.json()["error"]["param"]) == (
            "key_exists", "name"
        )  # fmt: skip
    generate = opened.url + "/v1/auth/keys/generate"
    assert httpx.post(generate, json={"name": "Ops"}, headers=ops).status_code == 409
    assert opened.store.keys.list_keys() == []
    assert httpx.post(generate, json={"name": "alice"}, headers=ops).status_code == 201
    assert httpx.post(generate, json={"name": "ALICE"}, headers=ops).status_code == 409
    joined = httpx.post(opened.url + "/v1/auth/register", json={"name": "walk-in"})
    assert joined.status_code == 201, joined.text
    # By invite: a taken name spends nothing of the invite.
    invited = make_bare(**config, **{"server.registration": "invite"})
    _, code = invited.store.keys.create_invite(uses=1)
    for name in ("ops", "alice"):
        body = {"name": name, "invite_code": code}
        assert httpx.post(invited.url + "/v1/auth/register", json=body).status_code == 409
    (invite,) = invited.store.keys.list_invites()
    assert invite.uses_left == 1
    body = {"name": "eve", "invite_code": code}
    assert httpx.post(invited.url + "/v1/auth/register", json=body).status_code == 201
    # And on the server itself: `keys add` with the configuration that names `ops`.
    (tmp_path / "keys.toml").write_text('[server.api_keys]\nops = "k-ops"\n')
    runner = CliRunner()
    base = ["--config", str(tmp_path / "keys.toml"), "--data-dir", str(tmp_path / "cli")]
    assert runner.invoke(cli, [*base, "db", "upgrade"]).exit_code == 0
    refused = runner.invoke(cli, [*base, "keys", "add", "ops", "--admin"])
    assert refused.exit_code == 3 and "key_exists" in refused.output, refused.output
    assert runner.invoke(cli, [*base, "keys", "add", "opsbot"]).exit_code == 0


def test_two_keys_of_one_name_share_neither_stream_slots_nor_rate_limits(
    make_bare: Callable[..., Bare],
) -> None:
    """A stored key named as a configured one is made before the configuration named
    it (the store alone cannot know); each still has its own slots and bucket."""
    bare = make_bare(**{"server.api_keys": {"ops": "k-ops"}})
    _, twin = bare.store.keys.add_key("ops")  # a user's key that has the admin's name
    admin, user = {"X-Api-Key": "k-ops"}, {"X-Api-Key": twin}
    job = httpx.post(bare.url + "/v1/jobs", json={"prompt": "waits"}, headers=user).json()
    events = f"{bare.url}/v1/jobs/{job['id']}/events"
    with contextlib.ExitStack() as streams:
        for _ in range(8):  # server.max_streams_per_client
            held = streams.enter_context(httpx.stream("GET", events, headers=user, timeout=10))
            assert held.status_code == 200
        ninth = httpx.get(events, headers=user, timeout=10)
        assert ninth.status_code == 429  # the user's own slots are full
        admins = streams.enter_context(httpx.stream("GET", events, headers=admin, timeout=10))
        assert admins.status_code == 200  # the admin's are not the user's
    limited = make_bare(**{"server.api_keys": {"ops": "k-ops"}, "server.rate_limit_per_minute": 5})
    jobs = limited.url + "/v1/jobs"
    statuses = [httpx.get(jobs, headers=user).status_code for _ in range(7)]
    assert statuses[:5] == [200] * 5 and statuses[-1] == 429
    assert httpx.get(jobs, headers=admin).status_code == 200


# -- text that is not text, numbers out of range -------------------------------------------


def raw_post(url: str, body: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
    """A body sent as these very bytes (a JSON escape of a lone surrogate among them)."""
    sent = {"Content-Type": "application/json", **(headers or {})}
    return httpx.post(url, content=body, headers=sent, timeout=10)


def refused_naming(answer: httpx.Response, field: str) -> None:
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert (error["code"], error["param"]) == ("invalid_parameters", field), error


def test_lone_surrogates_and_limits_out_of_range_are_400s_naming_the_field(
    make_bare: Callable[..., Bare],
) -> None:
    bare = make_bare(**{"server.api_keys": {"ops": "k-ops"}, "server.registration": "invite"})
    _, code = bare.store.keys.create_invite(uses=1)
    refused_naming(raw_post(bare.url + "/v1/auth/login", rb'{"key": "\ud800"}'), "key")
    refused_naming(raw_post(bare.url + "/v1/auth/login", rb'{"key": "sd-\udfff-x"}'), "key")
    register = bare.url + "/v1/auth/register"
    refused_naming(raw_post(register, rb'{"name": "eve", "invite_code": "\ud800"}'), "invite_code")
    body = b'{"name": "\\ud800", "invite_code": "%s"}' % code.encode()
    refused_naming(raw_post(register, body), "name")
    (invite,) = bare.store.keys.list_invites()
    assert invite.uses_left == 1  # nothing spent
    # A paired surrogate is just a character: a name of plain characters is asked.
    paired = raw_post(register, b'{"name": "\\ud83d\\ude00", "invite_code": "%s"}' % code.encode())
    refused_naming(paired, "name")
    ops = {"X-Api-Key": "k-ops"}
    generate = bare.url + "/v1/auth/keys/generate"
    refused_naming(raw_post(generate, rb'{"name": "\udc80"}', ops), "name")
    for limit in ("1e30", "-1", "1.5", '"5"', "true", "1000001", "1e400"):
        body = b'{"name": "sam", "rateLimitPerMinute": %s}' % limit.encode()
        refused_naming(raw_post(generate, body, ops), "rateLimitPerMinute")
    assert bare.store.keys.list_keys() == []
    for limit in (0, 1_000_000):
        made = httpx.post(
            generate, json={"name": f"sam{limit}", "rateLimitPerMinute": limit}, headers=ops
        )
        assert made.status_code == 201 and made.json()["info"]["rateLimitPerMinute"] == limit
    invites = bare.url + "/v1/auth/invites"
    for body in [{"uses": 0}, {"uses": 1001}, {"uses": "2"}, {"expiresHours": 0},
                 {"expiresHours": True}, {"expiresHours": 8761}]:  # fmt: skip
        refused_naming(httpx.post(invites, json=body, headers=ops), next(iter(body)))
    assert len(bare.store.keys.list_invites()) == 1  # the one made above
    made = httpx.post(invites, json={"uses": 2.0, "expiresHours": 0.5}, headers=ops)
    assert made.status_code == 201 and made.json()["uses_remaining"] == 2, made.text


# -- every credential in every URL setting is masked ---------------------------------------

URL_NAME = re.compile(r"(^|_)(url|urls|endpoint|endpoints|origin|origins)$")
SECRET = "s3cr3t"  # in every credential below; it must never be shown
# A URL with a credential everywhere one goes: user info, query and fragment parameters.
FULL = (
    f"https://alice:{SECRET}-pw@host.example:8443/base?page=2&token={SECRET}-1&key={SECRET}-2"
    f"&api_key={SECRET}-3&apikey={SECRET}-4&password={SECRET}-5&secret={SECRET}-6"
    f"&sig={SECRET}-7&signature={SECRET}-8&access_token={SECRET}-9"
    f"&X-Amz-Signature={SECRET}-10#access_token={SECRET}-11"
)
TOKEN_AS_USER = f"https://{SECRET}-user@host.example/"
DATABASE_FORMS = (
    f"postgresql+psycopg://spool:{SECRET}@host.example:5432/spool",
    f"postgresql://spool@host.example/spool?sslmode=require&password={SECRET}",
)


def url_settings() -> list[tuple[str, str, bool]]:
    """Every setting whose value is a URL (or a list of them), found in the settings'
    own models by name or by a URL default: (section, key, is a list)."""
    found = []
    for name, section in Settings.model_fields.items():
        if name == "config_file":
            continue
        assert section.annotation is not None
        for key, item in section.annotation.model_fields.items():
            if item.annotation not in (str, list[str]):
                continue
            default = item.default if isinstance(item.default, str) else ""
            if URL_NAME.search(key) or re.match(r"[a-z+]+://", default):
                found.append((name, key, item.annotation is not str))
    return found


def test_the_url_settings_are_found() -> None:
    found = {f"{section}.{key}" for section, key, _ in url_settings()}
    expected = {"paths.database_url", "models.hf_endpoint", "models.civitai_url"}
    assert expected | {"server.public_url", "server.cors_origins"} <= found


@contextlib.contextmanager
def serving(settings: Settings, store: Store) -> Iterator[str]:
    """The app on 127.0.0.1 with these settings, on a real (other) database: the
    settings' own database URL is only shown, never opened."""
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings, store), host="127.0.0.1", port=free_port(), log_level="error"
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, timeout=10)
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.mark.parametrize("form", ["full", "token as user", "database password", "database query"])
def test_every_url_setting_is_shown_without_its_credentials(tmp_path: Path, form: str) -> None:
    values: dict[str, Any] = {}
    for section, key, is_list in url_settings():
        value = {"full": FULL, "token as user": TOKEN_AS_USER}.get(form, FULL)
        if (section, key) == ("paths", "database_url") and form.startswith("database"):
            value = DATABASE_FORMS[form == "database query"]
        values[f"{section}.{key}"] = [value] if is_list else value
    settings = load_settings(None, env={}, overrides=values, cwd=tmp_path)
    for name in values:  # each one took its value: nothing below passes by its absence
        section, key = name.split(".")
        assert SECRET in json.dumps(getattr(getattr(settings, section), key)), name
    store = Store.open(f"sqlite:///{tmp_path / 'real.db'}")
    migrate.upgrade(store.db)
    with serving(settings, store) as url:
        answer = httpx.get(url + ADMIN, timeout=10)  # an open server: anyone's
    assert answer.status_code == 200, answer.text
    shown = answer.json()
    (tmp_path / "config.toml").write_text(toml_of(values))
    runner = CliRunner()
    base = ["--config", str(tmp_path / "config.toml"), "config"]
    as_text, as_json = runner.invoke(cli, base), runner.invoke(cli, [*base, "--json"])
    assert as_text.exit_code == 0 and as_json.exit_code == 0, as_text.output + as_json.output
    for output in (answer.text, as_text.output, as_json.output):
        assert SECRET not in output
    for name, given in values.items():  # still shown: host, path, harmless parameters
        section, key = name.split(".")
        for table in (shown, json.loads(as_json.output)):
            value = json.dumps(table[section][key])
            assert "host.example" in value and "***" in value, (name, value)
            assert "page=2" in value or "page=2" not in json.dumps(given), (name, value)


def toml_of(values: dict[str, Any]) -> str:
    """`section.key = value` overrides as a TOML file (JSON strings are TOML strings)."""
    tables: dict[str, list[str]] = {}
    for name, value in values.items():
        section, key = name.split(".")
        tables.setdefault(section, []).append(f"{key} = {json.dumps(value)}")
    return "".join(f"[{s}]\n" + "\n".join(lines) + "\n" for s, lines in tables.items())
