"""`/openapi.json`: every route, from the routes themselves (path, methods, summary from
the handler's docstring), with the request bodies the doors take."""

from __future__ import annotations

from typing import Any

from starlette.routing import Route

from .. import spec
from ..spec import SPEC_FIELDS


def spec_schema(generation: Any) -> dict[str, Any]:
    """A request's fields with this server's limits and defaults (the web UI's submit
    form is built from it)."""
    return {
        "type": "object",
        "required": ["prompt"],
        "properties": {
            "prompt": {"type": "string", "maxLength": spec.PROMPT_MAX_CHARS},
            "negative_prompt": {"type": "string", "default": ""},
            "model": {
                "type": "string",
                "example": "sd/tiny",
                "description": "an installed model; the default model when left out",
            },
            "width": {
                "type": "integer",
                "multipleOf": spec.SIZE_MULTIPLE,
                "minimum": spec.SIZE_MIN,
                "maximum": spec.SIZE_MAX,
                "description": "the model's native size when left out",
            },
            "height": {
                "type": "integer",
                "multipleOf": spec.SIZE_MULTIPLE,
                "minimum": spec.SIZE_MIN,
                "maximum": spec.SIZE_MAX,
            },
            "size": {"type": "string", "example": "512x512", "description": "instead of both"},
            "steps": {
                "type": "integer",
                "minimum": 1,
                "maximum": generation.max_steps,
                "default": generation.default_steps,
            },
            "guidance_scale": {
                "type": "number",
                "minimum": 0,
                "maximum": spec.GUIDANCE_MAX,
                "default": generation.default_guidance_scale,
            },
            "seed": {
                "type": "integer",
                "minimum": 0,
                "maximum": spec.SEED_MAX,
                "description": "random when left out (and recorded)",
            },
            "scheduler": {
                "type": "string",
                "enum": list(spec.SCHEDULERS),
                "default": generation.default_scheduler,
            },
            "n": {"type": "integer", "minimum": 1, "maximum": generation.max_n, "default": 1},
            "priority": {
                "type": "integer",
                "minimum": spec.PRIORITY_MIN,
                "maximum": spec.PRIORITY_MAX,
                "default": 0,
            },
            "id": {"type": "string", "description": "idempotency key"},
        },
    }


def _bodies(generation: Any) -> dict[str, dict[str, Any]]:
    request = spec_schema(generation)
    return {
        "/v1/jobs": request,
        "/v1/images/generations": {
            **request,
            "properties": {
                **request["properties"],
                "response_format": {"type": "string", "enum": ["url", "b64_json"]},
            },
        },
        "/v1/chat/completions": {
            "type": "object",
            "required": ["messages"],
            "properties": {
                "model": {"type": "string"},
                "messages": {"type": "array", "items": {"type": "object"}},
                "stream": {"type": "boolean"},
                "metadata": {"type": "object", "description": "image parameters (SAM)"},
                "sam_config": {"type": "object", "description": "image parameters (ALICE)"},
            },
        },
        "/v1/batches": {
            "type": "object",
            "required": ["requests"],
            "properties": {"requests": {"type": "array", "items": request}},
        },
        "/v1/jobs/{job_id}/priority": {
            "type": "object",
            "required": ["priority"],
            "properties": {
                "priority": {
                    "type": "integer",
                    "minimum": spec.PRIORITY_MIN,
                    "maximum": spec.PRIORITY_MAX,
                }
            },
        },
        "/v1/models/default": {
            "type": "object",
            "required": ["model"],
            "properties": {"model": {"type": "string", "example": "sd/tiny"}},
        },
    }


_EXAMPLES = {
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
}
_OPEN = ("/health", "/metrics", "/openapi.json")
_UI = ("/", "/docs")  # pages for people (the web UI, the API page), not API routes


def describe(routes: list[Any], api: Any) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    bodies = _bodies(api.settings.generation)
    for item in routes:
        if not isinstance(item, Route) or item.path in _UI or item.path.startswith("/web"):
            continue
        doc = (item.endpoint.__doc__ or item.name or "").strip()
        paragraphs = [" ".join(part.split()) for part in doc.split("\n\n") if part.strip()]
        summary = paragraphs[0] if paragraphs else item.path
        for method in sorted((item.methods or set()) - {"HEAD"}):
            operation: dict[str, Any] = {
                "summary": summary,
                "description": "\n\n".join(paragraphs),
                "responses": {"200": {"description": "OK"}},
            }
            parameters = [
                {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                for name in item.param_convertors
            ]
            if parameters:
                operation["parameters"] = parameters
            if method == "POST" and item.path in bodies:
                operation["requestBody"] = {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": bodies[item.path],
                            "example": _EXAMPLES[item.path],
                        }
                    },
                }
            if item.path.startswith("/v1/") and api.keys.required:
                operation["security"] = [{"bearer": []}, {"apiKey": []}]
            paths.setdefault(item.path, {})[method.lower()] = operation
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
