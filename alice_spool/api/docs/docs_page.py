"""`/docs`: the API reference as one plain HTML page (no script), made from the same
description as `/openapi.json`, for people, ALICE's own API tests and text browsers.
The web UI's richer page is at `/web/#/docs`."""

from __future__ import annotations

import base64
import hashlib
import json
from html import escape
from typing import Any

_STYLE = """
body { font: 15px/1.5 system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem; }
h2 { margin-top: 2rem; font-size: 1.05rem; }
code, pre { font: 13px ui-monospace, monospace; }
pre { background: #f4f4f4; padding: .6rem; overflow-x: auto; }
.method { display: inline-block; min-width: 3.5rem; font-weight: bold; }
.note { color: #555; }
"""
# Its own policy: nothing but this page's one style element (by its hash), no script.
_STYLE_HASH = base64.b64encode(hashlib.sha256(_STYLE.encode()).digest()).decode()
DOCS_POLICY = (
    f"default-src 'none'; style-src 'sha256-{_STYLE_HASH}'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)


def render_docs(description: dict[str, Any]) -> str:
    """The page for an OpenAPI description (`openapi.describe`'s)."""
    title = escape(description["info"]["title"])
    version = escape(str(description["info"]["version"]))
    sections: list[str] = []
    for path, operations in description["paths"].items():
        for method, operation in operations.items():
            sections.append(_operation(path, method, operation))
    return (
        "<!doctype html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><title>{title} API</title>'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<style>{_STYLE}</style></head><body>"
        f"<h1>{title} {version}: the HTTP API</h1>"
        '<p class="note">Machine-readable: <a href="/openapi.json">/openapi.json</a>. '
        'Interactive, in the web UI: <a href="/web/#/docs">/web/#/docs</a>. Routes under '
        "<code>/v1/</code> take <code>Authorization: Bearer KEY</code> or "
        "<code>X-Api-Key: KEY</code> when the server has API keys.</p>"
        + "".join(sections)
        + "</body></html>\n"
    )


def _operation(path: str, method: str, operation: dict[str, Any]) -> str:
    anchor = escape(f"{method}-{path}".replace("/", "-").replace("{", "").replace("}", ""))
    parts = [
        f'<h2 id="{anchor}"><span class="method">{escape(method.upper())}</span> '
        f"<code>{escape(path)}</code></h2>"
    ]
    for paragraph in (operation.get("description") or operation.get("summary", "")).split("\n\n"):
        if paragraph.strip():
            parts.append(f"<p>{escape(paragraph)}</p>")
    if operation.get("security"):
        parts.append('<p class="note">Needs an API key.</p>')
    body = operation.get("requestBody", {}).get("content", {}).get("application/json")
    if body is not None:
        example = json.dumps(body.get("example"), indent=2, ensure_ascii=False)
        parts.append(f"<p>Example body:</p><pre>{escape(example)}</pre>")
        fields = body.get("schema", {}).get("properties", {})
        if fields:
            names = ", ".join(f"<code>{escape(name)}</code>" for name in fields)
            parts.append(f"<p>Fields: {names}.</p>")
    return "".join(parts)
