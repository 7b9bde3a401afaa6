"""`/openapi.json`: every route, made from the routes themselves: the path and methods,
the summary from the handler's docstring, and from its contract (edge/contract.py) the
query, the body and every answer. Nothing here is about one route in particular."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel
from starlette.routing import Route

from ... import errors
from ...spec import SPEC_FIELDS
from ..edge.contract import Answer, Contract, ErrorBody, SchemaSource, api_routes, contract_of
from ..edge.errors import status_of

_CONVERTOR = re.compile(r"\{(\w+):\w+\}")
_UNSAFE = ("POST", "PUT", "PATCH", "DELETE")


class Schemas:
    """Turns a contract's schema sources into JSON schemas, once per settings: a model's
    nested models go to `components/schemas`, each under its own name."""

    def __init__(self, settings: Any) -> None:
        self.settings = settings
        self.components: dict[str, Any] = {}
        self._made: dict[tuple[int, str], dict[str, Any]] = {}

    def of(self, source: SchemaSource | None, mode: str = "validation") -> dict[str, Any] | None:
        if source is None:
            return None
        key = (id(source), mode)
        if key not in self._made:
            self._made[key] = self._make(source, mode)
        return self._made[key]

    def _component(self, name: str, schema: dict[str, Any], suffix: str = "") -> str:
        """`schema` under `name` in components (or `name` + `suffix`, when `name` is
        another schema's); the name it is under."""
        for candidate in (name, name + suffix):
            known = self.components.setdefault(candidate, schema)
            if known == schema:
                return candidate
        raise ValueError(f"two different schemas are named {name}")

    def _make(self, source: Any, mode: str) -> dict[str, Any]:
        if isinstance(source, type) and issubclass(source, BaseModel):
            schema = source.model_json_schema(
                ref_template="#/components/schemas/{model}",
                mode=mode,  # type: ignore[arg-type]
            )
            for name, part in schema.pop("$defs", {}).items():
                self._component(name, part)
            if mode == "serialization":  # an answer: shared by many routes, described once
                name = self._component(source.__name__, schema, suffix="Answer")
                return {"$ref": f"#/components/schemas/{name}"}
            return schema
        if isinstance(source, Mapping):
            return dict(source)
        return self._make(source(self.settings), mode)


def _error_statuses(
    item: Route, method: str, contract: Contract, needs_key: bool
) -> dict[int, str]:
    """The error statuses the route gives: those of every route with its traits (a key,
    a body, a path parameter), each as its dialect answers it, then its contract's own.
    (The guard's refusals, before any route, are the same everywhere: 403, 415, 421.)"""
    endpoint = item.endpoint
    status = getattr(endpoint, "error_status", status_of)
    statuses = {
        421: "not this server's host name (server.allowed_hosts)",
        status(errors.DatabaseBusy()): "the database is busy, or its disk full (Retry-After)",
    }
    if needs_key:
        statuses[status(errors.Unauthorized(""))] = "a valid API key is needed"
    if getattr(endpoint, "needs_key", True):
        statuses[status(errors.RateLimited(""))] = "rate limited (keys, failed keys, streams)"
    if getattr(endpoint, "admin_only", False):
        statuses[403] = "an admin's key is needed (and on a server with no keys)"
    elif getattr(endpoint, "manage_only", False):
        statuses[403] = "an admin's key is needed (anyone, on a server with no keys)"
    elif method in _UNSAFE:
        statuses[403] = "a change requested from another site"
    if contract.query is not None:
        statuses[status(errors.InvalidParameters(""))] = "invalid query parameters"
    if item.param_convertors:
        statuses[status(errors.JobNotFound(""))] = "no such thing at this path"
    if contract.body_schema is not None or contract.form is not None:
        statuses[status(errors.InvalidParameters(""))] = "invalid parameters"
        statuses[status(errors.InvalidJson(""))] = "invalid JSON, or parameters"
        statuses[status(errors.RequestTimeout(""))] = "the body did not arrive in time"
        statuses[status(errors.BodyTooLarge(""))] = "the body is too large"
    if contract.body_schema is not None:
        statuses[415] = "the body is not JSON"
    return statuses | dict(contract.errors)


def _parameters(item: Route, contract: Contract, schemas: Schemas) -> list[dict[str, Any]]:
    parameters = [
        {
            "name": name,
            "in": "path",
            "required": True,
            "schema": getattr(convertor, "schema", {"type": "string"}),
        }
        for name, convertor in item.param_convertors.items()
    ]
    if contract.query is None:
        return parameters
    query = schemas.of(contract.query) or {}
    required = set(query.get("required", []))
    for name, schema in query.get("properties", {}).items():
        parameter: dict[str, Any] = {"name": name, "in": "query", "schema": _plain(schema)}
        if "description" in schema:
            parameter["description"] = schema["description"]
        if name in required:
            parameter["required"] = True
        if _is_array(schema):
            parameter |= {"style": "form", "explode": True}
        parameters.append(parameter)
    return parameters


def _plain(schema: dict[str, Any]) -> dict[str, Any]:
    """A query parameter's schema: a value left out is absent, never null."""
    kept = {k: v for k, v in schema.items() if k not in ("title", "description")}
    options = kept.get("anyOf")
    if options is not None:
        rest = [option for option in options if option.get("type") != "null"]
        if len(rest) == 1:
            kept.pop("anyOf")
            kept = {**rest[0], **kept}
    return kept


def _is_array(schema: dict[str, Any]) -> bool:
    options = schema.get("anyOf", [schema])
    return any(option.get("type") == "array" for option in options)


def _responses(
    item: Route, method: str, contract: Contract, needs_key: bool, schemas: Schemas
) -> dict[str, Any]:
    error = {"application/json": {"schema": schemas.of(_error_model(item), "serialization")}}
    answers: dict[str, Any] = {}
    for status in contract.answers:
        answer: Answer = contract.answer(status)
        described: dict[str, Any] = {"description": answer.description}
        schema = schemas.of(answer.schema, "serialization")
        if schema is not None or answer.media != "application/json" or answer.also:
            described["content"] = {answer.media: {"schema": schema or {}}} | {
                media: {"schema": schemas.of(other, "serialization") or {}}
                for media, other in answer.also.items()
            }
        answers[str(status)] = described
    for status, text in sorted(_error_statuses(item, method, contract, needs_key).items()):
        answers.setdefault(str(status), {"description": text, "content": error})
    answers["default"] = {"description": "an error", "content": error}
    return answers


def _error_model(item: Route) -> SchemaSource:
    return getattr(item.endpoint, "error_model", ErrorBody)


def _request_body(contract: Contract, schemas: Schemas) -> dict[str, Any] | None:
    if contract.form is not None:
        media, schema = "multipart/form-data", schemas.of(contract.form)
    elif contract.body_schema is not None:
        media, schema = "application/json", schemas.of(contract.body_schema)
    else:
        return None
    content: dict[str, Any] = {"schema": schema}
    if contract.example is not None:
        content["example"] = contract.example
    return {"required": True, "content": {media: content}}


def describe(routes: Iterable[Any], settings: Any, keys_required: bool, version: str) -> Any:
    schemas = Schemas(settings)
    paths: dict[str, Any] = {}
    used: set[str] = set()  # operation ids are unique (one handler may serve two paths)
    links: list[tuple[str, str, str]] = []
    open_paths: list[str] = []
    for item in api_routes(routes):
        path = _CONVERTOR.sub(r"{\1}", item.path)  # {model_id:path} is {model_id}
        contract = contract_of(item)
        doc = (item.endpoint.__doc__ or item.name or "").strip()
        paragraphs = [" ".join(part.split()) for part in doc.split("\n\n") if part.strip()]
        verbs = sorted((item.methods or set()) - {"HEAD"})
        wants_key = getattr(item.endpoint, "needs_key", True)
        if not wants_key and path not in open_paths:
            open_paths.append(path)
        for method in verbs:
            needs_key = wants_key and keys_required
            operation_id = item.name if len(verbs) == 1 else f"{item.name}_{method.lower()}"
            if operation_id in used:  # the same name again: told apart by its path
                operation_id += "_" + re.sub(r"[^a-z0-9]+", "_", path.lower()).strip("_")
            used.add(operation_id)
            operation: dict[str, Any] = {
                "operationId": operation_id,
                "summary": paragraphs[0] if paragraphs else path,
                "description": "\n\n".join(paragraphs),
                "responses": _responses(item, method, contract, needs_key, schemas),
                "tags": [contract.tag],
            }
            parameters = _parameters(item, contract, schemas)
            if parameters:
                operation["parameters"] = parameters
            body = _request_body(contract, schemas)
            if body is not None:
                operation["requestBody"] = body
            if needs_key:
                operation["security"] = [{"bearer": []}, {"apiKey": []}]
            if contract.link is not None:
                links.append((path, method.lower(), contract.link))
            paths.setdefault(path, {})[method.lower()] = operation
    for path, method, parameter in links:
        _link(paths, path, method, parameter)
    return {
        "openapi": "3.1.0",
        "info": {"title": "alice-spool", "version": version},
        "paths": paths,
        "components": {
            "schemas": schemas.components,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-Api-Key"},
            },
        },
        "x-request-fields": list(SPEC_FIELDS),
        "x-open-routes": open_paths,
    }


def _link(paths: dict[str, Any], collection: str, method: str, parameter: str) -> None:
    """OpenAPI links: the id a POST to `collection` answers with is the `parameter` of
    every operation on one of its members (what a client does next)."""
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
    for status, answer in paths[collection][method]["responses"].items():
        if status in ("200", "201", "202"):
            answer["links"] = links
