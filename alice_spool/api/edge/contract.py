"""A route's typed contract: what it takes (query, JSON or multipart body) and what it
answers (each status, with the shape of its body), as pydantic models or JSON schemas.
The route wrapper validates the query and, where the contract says so, the body with
them and hands the route the model; `/openapi.json` is made from them, and so are the
guard's multipart routes and the CORS methods. A fact about a route lives here once.

A schema may depend on the settings (the largest size, the most steps): such a part is
a function of the settings, called once when the description is made."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.datastructures import QueryParams
from starlette.routing import Route

from ... import errors

# A model class, a JSON schema, or a function of the settings giving either.
SchemaSource = type[BaseModel] | Mapping[str, Any] | Callable[[Any], Any]

Q = TypeVar("Q", bound=BaseModel)
_UI = ("/", "/docs")  # pages for people (the web UI, the API page), not API routes


class ErrorDetail(BaseModel):
    message: str
    type: str
    code: str
    param: str | None = None


class ErrorBody(BaseModel):
    """The error body of this server's own routes: `{"error": {message, type, code}}`."""

    error: ErrorDetail


@dataclass(frozen=True)
class Answer:
    """One status a route answers: the body's schema (None: any, or not JSON), its
    media type (and others it may be given in: `also`), and what it means."""

    schema: SchemaSource | None = None
    description: str = "OK"
    media: str = "application/json"
    # The same answer in other media types, as the request's Accept chooses: type -> schema.
    also: Mapping[str, SchemaSource | None] = field(default_factory=dict)


@dataclass(frozen=True)
class Contract:
    """What one route takes and answers.

    - `query`: its query parameters, validated by the wrapper and handed as `query=`;
    - `body`: its JSON body's schema; `takes_body`: a model the wrapper validates the
      body with and hands as `body=` (else the route reads the body itself, and `body`
      describes it);
    - `form`: a multipart body's schema (files);
    - `answers`: status -> `Answer` (or only its schema) for the answers that are not
      errors; `errors`: the error statuses the route gives of its own, with what each
      means (the ones every route of its kind gives are added by the description);
    - `example`: a request body to show; `tag`: which API the route belongs to;
    - `link`: the path parameter a created thing's id fills in its member routes
      (`"job_id"`: the answer's `id` is the `{job_id}` of `/v1/jobs/{job_id}/...`).
    """

    query: type[BaseModel] | None = None
    body: SchemaSource | None = None
    takes_body: type[BaseModel] | None = None
    form: SchemaSource | None = None
    answers: Mapping[int, Answer | SchemaSource | None] = field(
        default_factory=lambda: {200: Answer()}
    )
    errors: Mapping[int, str] = field(default_factory=dict)
    example: Any = None
    tag: str = "alice-spool"
    link: str | None = None  # the path parameter a created thing's id fills

    @property
    def body_schema(self) -> SchemaSource | None:
        return self.takes_body or self.body

    def answer(self, status: int) -> Answer:
        given = self.answers[status]
        return given if isinstance(given, Answer) else Answer(given)


class Query(BaseModel):
    """Query parameters: unknown ones are ignored (as browsers and proxies add some);
    a list field takes the parameter repeated, and comma-separated."""

    model_config = ConfigDict(extra="ignore", frozen=True)


def validated(model: type[Q], data: Any) -> Q:
    """`data` as `model`, or the first fault as a 400 naming its field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise invalid(exc) from None


_NAME_MAX = 64  # a client's unknown key is shown this far, no further


def invalid(exc: ValidationError) -> errors.InvalidParameters:
    """A pydantic fault as this server's 400: the field it is in (`param`: the top
    one), and what is wrong. Of the faults in the first faulty field, a rule's own
    message wins over a type's (a field that takes a list or one value reports why the
    value is wrong, not that it is not a list)."""
    faults = exc.errors(include_url=False)
    first = faults[0]
    same = [fault for fault in faults if fault["loc"][:1] == first["loc"][:1]]
    fault = next((f for f in same if f["type"] == "value_error"), first)
    # The field's path: names and indexes (a union's branch tags are not a client's).
    parts = [
        str(part)[:_NAME_MAX]
        for part in fault["loc"]
        if isinstance(part, int) or fault["type"] == "extra_forbidden" or part.isidentifier()
    ]
    path = ".".join(parts)
    top = parts[0] if parts else None
    message = fault["msg"]
    if not parts and fault["type"] in ("model_type", "dict_type", "model_attributes_type"):
        return errors.InvalidParameters("the request body must be a JSON object")
    if fault["type"] == "missing":
        message = "is required"
    elif fault["type"] == "extra_forbidden":
        return errors.InvalidParameters(f"unknown field {path!r}", field=top)
    elif message.startswith("Value error, "):
        message = message.removeprefix("Value error, ")
    else:
        message = message[:1].lower() + message[1:]
    return errors.InvalidParameters(f"{path or 'the request'}: {message}", field=top)


def query_of(model: type[Q], params: QueryParams) -> Q:
    """The query parameters as `model`: a list field from every value given for it,
    each split at commas; a blank one dropped."""
    data: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        key = info.alias or name
        if key not in params:
            continue
        if _is_list(info.annotation):
            parts = [part.strip() for value in params.getlist(key) for part in value.split(",")]
            data[key] = list(dict.fromkeys(part for part in parts if part))
        else:
            data[key] = params[key]
    return validated(model, data)


def _is_list(annotation: Any) -> bool:
    origin = getattr(annotation, "__origin__", None)
    if origin in (list, tuple, set, frozenset):
        return True
    return any(_is_list(arg) for arg in getattr(annotation, "__args__", ()) or ())


def api_routes(routes: Iterable[Any]) -> list[Route]:
    """The API's routes (not the web UI's pages and files)."""
    return [
        item
        for item in routes
        if isinstance(item, Route) and item.path not in _UI and not item.path.startswith("/web")
    ]


def contract_of(item: Route) -> Contract:
    return getattr(item.endpoint, "contract", None) or Contract()


def multipart_paths(routes: Iterable[Any]) -> frozenset[str]:
    """The paths whose contracts take multipart bodies (the guard lets those through)."""
    return frozenset(item.path for item in api_routes(routes) if contract_of(item).form)


def methods(routes: Iterable[Any]) -> list[str]:
    """Every method some route takes (CORS allows exactly these)."""
    found = {method for item in api_routes(routes) for method in item.methods or ()}
    return sorted(found - {"HEAD"})
