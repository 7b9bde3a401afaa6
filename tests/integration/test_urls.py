"""Fetching URLs under the address rules (urls.py), against a real HTTP server on
127.0.0.1. No request ever leaves the machine: addresses the rules refuse are refused
before any connection, and public ones appear only in checks that connect to nothing."""

from __future__ import annotations

import io
from collections.abc import Iterator

import httpx
import pytest
from PIL import Image

from alice_spool import inputs, urls
from alice_spool.errors import ForbiddenUrl, InvalidParameters
from alice_spool.spec import parse_spec
from tests.support.remote import Remote, serving


def png(colour: tuple[int, int, int] = (10, 120, 200), size: tuple[int, int] = (80, 72)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "PNG")
    return buffer.getvalue()


BOAT = png()
PRIVATE = urls.UrlRules(allow_private=True)


@pytest.fixture(scope="module")
def remote() -> Iterator[Remote]:
    served = Remote(files={"/boat.png": BOAT, "/notes.txt": b"not an image", "/big": b"x" * 5000})
    with serving(served) as running:
        served.redirects.update(
            {
                "/moved": "/boat.png",
                "/moved-twice": f"{running.url}/moved",
                "/loop": "/loop",
                # From a trusted name to an address the rules check: refused at that hop.
                "/away": f"http://127.0.0.1:{running.port}/boat.png",
                "/ftp": "ftp://127.0.0.1/boat.png",
            }
        )
        yield running


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1", "127.8.9.10", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254",
        "100.64.0.1", "0.0.0.0", "255.255.255.255", "224.0.0.1", "198.18.0.1", "::1", "::",
        "fe80::1", "fc00::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1", "2001:db8::1", "ff02::1",
    ],
)  # fmt: skip
def test_non_global_addresses_are_refused(address: str) -> None:
    assert not urls.is_global(address)
    host = f"[{address}]" if ":" in address else address
    with pytest.raises(ForbiddenUrl, match="not a public address") as info:
        urls.check(f"http://{host}:8080/a.png", urls.UrlRules(), field="input_image_urls")
    assert info.value.code == "forbidden_url"
    assert info.value.details["field"] == "input_image_urls"


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111"])
def test_public_addresses_pass_the_check(address: str) -> None:
    assert urls.is_global(address)
    host = f"[{address}]" if ":" in address else address
    hop = urls.check(f"https://{host}/a.png", urls.UrlRules(), field="f")  # connects to nothing
    assert hop.address == address


def test_a_name_is_checked_by_every_address_it_resolves_to() -> None:
    def resolver(host: str, port: int) -> list[str]:
        return {"mixed.test": ["8.8.8.8", "10.0.0.7"], "public.test": ["8.8.4.4"]}[host]

    rules = urls.UrlRules(resolver=resolver)
    with pytest.raises(ForbiddenUrl, match=r"10\.0\.0\.7"):
        urls.check("http://mixed.test/a.png", rules, field="f")
    assert urls.check("http://public.test/a.png", rules, field="f").address == "8.8.4.4"
    with pytest.raises(ForbiddenUrl):  # /etc/hosts: loopback
        urls.check("http://localhost/a.png", urls.UrlRules(), field="f")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://example.com/a.png", "http or https"),
        ("file:///etc/passwd", "http or https"),
        ("http:///a.png", "http or https"),
        ("http://[::1/a.png", "not a valid URL"),
        ("http://example.com:99999/a.png", "not a valid URL"),
    ],
)
def test_only_http_and_https_urls(url: str, message: str) -> None:
    with pytest.raises(InvalidParameters, match=message) as info:
        urls.check(url, urls.UrlRules(), field="input_image_urls")
    assert info.value.field == "input_image_urls"


def test_the_connection_goes_to_the_checked_address_under_the_hosts_name() -> None:
    """The request is built for the address that was checked (a name resolved again to
    another address cannot slip past), with the name in Host and in TLS's server name."""
    hop = urls.Hop("https://images.test:8443/a.png?sig=1", "images.test", "203.0.113.5")
    with httpx.Client() as client:
        request = urls._request(client, hop)  # built, never sent
        assert str(request.url) == "https://203.0.113.5:8443/a.png?sig=1"
        assert request.headers["Host"] == "images.test:8443"
        assert request.extensions["sni_hostname"] == "images.test"
        six = urls._request(client, urls.Hop("http://v6.test/a", "v6.test", "2001:db8::5"))
        assert six.url.host == "2001:db8::5" and six.headers["Host"] == "v6.test"


def test_fetching_follows_redirects_within_the_rules(remote: Remote) -> None:
    def get(path: str, **options: float) -> bytes:
        given = {"max_bytes": 10_000, **options}
        return urls.fetch(remote.url + path, PRIVATE, field="input_image_urls", **given)

    assert get("/boat.png") == BOAT
    assert get("/moved-twice") == BOAT
    for path, message in [
        ("/loop", "redirects more than 5 times"),
        ("/gone.png", "answered 404"),
        ("/big", "larger than 1000 bytes"),
        ("/endless", "larger than 1000 bytes"),
        ("/ftp", "http or https"),
    ]:
        with pytest.raises(InvalidParameters, match=message) as info:
            get(path, **({"max_bytes": 1000} if path in ("/big", "/endless") else {}))
        assert info.value.field == "input_image_urls"
    with pytest.raises(InvalidParameters, match=r"took longer than 0\.3 s"):
        get("/slow", timeout_s=0.3)


def test_every_hop_is_checked(remote: Remote) -> None:
    """A trusted origin (a configured source) redirecting to an address the rules
    refuse: refused at that hop, before connecting there."""
    trusted = urls.UrlRules.trusting(f"http://localhost:{remote.port}")
    url = f"http://localhost:{remote.port}"
    assert urls.fetch(f"{url}/boat.png", trusted, max_bytes=10_000, field="f") == BOAT
    before = len(remote.requests)
    with pytest.raises(ForbiddenUrl, match=r"127\.0\.0\.1"):
        urls.fetch(f"{url}/away", trusted, max_bytes=10_000, field="f")
    assert [path for path, _ in remote.requests[before:]] == ["/away"]  # never /boat.png
    with pytest.raises(ForbiddenUrl):  # and by default, not even the first hop
        urls.fetch(f"{remote.url}/boat.png", urls.UrlRules(), max_bytes=10_000, field="f")
    assert len(remote.requests) == before + 1


def test_errors_never_show_a_urls_user_info_or_query(remote: Remote) -> None:
    secret = f"http://user:hunter2@127.0.0.1:{remote.port}/gone.png?token=s3cr3t#frag"
    for rules in (PRIVATE, urls.UrlRules()):
        with pytest.raises((InvalidParameters, ForbiddenUrl)) as info:
            urls.fetch(secret, rules, max_bytes=10_000, field="f")
        assert "hunter2" not in info.value.message and "s3cr3t" not in info.value.message
        assert f"127.0.0.1:{remote.port}/gone.png" in info.value.message


def test_the_intake_takes_alices_input_image_urls(remote: Remote) -> None:
    fetch = urls.fetcher(allow_private=True, max_bytes=10_000)
    request = {"prompt": "a boat", "input_image_urls": [f"{remote.url}/boat.png", "ignored"]}
    fields, staged = inputs.take(request, 10**6, fetch=fetch)
    spec = parse_spec(fields)
    assert staged.images["init_image"].data == BOAT
    assert spec.init_image == "sha256:" + staged.images["init_image"].sha256
    assert (spec.width, spec.height, spec.strength) == (80, 72, 0.75)  # the input's size
    for extra, field, message in [
        ({"input_image_urls": [f"{remote.url}/notes.txt"]}, "input_image_urls", "not a PNG"),
        ({"input_image_urls": "http://x"}, "input_image_urls", "a list of URLs"),
        ({"init_image": "AAAA"}, "input_image_urls", "not both"),
        ({"input_images": ["AAAA"]}, "input_image_urls", "not both"),
    ]:
        with pytest.raises(InvalidParameters, match=message) as info:
            inputs.take({**request, **extra}, 10**6, fetch=fetch)
        assert info.value.field == field
    with pytest.raises(ForbiddenUrl):
        inputs.take(request, 10**6, fetch=urls.fetcher(allow_private=False, max_bytes=10_000))
    with pytest.raises(InvalidParameters, match="not taken here"):
        inputs.take(request, 10**6)  # a door that fetches nothing
    assert inputs.take({"prompt": "x", "input_image_urls": []}, 10**6)[1].images == {}
