"""The address rules at every door that fetches: IPv6 forms that carry a private IPv4
address, and the special ranges Python's `is_global` calls public, refused by the rule
itself, by the API's download and image routes, by the inbox, and at the hops of a
Hub or CivitAI download; and a configured source trusted on its own origin only, so
that its redirect to another private host or port is refused. Nothing leaves the
machine: refused addresses are refused before any connection, and public ones appear
only where a resolver is injected or nothing is connected to."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from alice_spool import urls
from alice_spool.config import load_settings
from alice_spool.downloads.sources import SourceSettings
from alice_spool.downloads.transfer import fetch_to_file
from alice_spool.errors import ForbiddenUrl
from alice_spool.inbox import Inbox
from alice_spool.store import Store
from tests.support import bare as bare_server
from tests.support.bare import Bare
from tests.support.remote import Remote, serving

make_bare = bare_server.make_bare  # the in-process server's fixture, used here

# Each reaches loopback, link-local, private or special IPv4 space; Python's
# `is_global` calls most of them public.
REFUSED = [
    "::127.0.0.1",  # IPv4-compatible
    "::7f00:1",
    "::a00:1",
    "::ffff:0:7f00:1",  # IPv4-translated (SIIT)
    "::ffff:192.0.0.8",  # IPv4-mapped
    "64:ff9b::7f00:1",  # NAT64, well-known prefix
    "64:ff9b::a9fe:a9fe",
    "64:ff9b::a00:1",
    "64:ff9b::c000:8",
    "64:ff9b:1::a00:1",  # NAT64, local-use prefix: refused whole
    "64:ff9b:1:7f:0:100::",
    "2002:7f00:1::1",  # 6to4
    "2002:a9fe:a9fe::1",
    "2002:c0a8:101::1",
    "2001:0:4136:e378:8000:63bf:80ff:fffe",  # Teredo, client 127.0.0.1: refused whole
    "2001:0:4136:e378:8000:63bf:f7f7:f7f7",  # Teredo, client 8.8.8.8: refused too
    "192.0.0.8",  # IETF protocol assignments, 192.0.0.0/24
    "192.0.0.9",
    "192.0.0.170",
    "192.88.99.1",  # the old 6to4 relay anycast
]
# The same forms carrying a public address pass (their IPv4 address is what they reach).
PUBLIC = {
    "64:ff9b::808:808": "8.8.8.8",
    "2002:808:808::1": "8.8.8.8",
    "::ffff:8.8.4.4": "8.8.4.4",
    "::ffff:0:101:101": "1.1.1.1",
}


def bracketed(address: str) -> str:
    return f"[{address}]" if ":" in address else address


@pytest.mark.parametrize("address", REFUSED)
def test_embedded_and_special_addresses_are_refused(address: str) -> None:
    assert not urls.is_global(address)
    with pytest.raises(ForbiddenUrl, match="not a public address") as info:
        urls.check(f"http://{bracketed(address)}:8080/a.png", urls.UrlRules(), field="url")
    assert info.value.details["field"] == "url"


def test_embedded_public_addresses_pass_as_their_ipv4_address() -> None:
    for address, ipv4 in PUBLIC.items():
        assert urls.embedded_ipv4(ipaddress.IPv6Address(address)) == ipaddress.IPv4Address(ipv4)
        assert urls.is_global(address), address
        hop = urls.check(f"https://{bracketed(address)}/a.png", urls.UrlRules(), field="f")
        assert hop.address == address  # connects to nothing
    assert urls.embedded_ipv4(ipaddress.IPv6Address("2606:4700:4700::1111")) is None


def test_a_configured_source_is_trusted_on_its_own_origin_only() -> None:
    """The decision every hop of a Hub or CivitAI download gets: the configured origin
    passes unchecked (here, as in the tests' stand-ins, on loopback); another port,
    scheme or name on loopback is refused; a storage host with public addresses is
    followed; one whose name leads to a private address is refused."""
    names = {
        "storage.test": ["104.18.2.3"],
        "inside.test": ["64:ff9b::a00:1"],
        "localhost": ["127.0.0.1"],
        "hub.test": ["10.20.0.5"],  # a Hub on a private network, trusted on https only
    }
    asked: list[str] = []

    def resolver(host: str, port: int) -> list[str]:
        asked.append(host)
        return names.get(host) or [str(ipaddress.ip_address(host))]  # never the network

    trusted = urls.UrlRules.trusting("http://127.0.0.1:8001/api", "https://Hub.test")
    rules = urls.UrlRules(trusted_origins=trusted.trusted_origins, resolver=resolver)
    for url in (
        "http://127.0.0.1:8001/api/download/models/1",
        "https://hub.test/org/x/resolve/main/a.safetensors",
        "https://HUB.test:443/b",
    ):
        assert urls.check(url, rules, field="url").address is None, url
    assert asked == []  # trusted: not even resolved
    for url in (
        "http://127.0.0.1:8002/files/1",  # another port
        "https://127.0.0.1:8001/files/1",  # another scheme
        "http://localhost:8001/files/1",  # another name for the same place
        "http://127.0.0.2:8001/files/1",
        "http://hub.test/b",  # the Hub's name, over http (port 80)
        "http://inside.test/files/1",
    ):
        with pytest.raises(ForbiddenUrl):
            urls.check(url, rules, field="url")
    assert urls.check("https://storage.test/f?sig=1", rules, field="url").address == "104.18.2.3"
    lifted = urls.UrlRules(allow_private=True, trusted_origins=rules.trusted_origins)
    assert urls.check("http://127.0.0.1:8002/files/1", lifted, field="url").address is None


# -- the doors -----------------------------------------------------------------------------


def test_the_api_refuses_them_at_every_door_that_fetches(make_bare: Callable[..., Bare]) -> None:
    bare = make_bare()
    with httpx.Client(base_url=bare.url, timeout=30) as http:
        for address in REFUSED:
            url = f"http://{bracketed(address)}:8080/x.safetensors"
            for path, body, field in [
                ("/v1/downloads", {"source": "url", "url": url}, "url"),
                ("/v1/models/download/url", {"url": url}, "url"),
                ("/v1/jobs", {"prompt": "boat", "input_image_urls": [url]}, "input_image_urls"),
            ]:
                answer = http.post(path, json=body)
                assert answer.status_code == 400, (path, address, answer.text)
                error = answer.json()["error"]
                assert (error["code"], error["param"]) == ("forbidden_url", field), (path, address)
    assert bare.store.downloads.list_downloads() == []


def test_the_inbox_refuses_them(tmp_path: Path, store: Store) -> None:
    settings = load_settings(
        None, env={}, overrides={"paths.data_dir": str(tmp_path)}, cwd=tmp_path
    )
    inbox = Inbox.from_settings(settings, store)
    assert inbox.fetch is not None
    for address in REFUSED:
        with pytest.raises(ForbiddenUrl):
            inbox.fetch(f"http://{bracketed(address)}/a.png", "input_image_urls")


@pytest.fixture
def source() -> Iterator[Remote]:
    """A configured Hub or CivitAI on loopback, redirecting as they do to storage."""
    with serving(Remote(files={"/own.safetensors": b"\0" * 64})) as running:
        yield running


@pytest.mark.parametrize("kind", ["huggingface", "civitai"])
def test_a_source_redirecting_to_them_is_refused_at_that_hop(
    kind: str, source: Remote, tmp_path: Path
) -> None:
    settings = SourceSettings(hf_endpoint=source.url, civitai_url=source.url)
    access = settings.access(kind)
    for number, address in enumerate(REFUSED):
        source.redirects[f"/hop/{number}"] = f"http://{bracketed(address)}:{source.port}/f"
        with pytest.raises(ForbiddenUrl, match="not a public address"):
            fetch_to_file(
                f"{source.url}/hop/{number}",
                tmp_path / "part",
                access.rules,
                on_progress=lambda done, total: True,
            )
    assert not (tmp_path / "part").exists()


@pytest.mark.parametrize("kind", ["huggingface", "civitai"])
def test_a_sources_redirect_to_another_loopback_port_is_refused_unless_allowed(
    kind: str, source: Remote, tmp_path: Path
) -> None:
    """The stand-in is the configured source (trusted); the storage it redirects to is
    another port on loopback, a private address: refused before it is asked, unless
    `models.allow_private_urls`. A redirect within the source's origin is followed."""
    with serving(Remote(files={"/f": b"weights" * 8})) as storage:
        source.redirects.update(
            {"/away": f"{storage.url}/f", "/home": f"{source.url}/own.safetensors"}
        )

        def fetch(path: str, *, allow_private: bool = False) -> bytes:
            given = SourceSettings(
                hf_endpoint=source.url, civitai_url=source.url, allow_private_urls=allow_private
            )
            target = tmp_path / "part"
            target.unlink(missing_ok=True)
            fetch_to_file(
                source.url + path,
                target,
                given.access(kind).rules,
                on_progress=lambda done, total: True,
                weights=False,
            )
            return target.read_bytes()

        assert fetch("/home") == b"\0" * 64
        with pytest.raises(ForbiddenUrl, match=rf"127\.0\.0\.1:{storage.port}/f"):
            fetch("/away")
        assert storage.requests == []  # never asked
        assert fetch("/away", allow_private=True) == b"weights" * 8
        assert [path for path, _ in storage.requests] == ["/f"]


MALFORMED = [
    "HTTP://",  # no host
    "HTTP://:80",
    "http://u:p@/x",
    "http:/x",
    "//example.com/x",
    "http://[::1",
    "http://[]/x",
    "http://example.com:99999/x",
    "http://example.com:-1/x",
    "http://1.2.3.4:0/x",  # port 0: would have been checked as port 80
    "ftp://1.2.3.4/x",
    "",
    "   ",
]


def test_a_malformed_url_is_a_400_naming_url_at_every_door(make_bare: Callable[..., Bare]) -> None:
    bare = make_bare()
    with httpx.Client(base_url=bare.url, timeout=30) as http:
        for url in MALFORMED:
            for path, body in [
                ("/v1/downloads", {"source": "url", "url": url}),
                ("/v1/models/download/url", {"url": url}),
            ]:
                answer = http.post(path, json=body)
                assert answer.status_code == 400, (path, url, answer.text)
                error = answer.json()["error"]
                assert (error["code"], error["param"]) == ("invalid_parameters", "url"), url
        answer = http.get("/v1/models/thumbnail", params={"url": "http://[::1"})
        assert answer.status_code == 400 and answer.json()["error"]["param"] == "url"
    assert bare.store.downloads.list_downloads() == []
