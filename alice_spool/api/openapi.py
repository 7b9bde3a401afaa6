"""`/openapi.json`: every route, from the routes themselves (path, methods, summary from
the handler's docstring), with the request bodies the doors take."""

from __future__ import annotations

from typing import Any

from starlette.routing import Route

from ..spec import SPEC_FIELDS

_SPEC_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["prompt"],
    "properties": {
        "prompt": {"type": "string", "maxLength": 4000},
        "negative_prompt": {"type": "string"},
        "model": {"type": "string", "example": "sd/tiny"},
        "width": {"type": "integer", "multipleOf": 8},
        "height": {"type": "integer", "multipleOf": 8},
        "size": {"type": "string", "example": "512x512"},
        "steps": {"type": "integer", "minimum": 1},
        "guidance_scale": {"type": "number"},
        "seed": {"type": "integer"},
        "scheduler": {"type": "string", "example": "dpm++_sde_karras"},
        "n": {"type": "integer", "minimum": 1},
        "priority": {"type": "integer", "minimum": -100, "maximum": 100},
        "id": {"type": "string", "description": "idempotency key"},
    },
}
_BODIES: dict[str, dict[str, Any]] = {
    "/v1/jobs": _SPEC_SCHEMA,
    "/v1/images/generations": {
        **_SPEC_SCHEMA,
        "properties": {
            **_SPEC_SCHEMA["properties"],
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
        "properties": {"requests": {"type": "array", "items": _SPEC_SCHEMA}},
    },
    "/v1/jobs/{job_id}/priority": {
        "type": "object",
        "required": ["priority"],
        "properties": {"priority": {"type": "integer", "minimum": -100, "maximum": 100}},
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
_UI = ("/", "/docs")  # redirects into the web UI, not API routes


def describe(routes: list[Any], api: Any) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for item in routes:
        if not isinstance(item, Route) or item.path in _UI or item.path.startswith("/web"):
            continue
        doc = (item.endpoint.__doc__ or item.name or "").strip()
        summary = doc.splitlines()[0] if doc else item.path
        for method in sorted((item.methods or set()) - {"HEAD"}):
            operation: dict[str, Any] = {
                "summary": summary,
                "description": doc,
                "responses": {"200": {"description": "OK"}},
            }
            parameters = [
                {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                for name in item.param_convertors
            ]
            if parameters:
                operation["parameters"] = parameters
            if method == "POST" and item.path in _BODIES:
                operation["requestBody"] = {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": _BODIES[item.path],
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
