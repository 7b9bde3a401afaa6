"""`/openapi.json`: every route, from the routes themselves (path, methods, summary from
the handler's docstring), with the request bodies the doors take."""

from __future__ import annotations

import re
from typing import Any

from starlette.routing import Route

from ... import spec
from ...downloads.civitai import SORTS as _CIVITAI_SORTS
from ...downloads.civitai import TYPES as _CIVITAI_TYPES
from ...downloads.huggingface import SORTS as _HF_SORTS
from ...spec import SPEC_FIELDS, request_json_schema
from ...states import DownloadStatus, JobStatus, Source
from ...store.keys import KEY_NAME, MAX_RATE_LIMIT
from ..dialects.formats import FORMATS
from ..dialects.openai import fields as openai_fields

# Python's whitespace (what the server strips), spelled out: regex engines disagree on \s.
_BLANK = r"\t-\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
_TEXT = rf"^[^\x00]*[^\x00{_BLANK}][^\x00]*$"  # something that is not blank, and no NUL
# The error body of every error answer.
ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "code": {"type": "string"},
                "param": {"type": "string"},
            },
        }
    },
}


def _sizes() -> str:
    """Every size a request may name: multiples of SIZE_MULTIPLE in SIZE_MIN..SIZE_MAX."""
    return "|".join(
        str(size) for size in range(spec.SIZE_MIN, spec.SIZE_MAX + 1, spec.SIZE_MULTIPLE)
    )


# `sd/<name>` or `<name>`: one safe path component (spec.normalise_model_id).
_NAME = rf"[^/\\\x00-\x1f.{_BLANK}][^/\\\x00-\x1f]{{0,199}}$"
_MODEL_ID = r"^(sd/)?" + _NAME
_CONVERTOR = re.compile(r"\{(\w+):\w+\}")
_HF_REPO = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$"
_CIVITAI_ID = {"type": "integer", "minimum": 1, "maximum": 2**53 - 1}
_DOWNLOAD_NAME = {
    "type": "string",
    "pattern": "^[A-Za-z0-9-]([A-Za-z0-9._-]{0,126}[A-Za-z0-9.-])?$",
    "description": "the installed name (else the source's)",
}
_LORA_ID = r"^(lora/)?" + _NAME


_LORA_SCALE = {
    "type": "number",
    "minimum": spec.LORA_SCALE_MIN,
    "maximum": spec.LORA_SCALE_MAX,
    "default": 1,
}
# A path whose last component (less .safetensors) is a LoRA name.
_LORA_PATH = rf"^(.*[/\\])?{_NAME.removesuffix('$')}$"


def _optional(schema: dict[str, Any]) -> dict[str, Any]:
    """A field a request may leave out or send as null (the same to the server)."""
    kind = schema.get("type")
    return {**schema, "type": [kind, "null"]} if isinstance(kind, str) else schema


def openai_image_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's image-API fields (openai_fields.py), and `model` and `size` as its
    clients send them, over the request's own `fields` (each may be null: left out)."""
    choice = {
        "quality": openai_fields.QUALITIES,
        "style": openai_fields.STYLES,
        "moderation": openai_fields.MODERATIONS,
        "input_fidelity": openai_fields.FIDELITIES,
        "complexity": openai_fields.COMPLEXITIES,
        "response_format": openai_fields.RESPONSE_FORMATS,
        "output_format": tuple(FORMATS),
        # transparent: refused, as no installed model family makes one
        "background": ("opaque", "auto"),
    }
    identifier = {
        "type": "string",
        "maxLength": openai_fields.IDENTIFIER_MAX_CHARS,
        "pattern": "^[^\\x00]*$",
        "description": "recorded with the job",
    }
    described = {
        "quality": "steps from the model family's quality table; a request's steps win",
        "output_format": "the answer's image format (the parameters kept in its metadata)",
        "background": "transparent is refused: no installed model makes one",
        "response_format": "b64_json by default for gpt-image names, else url",
    }
    return {
        "model": _optional(
            {
                "type": "string",
                "example": "dall-e-3",
                "description": "an installed model, an alias ([models.aliases]) or one of "
                "OpenAI's image model names (the default model unless aliased)",
            }
        ),
        "size": _optional(
            {"anyOf": [fields["size"], {"const": "auto"}], "description": "WxH, or auto"}
        ),
        **{
            name: {"enum": [*values, None], "description": described.get(name, "")}
            for name, values in choice.items()
        },
        "output_compression": _optional(
            {"type": "integer", "minimum": 0, "maximum": 100, "default": 100}
        ),
        "user": _optional(identifier),
        "safety_identifier": _optional(identifier),
        "stream": _optional(
            {"type": "boolean", "description": "server-sent events: one per finished image"}
        ),
        "partial_images": _optional(
            {"type": "integer", "minimum": 0, "maximum": openai_fields.PARTIAL_IMAGES_MAX}
        ),
    }


def _bodies(generation: Any) -> dict[str, dict[str, Any]]:
    request = request_json_schema(generation)
    return {
        "/v1/jobs": request,
        "/v1/images/generations": {
            **request,
            "properties": {
                **{k: v for k, v in request["properties"].items() if k != "id"},
                **openai_image_fields(request["properties"]),
            },
        },
        "/v1/chat/completions": {
            "type": "object",
            "required": ["messages"],
            "properties": {
                "model": request["properties"]["model"],
                "messages": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["role"],
                        "properties": {
                            "role": {"type": "string"},
                            "content": {
                                "anyOf": [
                                    {"type": "string"},
                                    {"type": "array", "items": {"type": "object"}},
                                    {"type": "null"},
                                ],
                                "description": "text, OpenAI's content parts, or null",
                            },
                        },
                    },
                    "contains": {  # a user message with text, as a string or in parts
                        "required": ["role", "content"],
                        "properties": {
                            "role": {"const": "user"},
                            "content": {
                                "anyOf": [
                                    {"type": "string", "pattern": _TEXT},
                                    {
                                        "type": "array",
                                        "contains": {
                                            "type": "object",
                                            "required": ["type", "text"],
                                            "properties": {
                                                "type": {"const": "text"},
                                                "text": {"type": "string", "pattern": _TEXT},
                                            },
                                        },
                                    },
                                ]
                            },
                        },
                    },
                    "description": "the prompt is the last user message's text",
                },
                "stream": {"type": "boolean"},
                "metadata": {"type": "object", "description": "image parameters (SAM)"},
                "sam_config": {"type": "object", "description": "image parameters (ALICE)"},
            },
        },
        "/v1/batches": {
            "type": "object",
            "required": ["requests"],
            "properties": {"requests": {"type": "array", "minItems": 1, "items": request}},
        },
        "/v1/jobs/{job_id}/priority": {
            "type": "object",
            "required": ["priority"],
            "properties": {
                "priority": {
                    "type": "integer",
                    "minimum": spec.PRIORITY_MIN,
                    "maximum": spec.PRIORITY_MAX,
                    "description": "a user's key may set at most users.max_priority",
                }
            },
        },
        "/v1/models/default": {
            "type": "object",
            "required": ["model"],
            "properties": {"model": {"type": "string", "pattern": _MODEL_ID, "example": "sd/tiny"}},
        },
        "/v1/downloads": {
            "oneOf": [
                {
                    "type": "object",
                    "required": ["source", "repo"],
                    "additionalProperties": False,
                    "properties": {
                        "source": {"const": "huggingface"},
                        "repo": {"type": "string", "pattern": _HF_REPO, "example": "org/name"},
                        "revision": {
                            "type": "string",
                            "pattern": r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,127}$",
                        },
                        "file": {"type": "string", "description": "one file of the repository"},
                        "kind": {"enum": ["diffusers", "checkpoint", "lora"]},
                        "name": _DOWNLOAD_NAME,
                    },
                },
                {
                    "type": "object",
                    "required": ["source"],
                    "additionalProperties": False,
                    "properties": {
                        "source": {"const": "civitai"},
                        "model_id": _CIVITAI_ID,
                        "version_id": _CIVITAI_ID,
                        "file_id": _CIVITAI_ID,
                        "name": _DOWNLOAD_NAME,
                    },
                    "description": "model_id or version_id is required",
                },
                {
                    "type": "object",
                    "required": ["source", "url"],
                    "additionalProperties": False,
                    "properties": {
                        "source": {"const": "url"},
                        "url": {
                            "type": "string",
                            "pattern": "^[ \t]*[Hh][Tt][Tt][Pp][Ss]?://",
                            "description": "its host must resolve to public addresses only, "
                            "unless models.allow_private_urls (400 forbidden_url)",
                        },
                        "kind": {"enum": ["checkpoint", "lora"]},
                        "name": _DOWNLOAD_NAME,
                        "sha256": {"type": "string", "pattern": "^[0-9a-fA-F]{64}$"},
                    },
                },
            ]
        },
        "/v1/auth/keys/generate": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string", "pattern": KEY_NAME_PATTERN},
                "isAdmin": {"type": "boolean"},
                "rateLimitPerMinute": {
                    "type": "integer",
                    "minimum": 0,
                    "maximum": MAX_RATE_LIMIT,
                },
            },
        },
        "/v1/auth/register": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string", "pattern": KEY_NAME_PATTERN},
                "invite_code": {"type": "string"},
            },
        },
        "/v1/auth/login": {
            "type": "object",
            "required": ["key"],
            "properties": {"key": {"type": "string", "minLength": 1}},
        },
        "/v1/auth/invites": {
            "type": "object",
            "properties": {
                "uses": {"type": "integer", "minimum": 1, "maximum": 1000},
                "expiresHours": {"type": "number", "exclusiveMinimum": 0, "maximum": 8760},
            },
        },
        "/v1/models/search/civitai": {
            "type": "object",
            "properties": {
                "query": {"type": "string", "maxLength": 200},
                "types": {"type": "array", "items": {"enum": list(_CIVITAI_TYPES)}},
                "sort": {"enum": list(_CIVITAI_SORTS)},
                "nsfw": {"type": "boolean"},
                "limit": {"type": "integer", "minimum": 1, "maximum": 100},
                "page": {"type": "integer", "minimum": 1, "maximum": 50},
            },
        },
        "/v1/models/search/huggingface": {
            "type": "object",
            "properties": {
                "query": {"type": "string", "maxLength": 200},
                "filterTags": {"type": "array", "items": {"type": "string"}},
                "sort": {"enum": list(_HF_SORTS)},
                "limit": {"type": "integer", "minimum": 1, "maximum": 100},
            },
        },
        "/v1/models/download/civitai": {
            "type": "object",
            "properties": {
                "modelId": _CIVITAI_ID,
                "versionId": _CIVITAI_ID,
                "fileId": _CIVITAI_ID,
                "modelType": {"type": "string", "description": "ignored: CivitAI's type wins"},
            },
        },
        "/v1/models/download/huggingface": {
            "type": "object",
            "required": ["modelId"],
            "properties": {
                "modelId": {"type": "string", "pattern": _HF_REPO},
                "filename": {"type": "string"},
                "revision": {"type": "string"},
            },
        },
        "/v1/gallery/{image_id}/privacy": {
            "type": "object",
            "required": ["isPublic"],
            "properties": {
                "isPublic": {"type": "boolean"},
                "expiresInHours": {"type": "number", "minimum": 1, "maximum": 168, "default": 24},
            },
        },
        "/v1/gallery/{image_id}/tags": {
            "type": "object",
            "required": ["tags"],
            "properties": {
                "tags": {
                    "type": "array",
                    "maxItems": 20,
                    "items": {"type": "string", "minLength": 1, "maxLength": 50},
                    "description": "lower-cased and trimmed; a blank one is refused",
                }
            },
        },
        "/v1/models/download/url": {
            "type": "object",
            "required": ["url"],
            "properties": {
                "url": {"type": "string"},
                "filename": {"type": "string"},
                "isLora": {"type": "boolean"},
            },
        },
    }


KEY_NAME_PATTERN = f"^{KEY_NAME.pattern}$"
_EXAMPLES: dict[str, Any] = {
    "/v1/jobs": {"prompt": "a lighthouse at dusk", "steps": 25, "seed": 7},
    "/v1/images/generations": {"prompt": "a red fox", "size": "512x512", "n": 1},
    "/v1/chat/completions": {
        "model": "sd/tiny",
        "messages": [{"role": "user", "content": "a harbour at dawn"}],
        "metadata": {"steps": 25, "guidance_scale": 7.5, "width": 512, "height": 512},
    },
    "/v1/batches": {"requests": [{"prompt": "one"}, {"prompt": "two", "id": "two-1"}]},
    "/v1/jobs/{job_id}/priority": {"priority": 10},
    "/v1/models/default": {"model": "sd/tiny"},
    "/v1/downloads": {"source": "huggingface", "repo": "stabilityai/sd-turbo"},
    "/v1/auth/keys/generate": {"name": "alice", "isAdmin": False},
    "/v1/auth/register": {"name": "bob", "invite_code": "the code an admin gave you"},
    "/v1/auth/invites": {"uses": 1, "expiresHours": 168},
    "/v1/auth/login": {"key": "sd-..."},
    "/v1/models/search/civitai": {"query": "", "types": ["LORA"], "sort": "Highest Rated"},
    "/v1/models/search/huggingface": {"query": "stable diffusion", "sort": "downloads"},
    "/v1/models/download/civitai": {"modelId": 4201, "versionId": 130072},
    "/v1/models/download/huggingface": {"modelId": "stabilityai/sd-turbo"},
    "/v1/models/download/url": {"url": "https://example.com/style.safetensors", "isLora": True},
    "/v1/gallery/{image_id}/privacy": {"isPublic": True, "expiresInHours": 24},
    "/v1/gallery/{image_id}/tags": {"tags": ["portrait", "dusk"]},
}
_OPEN = (
    "/health",
    "/metrics",
    "/openapi.json",
    "/v1/auth/registration-mode",
    "/v1/auth/register",
    "/v1/auth/login",
    "/v1/auth/logout",
)
_UI = ("/", "/docs")  # pages for people (the web UI, the API page), not API routes


# The gallery's text filters: no control character (a NUL cannot be stored); tags at
# most 20 of at most 50 characters (api/gallery.py).
_NO_CONTROL = "^[^\\x00-\\x1f\\x7f]*$"
_GALLERY_TEXT: dict[str, Any] = {"type": "string", "maxLength": 200, "pattern": _NO_CONTROL}
_GALLERY_TAGS: dict[str, Any] = {
    "type": "array",
    "maxItems": 20,
    "items": {"type": "string", "maxLength": 50, "pattern": "^[^,\\x00-\\x1f\\x7f]*$"},
}

# The query parameters each route reads.
_QUERY: dict[tuple[str, str], list[dict[str, Any]]] = {
    ("GET", "/v1/jobs"): [
        {
            "name": "status",
            "in": "query",
            "schema": {"type": "array", "items": {"enum": [s.value for s in JobStatus]}},
            "style": "form",
            "explode": True,
            "description": "repeatable",
        },
        {"name": "batch_id", "in": "query", "schema": {"type": "string"}},
        {"name": "model", "in": "query", "schema": {"type": "string"}},
        {"name": "source", "in": "query", "schema": {"enum": [s.value for s in Source]}},
        {
            "name": "limit",
            "in": "query",
            "schema": {"type": "integer", "minimum": 1, "maximum": 500, "default": 50},
        },
        {
            "name": "before",
            "in": "query",
            "schema": {"type": "string"},
            "description": "the next_cursor of the previous page",
        },
    ],
    ("GET", "/v1/gallery"): [
        {
            "name": name,
            "in": "query",
            "schema": schema,
            "description": text,
            **({"style": "form", "explode": False} if name == "tags" else {}),
        }
        for name, schema, text in [
            ("limit", {"type": "integer", "minimum": 1, "maximum": 200, "default": 50}, "page"),
            ("offset", {"type": "integer", "minimum": 0, "maximum": 10**9, "default": 0}, "page"),
            ("include_public", {"type": "boolean", "default": True}, "others' shared ones"),
            ("include_private", {"type": "boolean", "default": True}, "unshared ones"),
            ("tags", _GALLERY_TAGS, "comma list: images with every one"),
            ("search", _GALLERY_TEXT, "in the prompt, any case"),
            ("model", _GALLERY_TEXT, "sd/<name>"),
            ("since", {"type": "string", "format": "date-time"}, "made at or after"),
            ("until", {"type": "string", "format": "date-time"}, "made before"),
        ]
    ],
    ("GET", "/v1/downloads"): [
        {
            "name": "status",
            "in": "query",
            "schema": {"type": "array", "items": {"enum": [s.value for s in DownloadStatus]}},
            "style": "form",
            "explode": True,
            "description": "repeatable",
        },
        {
            "name": "limit",
            "in": "query",
            "schema": {"type": "integer", "minimum": 1, "maximum": 500, "default": 100},
        },
    ],
    ("GET", "/v1/models/search"): [
        {"name": "source", "in": "query", "schema": {"enum": ["civitai", "huggingface"]}},
        {"name": "query", "in": "query", "schema": {"type": "string", "maxLength": 200}},
        {
            "name": "types",
            "in": "query",
            "schema": {"type": "array", "items": {"type": "string"}},
            "style": "form",
            "explode": True,
            "description": "CivitAI's type names, repeated or comma-separated",
        },
        {"name": "sort", "in": "query", "schema": {"type": "string"}},
        {"name": "nsfw", "in": "query", "schema": {"enum": ["true", "false", "1", "0"]}},
        {"name": "cursor", "in": "query", "schema": {"type": "string"}},
        {
            "name": "limit",
            "in": "query",
            "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 20},
        },
    ],
    ("GET", "/v1/models/thumbnail"): [
        {
            "name": "url",
            "in": "query",
            "required": True,
            "schema": {"type": "string"},
            "description": "a search result's thumbnail (CivitAI's image host only)",
        }
    ],
    ("GET", "/v1/models"): [
        {"name": "include_broken", "in": "query", "schema": {"enum": ["true", "false", "1", "0"]}}
    ],
    ("GET", "/v1/stats"): [
        {
            "name": "window_s",
            "in": "query",
            "schema": {"type": "integer", "minimum": 60, "maximum": 86400, "default": 3600},
        }
    ],
    ("GET", "/metrics"): [
        {
            "name": "format",
            "in": "query",
            "schema": {"enum": ["prometheus", "json"]},
            "description": "else by Accept",
        }
    ],
}
# 202 new (200 a repeat, for jobs and batches)
_CREATES = {
    ("POST", "/v1/jobs"),
    ("POST", "/v1/batches"),
    ("POST", "/v1/downloads"),
    ("POST", "/v1/models/download/civitai"),
    ("POST", "/v1/models/download/huggingface"),
    ("POST", "/v1/models/download/url"),
}
_MAKES = {  # 201: a key or an invite code, in this answer only
    ("POST", "/v1/auth/keys/generate"),
    ("POST", "/v1/auth/register"),
    ("POST", "/v1/auth/invites"),
}
# The routes that answer when their job is done, and the status each gives when it is
# not done in server.request_timeout_s (GTX 1060's API says 408 for it).
_WAITS = {
    ("POST", "/v1/chat/completions"): "504",
    ("POST", "/v1/images/generations"): "504",
    ("POST", "/v1/images/edits"): "504",
    ("POST", "/v1/images/variations"): "504",
    ("POST", "/sdapi/v1/txt2img"): "504",
    ("POST", "/sdapi/v1/img2img"): "504",
    ("POST", "/v1/txt2img"): "504",
    ("POST", "/v1/img2img"): "504",
    ("POST", "/api/v1/generate/txt2img"): "504",
    ("POST", "/generate"): "408",
}
# The routes that ask CivitAI or the Hugging Face Hub while the client waits.
_SEARCHES = {
    ("GET", "/v1/models/search"),
    ("POST", "/v1/models/search/civitai"),
    ("POST", "/v1/models/search/huggingface"),
}
_FORMS = ("/v1/images/edits", "/v1/images/variations")  # multipart bodies
_ERROR = {"application/json": {"schema": ERROR_SCHEMA}}


def _responses(path: str, method: str, has_body: bool, needs_key: bool) -> dict[str, Any]:
    """The statuses a route answers, as the code gives them."""
    answers: dict[str, Any] = {"200": {"description": "OK"}}
    if (method, path) in _CREATES:
        answers["202"] = {"description": "Queued"}
    if (method, path) in _MAKES:
        answers["201"] = {"description": "Made (a key or code shown this once)"}
    errors = {"421": "not this server's host name (server.allowed_hosts)"}
    if path.startswith(("/v1/", "/sdapi/")) or (method, path) in _QUERY:
        errors["400"] = "invalid parameters"
    if needs_key:
        errors["401"] = "a valid API key is needed"
    if path.startswith(("/v1/", "/sdapi/")):
        errors["429"] = "rate limited (keys, failed keys, open streams)"
        errors["503"] = "queue full, or the database busy or its disk full (Retry-After)"
    if path in ("/readyz", "/api/v1/ready"):
        errors["503"] = "not ready: no runner reports, or the database is in trouble"
    if "{" in path or path in ("/images/{name}", "/v1/models/default"):
        errors["404"] = "no such job, batch, model or image"
    if method in ("POST", "PATCH", "DELETE"):
        errors["403"] = "a change requested from another site, or another's shared image"
    if method == "POST":
        errors["409"] = "not possible in the job's state, or an idempotency conflict"
    if has_body:
        errors.update(
            {
                "400": "invalid JSON or parameters",
                "404": "the model is not installed",
                "408": "the body did not arrive in time",
                "413": "the body, or the batch, is too large",
                "415": "the body is not JSON",
            }
        )
    if (method, path) in _WAITS:
        errors[_WAITS[method, path]] = "the job did not finish in server.request_timeout_s"
    if (method, path) == ("POST", "/sdapi/v1/options"):
        errors["422"] = "a value of the wrong type for an option this server understands"
    if (method, path) in _SEARCHES:
        errors["502"] = "CivitAI or the Hugging Face Hub could not be reached, or failed"
    for status, text in errors.items():
        answers[status] = {"description": text, "content": _ERROR}
    answers["default"] = {"description": "an error", "content": _ERROR}
    return answers


def _link(paths: dict[str, Any], collection: str, parameter: str) -> None:
    """OpenAPI links: the id a POST to `collection` answers with is the `parameter` of
    every operation on one of its members (what a client does next)."""
    creating = paths.get(collection, {}).get("post")
    if creating is None:
        return
    member = f"{collection}/{{{parameter}}}"
    links = {
        operation["operationId"]: {
            "operationId": operation["operationId"],
            "parameters": {parameter: "$response.body#/id"},
        }
        for path, operations in paths.items()
        if path == member or path.startswith(member + "/")
        for operation in operations.values()
    }
    for status in ("200", "202"):
        creating["responses"][status]["links"] = links


def _image_form(bodies: dict[str, Any], path: str) -> dict[str, Any]:
    """OpenAI's image edits and variations forms: files, and the request's fields and
    OpenAI's as text (a variation has no prompt and no mask)."""
    fields = bodies["/v1/jobs"]["properties"]
    skip: tuple[str, ...] = ("prompt", "init_image", "mask_image", "id", "loras", "num_images")
    skip += ("lora_paths", "lora_scales")
    skip += ("width", "height")  # OpenAI's form has size
    text = {name: field for name, field in fields.items() if name not in skip}
    openai = openai_image_fields(fields)
    properties: dict[str, Any] = {
        "image": {"type": "string", "format": "binary", "description": "PNG, JPEG or WebP"},
    }
    if path.endswith("/edits"):
        properties["mask"] = {
            "type": "string",
            "format": "binary",
            "description": "same size as image; its fully transparent pixels are edited",
        }
        properties["prompt"] = fields["prompt"]
    else:
        text["strength"] = {
            "type": ["number", "null"],
            "exclusiveMinimum": 0,
            "maximum": 1,
            "default": openai_fields.VARIATION_STRENGTH,
            "description": "how much the variation differs from the image",
        }
    return {
        "type": "object",
        "required": ["image", "prompt"] if "prompt" in properties else ["image"],
        "properties": {**properties, **text, **openai},
    }


_REST_PLAN = ("/v1/txt2img", "/v1/img2img", "/v1/models/load", "/v1/loras/list",
              "/api/v1/generate/txt2img", "/api/v1/models/load")  # fmt: skip
_ALICE = ("/livez", "/readyz", "/api/health", "/v1/generation/defaults", "/v1/models/sd/")


def _dialect(path: str) -> str:
    """Which API a route belongs to, for the description's grouping."""
    if path.startswith("/sdapi/"):
        return "AUTOMATIC1111"
    if path in _REST_PLAN:
        return "REST plan"
    if path.startswith(("/api/v1/", "/outputs/")):
        return "AbleRefusal"
    if path == "/generate":
        return "GTX 1060"
    if path.startswith(("/v1/chat/", "/v1/images/", "/v1/auth/", "/v1/gallery", *_ALICE)):
        return "OpenAI and ALICE"
    if path == "/v1/models":
        return "OpenAI and ALICE"
    return "alice-spool"


def describe(routes: list[Any], api: Any) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    bodies = _bodies(api.settings.generation)
    used: set[str] = set()  # operation ids are unique (one handler may serve two paths)
    for item in routes:
        if not isinstance(item, Route) or item.path in _UI or item.path.startswith("/web"):
            continue
        path = _CONVERTOR.sub(r"{\1}", item.path)  # {model_id:path} is {model_id}
        doc = (item.endpoint.__doc__ or item.name or "").strip()
        paragraphs = [" ".join(part.split()) for part in doc.split("\n\n") if part.strip()]
        summary = paragraphs[0] if paragraphs else path
        methods = sorted((item.methods or set()) - {"HEAD"})
        for method in methods:
            needs_key = (
                (path.startswith(("/v1/", "/sdapi/", "/api/v1/")) or path == "/generate")
                and getattr(item.endpoint, "needs_key", True)
                and api.keys.required
            )
            operation_id = item.name if len(methods) == 1 else f"{item.name}_{method.lower()}"
            if operation_id in used:  # the same name again: told apart by its path
                operation_id += "_" + re.sub(r"[^a-z0-9]+", "_", path.lower()).strip("_")
            used.add(operation_id)
            operation: dict[str, Any] = {
                "operationId": operation_id,
                "summary": summary,
                "description": "\n\n".join(paragraphs),
                "responses": _responses(path, method, path in bodies or path in _FORMS, needs_key),
                "tags": [_dialect(path)],
            }
            if getattr(item.endpoint, "admin_only", False):
                operation["responses"]["403"] = {
                    "description": "an admin's key is needed (and on a server with no keys)",
                    "content": _ERROR,
                }
            if getattr(item.endpoint, "manage_only", False):
                operation["responses"]["403"] = {
                    "description": "an admin's key is needed (anyone, on a server with no keys)",
                    "content": _ERROR,
                }
            parameters = [
                {
                    "name": name,
                    "in": "path",
                    "required": True,
                    "schema": getattr(convertor, "schema", {"type": "string"}),
                }
                for name, convertor in item.param_convertors.items()
            ] + _QUERY.get((method, path), [])
            if parameters:
                operation["parameters"] = parameters
            if method in ("POST", "PATCH") and path in bodies:
                operation["requestBody"] = {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": bodies[path],
                            "example": _EXAMPLES[path],
                        }
                    },
                }
            if method == "POST" and path in _FORMS:
                operation["requestBody"] = {
                    "required": True,
                    "content": {"multipart/form-data": {"schema": _image_form(bodies, path)}},
                }
            if needs_key:
                operation["security"] = [{"bearer": []}, {"apiKey": []}]
            paths.setdefault(path, {})[method.lower()] = operation
    _link(paths, "/v1/jobs", "job_id")
    _link(paths, "/v1/batches", "batch_id")
    _link(paths, "/v1/downloads", "download_id")
    return {
        "openapi": "3.1.0",
        "info": {"title": "alice-spool", "version": api.version},
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-Api-Key"},
            }
        },
        "x-request-fields": list(SPEC_FIELDS),
        "x-open-routes": list(_OPEN),
    }
