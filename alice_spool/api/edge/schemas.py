"""JSON-schema parts several routes' contracts share: text, names and ids as the
server checks them (the patterns say exactly what the parsers take)."""

from __future__ import annotations

from typing import Any

from ...store.keys import KEY_NAME

# Python's whitespace (what the server strips), spelled out: regex engines disagree on \s.
BLANK = r"\t-\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
TEXT = rf"^[^\x00]*[^\x00{BLANK}][^\x00]*$"  # something that is not blank, and no NUL
NO_CONTROL = "^[^\\x00-\\x1f\\x7f]*$"
# `sd/<name>` or `<name>`: one safe path component (spec.normalise_model_id).
NAME = rf"[^/\\\x00-\x1f.{BLANK}][^/\\\x00-\x1f]{{0,199}}$"
MODEL_ID = r"^(sd/)?" + NAME
LORA_ID = r"^(lora/)?" + NAME
HF_REPO = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$"
CIVITAI_ID: dict[str, Any] = {"type": "integer", "minimum": 1, "maximum": 2**53 - 1}
DOWNLOAD_NAME: dict[str, Any] = {
    "type": "string",
    "pattern": "^[A-Za-z0-9-]([A-Za-z0-9._-]{0,126}[A-Za-z0-9.-])?$",
    "description": "the installed name (else the source's)",
}
KEY_NAME_PATTERN = f"^{KEY_NAME.pattern}$"


def optional(schema: dict[str, Any]) -> dict[str, Any]:
    """A field a request may leave out or send as null (the same to the server)."""
    kind = schema.get("type")
    return {**schema, "type": [kind, "null"]} if isinstance(kind, str) else schema
