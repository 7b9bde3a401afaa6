"""Fetching what an http(s) URL names under the address rules of DESIGN section 11: only
http and https; every hop (the URL and each redirect) resolved and refused
(`forbidden_url`) if any of its addresses is not a global one, unless
`models.allow_private_urls` or the host is a trusted source; the connection made to the
address that was checked (so a name that resolves again to another address cannot slip
past the check); the body streamed and cut off past a size cap.

Errors name the scheme, host and path of a URL, never its user info or query (where
signed URLs keep their tokens).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit

import httpx

from .errors import ForbiddenUrl, InvalidParameters

MAX_REDIRECTS = 5
TIMEOUT_S = 30.0  # connecting, and each read
USER_AGENT = "alice-spool"
Resolver = Callable[[str, int], list[str]]


def resolve(host: str, port: int) -> list[str]:
    """The addresses a host name resolves to (an address resolves to itself)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def is_global(address: str) -> bool:
    """Whether an address is a public one (not loopback, private, link-local, shared,
    reserved, multicast, unspecified; an IPv4-mapped IPv6 address as its IPv4 one)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def shown(url: str) -> str:
    """A URL as errors and logs show it: without user info, query or fragment."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


@dataclass(frozen=True)
class UrlRules:
    """Which URLs may be fetched: `allow_private` lifts the address rule (a trusted
    network); `trusted_hosts` (lower-case host names) are configured sources whose
    addresses are not checked."""

    allow_private: bool = False
    trusted_hosts: frozenset[str] = frozenset()
    resolver: Resolver = field(default=resolve, compare=False)


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
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise InvalidParameters(f"{field} is not a valid URL", field=field) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidParameters(f"{field} must be an http or https URL", field=field)
    host = parts.hostname.lower()
    if rules.allow_private or host in rules.trusted_hosts:
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


def _request(client: httpx.Client, hop: Hop, extra: dict[str, str] | None = None) -> httpx.Request:
    """A GET for the hop, sent to the checked address with the host's name in the Host
    header and (https) in TLS's server name, which the certificate is verified against."""
    parts = urlsplit(hop.url)
    headers = {"User-Agent": USER_AGENT, **(extra or {})}
    if hop.address is None:
        return client.build_request("GET", hop.url, headers=headers)
    address = f"[{hop.address}]" if ":" in hop.address else hop.address
    netloc = address + (f":{parts.port}" if parts.port else "")
    target = parts._replace(netloc=netloc).geturl()
    headers["Host"] = parts.netloc.rpartition("@")[2]
    extensions = {"sni_hostname": hop.host} if parts.scheme == "https" else {}
    return client.build_request("GET", target, headers=headers, extensions=extensions)


def open_stream(
    client: httpx.Client,
    url: str,
    rules: UrlRules,
    *,
    field: str,
    headers: dict[str, str] | None = None,
    secret_headers: dict[str, str] | None = None,
) -> tuple[httpx.Response, str]:
    """The streaming answer of the last hop (following up to MAX_REDIRECTS redirects,
    each hop checked) and that hop's URL; the caller closes it. `headers` go to every
    hop; `secret_headers` (a token) only to hops on the first URL's origin (scheme, host
    and port), never to the storage host a source redirects to. httpx's errors are the
    caller's."""
    hop = check(url, rules, field=field)
    origin = _origin(hop.url)
    for _ in range(MAX_REDIRECTS + 1):
        sent = {**(headers or {})}
        if secret_headers and _origin(hop.url) == origin:
            sent.update(secret_headers)
        answer = client.send(_request(client, hop, sent), stream=True)
        if answer.is_redirect and "location" in answer.headers:
            answer.close()
            hop = check(urljoin(hop.url, answer.headers["location"]), rules, field=field)
            continue
        return answer, hop.url
    raise InvalidParameters(
        f"{field}: {shown(url)} redirects more than {MAX_REDIRECTS} times", field=field
    )


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    return (parts.scheme, (parts.hostname or "").lower(), parts.port)


def client(timeout_s: float = TIMEOUT_S) -> httpx.Client:
    """An HTTP client as these rules want it: redirects followed by `open_stream`, hop
    by hop; no proxy or netrc from the environment."""
    return httpx.Client(timeout=timeout_s, follow_redirects=False, trust_env=False)


def fetch(
    url: str,
    rules: UrlRules,
    *,
    max_bytes: int,
    field: str,
    timeout_s: float = TIMEOUT_S,
) -> bytes:
    """The body `url` answers with (redirects followed, each hop checked), at most
    `max_bytes`. Any failure is `invalid_parameters` naming `field` (or
    `forbidden_url`)."""
    with client(timeout_s) as http:
        try:
            answer, last = open_stream(http, url, rules, field=field, headers={"Accept": "image/*"})
            try:
                if answer.status_code != 200:
                    raise InvalidParameters(
                        f"{field}: {shown(last)} answered {answer.status_code}", field=field
                    )
                return _read(answer, last, max_bytes, field)
            finally:
                answer.close()
        except httpx.HTTPError as exc:
            raise InvalidParameters(
                f"{field}: fetching {shown(url)} failed: {type(exc).__name__}", field=field
            ) from None


def _read(answer: httpx.Response, url: str, max_bytes: int, field: str) -> bytes:
    declared = answer.headers.get("content-length", "")
    too_big = InvalidParameters(
        f"{field}: {shown(url)} is larger than {max_bytes} bytes", field=field
    )
    if declared.isdigit() and int(declared) > max_bytes:
        raise too_big
    body = bytearray()
    for chunk in answer.iter_bytes():
        body += chunk
        if len(body) > max_bytes:
            raise too_big
    return bytes(body)


def fetcher(*, allow_private: bool, max_bytes: int) -> Callable[[str, str], bytes]:
    """`fetch` as the image doors use it: `(url, field) -> body`, no trusted hosts."""
    rules = UrlRules(allow_private=allow_private)

    def get(url: str, field: str) -> bytes:
        return fetch(url, rules, max_bytes=max_bytes, field=field)

    return get
