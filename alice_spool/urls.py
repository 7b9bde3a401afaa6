"""Fetching what an http(s) URL names under the address rules: only
http and https; every hop (the URL and each redirect) resolved and refused
(`forbidden_url`) if any of its addresses is not a global one (an IPv6 address that
embeds an IPv4 one judged by that IPv4 address), unless `models.allow_private_urls` or
the hop is on a trusted source's own origin (scheme, host and port); the connection
made to the address that was checked (so a name that resolves again to another address
cannot slip past the check); the body streamed and cut off past a size cap, and a whole
fetch held to a deadline.

Errors name the scheme, host and path of a URL, never its user info or query (where
signed URLs keep their tokens).
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit

import httpx

from .errors import ForbiddenUrl, InvalidParameters

MAX_REDIRECTS = 5
TIMEOUT_S = 30.0  # connecting, and each read
FETCH_TIMEOUT_S = 60.0  # a whole fetch of an image URL (models.fetch_timeout_s)
USER_AGENT = "alice-spool"
Resolver = Callable[[str, int], list[str]]
Origin = tuple[str, str, int]  # scheme, lower-case host, port (the scheme's default filled in)

# Ranges Python's `is_global` calls public (or did, in some versions) that no fetch may
# reach: "this network", shared, IETF protocol assignments (192.0.0.0/24 whole), the
# documentation and benchmarking nets, the old 6to4 relay anycast, reserved.
_REFUSED_V4 = tuple(
    ipaddress.IPv4Network(net)
    for net in (
        "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
        "172.16.0.0/12", "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16",
        "198.18.0.0/15", "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4",
    )
)  # fmt: skip
# IPv6 ranges refused whole: NAT64's local-use prefix (its IPv4 may sit anywhere in the
# next bits, RFC 8215), discard, IETF assignments (Teredo 2001::/32 among them: the far
# end of a Teredo tunnel is not ours to vouch for), documentation, SRv6, unique-local,
# link-local, site-local, multicast.
_REFUSED_V6 = tuple(
    ipaddress.IPv6Network(net)
    for net in (
        "64:ff9b:1::/48", "100::/64", "2001::/23", "2001:db8::/32", "3fff::/20", "5f00::/16",
        "fc00::/7", "fe80::/10", "fec0::/10", "ff00::/8",
    )
)  # fmt: skip
# IPv6 forms whose last 32 bits are an IPv4 address that the packets end up reaching:
# IPv4-mapped, IPv4-translated (SIIT), IPv4-compatible (:: and ::1 included: they
# unwrap to 0.0.0.0 and 0.0.0.1), NAT64's well-known prefix.
_LAST_32_BITS_V4 = tuple(
    ipaddress.IPv6Network(net)
    for net in ("::ffff:0:0/96", "::ffff:0:0:0/96", "::/96", "64:ff9b::/96")
)
_SIX_TO_FOUR = ipaddress.IPv6Network("2002::/16")  # the IPv4 address in bits 16..47


def resolve(host: str, port: int) -> list[str]:
    """The addresses a host name resolves to (an address resolves to itself)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries (mapped, translated, compatible, NAT64,
    6to4), which is where its packets go; None for a plain IPv6 address."""
    if any(ip in net for net in _LAST_32_BITS_V4):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip in _SIX_TO_FOUR:
        return ipaddress.IPv4Address((int(ip) >> 80) & 0xFFFFFFFF)
    return None


def is_global(address: str) -> bool:
    """Whether an address is a public one: not loopback, private, link-local, shared,
    reserved, documentation, multicast or unspecified; an IPv6 address that embeds an
    IPv4 one judged as that IPv4 address; Teredo and NAT64's local-use prefix never."""
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        if any(ip in net for net in _REFUSED_V6):
            return False
        ip = embedded_ipv4(ip) or ip
    if isinstance(ip, ipaddress.IPv4Address) and any(ip in net for net in _REFUSED_V4):
        return False
    return ip.is_global and not ip.is_multicast


def shown(url: str) -> str:
    """A URL as errors and logs show it: without user info, query or fragment."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def origin(url: str) -> Origin:
    """A URL's origin: scheme, lower-case host and port (the scheme's default when it
    names none). `ValueError` for a URL with no valid port."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    return (
        scheme,
        (parts.hostname or "").lower(),
        parts.port or (443 if scheme == "https" else 80),
    )


@dataclass(frozen=True)
class UrlRules:
    """Which URLs may be fetched: `allow_private` lifts the address rule (a trusted
    network); `trusted_origins` are configured sources (scheme, host and port) whose
    addresses are not checked; where they redirect to is."""

    allow_private: bool = False
    trusted_origins: frozenset[Origin] = frozenset()
    resolver: Resolver = field(default=resolve, compare=False)

    @classmethod
    def trusting(cls, *urls: str, allow_private: bool = False) -> UrlRules:
        """Rules that trust the origin of each configured source URL in `urls`."""
        return cls(allow_private, frozenset(origin(url) for url in urls if url))


@dataclass(frozen=True)
class Hop:
    """One request to make: the URL, and the address to connect to (None: let the
    client resolve it, for a host the rules do not check)."""

    url: str
    host: str
    address: str | None


def check(url: str, rules: UrlRules, *, field: str) -> Hop:
    """The hop for `url`, or `invalid_parameters` (not an http(s) URL) or
    `forbidden_url` (an address that is not global, where the rules want one)."""
    try:
        parts = urlsplit(url)
        scheme, host, port = origin(url)
    except ValueError:
        raise InvalidParameters(f"{field} is not a valid URL", field=field) from None
    if scheme not in ("http", "https") or not host:
        raise InvalidParameters(f"{field} must be an http or https URL", field=field)
    if parts.port == 0:  # `port or default` above would have checked another port
        raise InvalidParameters(f"{field} is not a valid URL (port 0)", field=field)
    if rules.allow_private or (scheme, host, port) in rules.trusted_origins:
        return Hop(url, host, None)
    try:
        addresses = rules.resolver(host, port)
    except (OSError, UnicodeError) as exc:
        raise InvalidParameters(
            f"{field}: cannot resolve {host}: {getattr(exc, 'strerror', None) or exc}",
            field=field,
        ) from None
    refused = [a for a in addresses if not is_global(a)]
    if refused or not addresses:
        raise ForbiddenUrl(
            f"{field}: {shown(url)} leads to {', '.join(refused) or 'no address'}, which is "
            "not a public address (models.allow_private_urls = true allows it)",
            field=field,
        )
    return Hop(url, host, addresses[0])


def _request(
    client: httpx.Client,
    hop: Hop,
    extra: dict[str, str] | None = None,
    timeout_s: float | None = None,
) -> httpx.Request:
    """A GET for the hop, sent to the checked address with the host's name in the Host
    header and (https) in TLS's server name, which the certificate is verified against;
    `timeout_s` for connecting and each read (else the client's)."""
    parts = urlsplit(hop.url)
    headers = {"User-Agent": USER_AGENT, **(extra or {})}
    timeout = httpx.Timeout(timeout_s) if timeout_s is not None else httpx.USE_CLIENT_DEFAULT
    if hop.address is None:
        return client.build_request("GET", hop.url, headers=headers, timeout=timeout)
    address = f"[{hop.address}]" if ":" in hop.address else hop.address
    netloc = address + (f":{parts.port}" if parts.port else "")
    target = parts._replace(netloc=netloc).geturl()
    headers["Host"] = parts.netloc.rpartition("@")[2]
    extensions = {"sni_hostname": hop.host} if parts.scheme == "https" else {}
    return client.build_request(
        "GET", target, headers=headers, extensions=extensions, timeout=timeout
    )


class Deadline:
    """When a whole fetch must be over (None: no deadline, each read has its own)."""

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds
        self._at = None if seconds is None else time.monotonic() + seconds

    def left(self) -> float | None:
        """Seconds until the deadline (None: none)."""
        return None if self._at is None else max(0.0, self._at - time.monotonic())

    def read_timeout(self) -> float | None:
        """How long the next connection or read may take: at most what is left."""
        if self._at is None:
            return None
        return min(TIMEOUT_S, max(0.001, self._at - time.monotonic()))

    def check(self, url: str, field: str) -> None:
        if self._at is not None and time.monotonic() >= self._at:
            raise InvalidParameters(
                f"{field}: fetching {shown(url)} took longer than {self.seconds:g} s", field=field
            )


def open_stream(
    client: httpx.Client,
    url: str,
    rules: UrlRules,
    *,
    field: str,
    headers: dict[str, str] | None = None,
    secret_headers: dict[str, str] | None = None,
    deadline: Deadline | None = None,
) -> tuple[httpx.Response, str]:
    """The streaming answer of the last hop (following up to MAX_REDIRECTS redirects,
    each hop checked) and that hop's URL; the caller closes it. `headers` go to every
    hop; `secret_headers` (a token) only to hops on the first URL's origin (scheme, host
    and port), never to the storage host a source redirects to. `deadline` holds every
    hop to what is left of it. httpx's errors are the caller's."""
    deadline = deadline or Deadline(None)
    hop = check(url, rules, field=field)
    first = origin(hop.url)
    for _ in range(MAX_REDIRECTS + 1):
        deadline.check(url, field)
        sent = {**(headers or {})}
        if secret_headers and origin(hop.url) == first:
            sent.update(secret_headers)
        answer = client.send(_request(client, hop, sent, deadline.read_timeout()), stream=True)
        if answer.is_redirect and "location" in answer.headers:
            answer.close()
            try:
                target = urljoin(hop.url, answer.headers["location"])
            except ValueError:
                raise InvalidParameters(
                    f"{field}: {shown(hop.url)} redirects to something that is not a URL",
                    field=field,
                ) from None
            hop = check(target, rules, field=field)
            continue
        return answer, hop.url
    raise InvalidParameters(
        f"{field}: {shown(url)} redirects more than {MAX_REDIRECTS} times", field=field
    )


@functools.cache
def _tls() -> ssl.SSLContext:
    """The certificates to verify servers with, loaded once (a tenth of a second each
    time, for every image URL and every file of a download otherwise)."""
    return httpx.create_ssl_context(trust_env=False)  # what httpx.Client builds


def client(timeout_s: float = TIMEOUT_S) -> httpx.Client:
    """An HTTP client as these rules want it: redirects followed by `open_stream`, hop
    by hop; no proxy or netrc from the environment."""
    return httpx.Client(timeout=timeout_s, follow_redirects=False, trust_env=False, verify=_tls())


def fetch(
    url: str,
    rules: UrlRules,
    *,
    max_bytes: int,
    field: str,
    timeout_s: float = FETCH_TIMEOUT_S,
) -> bytes:
    """The body `url` answers with (redirects followed, each hop checked), at most
    `max_bytes`, all of it within `timeout_s` (redirects and a body that trickles in
    included). Any failure is `invalid_parameters` naming `field` (or
    `forbidden_url`)."""
    deadline = Deadline(timeout_s)
    with client(min(timeout_s, TIMEOUT_S)) as http:
        try:
            answer, last = open_stream(
                http, url, rules, field=field, headers={"Accept": "image/*"}, deadline=deadline
            )
            cut = _cut_at_deadline(answer, deadline)
            try:
                if answer.status_code != 200:
                    raise InvalidParameters(
                        f"{field}: {shown(last)} answered {answer.status_code}", field=field
                    )
                body = _read(answer, last, max_bytes, field, deadline)
                deadline.check(url, field)  # a body cut at the deadline is no body
                return body
            finally:
                if cut is not None:
                    cut.cancel()
                answer.close()
        except httpx.HTTPError as exc:
            deadline.check(url, field)  # a read cut short by the deadline says so
            raise InvalidParameters(
                f"{field}: fetching {shown(url)} failed: {type(exc).__name__}", field=field
            ) from None


def _cut_at_deadline(answer: httpx.Response, deadline: Deadline) -> threading.Timer | None:
    """A read already waiting when the deadline comes would wait out its own timeout
    (the one it was sent with) past it: at the deadline the connection is shut, which
    ends that read at once."""
    left = deadline.left()
    stream = answer.extensions.get("network_stream")
    connection = stream.get_extra_info("socket") if stream is not None else None
    if left is None or not isinstance(connection, socket.socket):
        return None

    def cut() -> None:
        with contextlib.suppress(OSError):  # closed already: the read ended by itself
            connection.shutdown(socket.SHUT_RDWR)

    timer = threading.Timer(left, cut)
    timer.daemon = True
    timer.start()
    return timer


def _read(
    answer: httpx.Response, url: str, max_bytes: int, field: str, deadline: Deadline
) -> bytes:
    declared = answer.headers.get("content-length", "")
    too_big = InvalidParameters(
        f"{field}: {shown(url)} is larger than {max_bytes} bytes", field=field
    )
    if declared.isdigit() and int(declared) > max_bytes:
        raise too_big
    body = bytearray()
    for chunk in answer.iter_bytes():
        deadline.check(url, field)  # a body that trickles in keeps each read short
        body += chunk
        if len(body) > max_bytes:
            raise too_big
    return bytes(body)


def fetcher(
    *, allow_private: bool, max_bytes: int, timeout_s: float = FETCH_TIMEOUT_S
) -> Callable[[str, str], bytes]:
    """`fetch` as the image doors use it: `(url, field) -> body`, no trusted hosts."""
    rules = UrlRules(allow_private=allow_private)

    def get(url: str, field: str) -> bytes:
        return fetch(url, rules, max_bytes=max_bytes, field=field, timeout_s=timeout_s)

    return get
