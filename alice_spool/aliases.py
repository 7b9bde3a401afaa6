"""Other servers' model names for this server's models (pure).

Clients written for OpenAI send OpenAI's image model names, hard-coded or by default:
`dall-e-2`, `dall-e-3`, `gpt-image-1`, `gpt-image-1-mini`, `gpt-image-1.5`,
`gpt-image-2`, `chatgpt-image-latest`, and any later `gpt-image-*` or `chatgpt-image-*`.
`[models.aliases]` maps any name to an installed model (`"dall-e-3" = "sd/flux-schnell"`);
with no alias configured for it, an OpenAI image model name means the default model.
`resolve` says which model a name stands for and what kind of name it was, so that the
OpenAI doors can answer as the named model's API does (gpt-image: base64 and `usage`;
DALL-E: URLs and `revised_prompt`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

# OpenAI's image models, by the names its API takes (any later gpt-image-* and
# chatgpt-image-* too: see openai_kind); these are the ones GET /v1/models lists.
OPENAI_IMAGE_MODELS = (
    "dall-e-2", "dall-e-3", "gpt-image-1", "gpt-image-1-mini", "gpt-image-1.5",
    "gpt-image-2", "gpt-image-2.5-sunburst", "gpt-image-2.5-flare", "gpt-image-2.6-sunburst",
    "gpt-image-2.6-flare", "chatgpt-image-latest",
)  # fmt: skip
_GPT_IMAGE = re.compile(r"(chat)?gpt-image-[a-z0-9][a-z0-9.\-]{0,63}")


def openai_kind(name: str) -> str | None:
    """`gpt-image` or `dall-e` for one of OpenAI's image model names, else None."""
    text = name.strip().lower()
    if text in ("dall-e-2", "dall-e-3"):
        return "dall-e"
    if _GPT_IMAGE.fullmatch(text):
        return "gpt-image"
    return None


@dataclass(frozen=True)
class Resolved:
    """What a request's `model` stands for."""

    model: str | None  # the model to run (as the request gives it), None: the default
    alias: str | None  # the name asked for, when it was an alias or an OpenAI name
    kind: str | None  # "gpt-image" | "dall-e" | None: whose API's answer shape fits


def resolve(name: str | None, aliases: Mapping[str, str]) -> Resolved:
    """The model a request's `model` field names: a configured alias's model, the
    default model for OpenAI's image model names, or the name itself (None or "": the
    default model). Aliases are matched exactly first, then without regard to case."""
    if name is None or not name.strip():
        return Resolved(None, None, None)
    text = name.strip()
    kind = openai_kind(text)
    target = aliases.get(text)
    if target is None:
        folded = {key.lower(): value for key, value in aliases.items()}
        target = folded.get(text.lower())
    if target is not None:
        return Resolved(target, text, kind)
    if kind is not None:
        return Resolved(None, text, kind)
    return Resolved(text, None, None)
