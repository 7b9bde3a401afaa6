"""How a setting that may carry a credential is shown (`alice-spool config`, the admin's
configuration, the `db` commands, errors): every URL with its password, token-like user
name and token-like parameters as ***."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote_plus, urlsplit, urlunsplit

# A URL's scheme: what tells a value that may carry credentials from a path or a name.
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
# Query parameters that carry credentials, by any part of their name: token, api_key,
# apikey, access_token, password, sslpassword, secret, sig, X-Amz-Signature, auth...
# Masking a harmless one costs nothing; showing a secret one costs the secret.
_SECRET_PARAMETER = re.compile(r"token|key|secret|pass|pwd|sig|auth|credential|session", re.I)


def masked_urls(value: Any) -> Any:
    """`value` with `masked_url` applied to every string in it that is a URL."""
    if isinstance(value, str):
        return masked_url(value) if _URL.match(value) else value
    if isinstance(value, list):
        return [masked_urls(item) for item in value]
    if isinstance(value, dict):
        return {key: masked_urls(item) for key, item in value.items()}
    return value


# A database URL's user info as SQLAlchemy reads it (`make_url`): a user name without `:`
# or `/`, then a password of anything up to the `@`. (http and https URLs are left to the
# URL parser: there such characters in a password must be escaped.)
_DATABASE_USERINFO = re.compile(
    r"(?P<head>(?!https?://)[A-Za-z][\w+.-]*://[^:/@]*:)(?P<password>[^@]*)@"
)


def masked_url(url: str) -> str:
    """A URL with each credential it carries shown as ***: the password in its user
    info (or a user name alone, which is how a token is often passed:
    `https://TOKEN@host`), and the value of each query (or fragment) parameter whose
    name says it is one (`?password=`, `?token=`, `&sig=`...)."""
    database = _DATABASE_USERINFO.match(url)
    if database is not None and database["password"]:
        # SQLAlchemy takes everything up to the `@` as the password, `/`, `?` and `#`
        # included, where a URL parser would end the host part early and miss it.
        url = f"{database['head']}***@{url[database.end() :]}"
    try:
        parts = urlsplit(url)
    except ValueError:  # a URL no parser agrees on: nothing of it after the scheme
        return url.partition("://")[0] + "://***"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")
        user, colon, _password = userinfo.partition(":")
        netloc = f"{user}:***@{host}" if colon else f"***@{host}"
    masked = parts._replace(
        netloc=netloc,
        query=_masked_parameters(parts.query),
        fragment=_masked_parameters(parts.fragment) if "=" in parts.fragment else parts.fragment,
    )
    return url if masked == parts else urlunsplit(masked)


def _masked_parameters(query: str) -> str:
    """`a=1&token=xyz` -> `a=1&token=***`, the rest of the text exactly as it was."""
    pieces = []
    for piece in re.split(r"([&;])", query):
        name, equals, value = piece.partition("=")
        if equals and value and _SECRET_PARAMETER.search(unquote_plus(name)):
            piece = f"{name}=***"
        pieces.append(piece)
    return "".join(pieces)
