"""Parsing a generation request from what a door hands over (an object, a JSON text, a
JSONL batch) into a `JobSpec`, through the request's model (request.py) (pure, no I/O)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any

from ..errors import InvalidParameters
from ..fields import normalise_model_id
from .job import FAMILY_FIELDS, JobSpec, Request
from .request import GenerationRequest, request_model, spec_model, validate
from .settings import BUILTIN_DEFAULTS, GenerationDefaults


def parse_spec(
    data: Any,
    defaults: GenerationDefaults = BUILTIN_DEFAULTS,
    *,
    allowed_extra: tuple[str, ...] = (),
) -> JobSpec:
    """Validate a request object (request.py's model of `defaults`' limits) and return
    its normalised `JobSpec`.

    Unknown fields are errors (typo protection) unless named in `allowed_extra`, which
    the caller then reads itself. Every error is an `InvalidParameters` naming the field.
    The prompt may be left out or empty only with an init_image (img2img and
    inpainting with no prompt, as an image variation is).
    """
    if allowed_extra and isinstance(data, Mapping):
        data = {key: value for key, value in data.items() if key not in allowed_extra}
    return spec_of(validate(spec_model(defaults), data))


def parse_request(data: Any, defaults: GenerationDefaults = BUILTIN_DEFAULTS) -> Request:
    """A request from a file or the CLI: a spec plus an optional `id` (its idempotency key)."""
    request = validate(request_model(defaults), data)
    return Request(spec=spec_of(request), idempotency_key=request.id)


def spec_of(request: GenerationRequest) -> JobSpec:
    """The `JobSpec` of a validated request: what it left out, the server's defaults
    (those of its model's settings), noted in `left_to_model` where the model's family
    may have its own."""
    settings = request.settings
    model = request.model
    if model is None and settings.default_model:
        model = _default_model(settings.default_model)
    n = request.n if request.n is not None else request.num_images
    guidance = request.guidance_scale
    return JobSpec(
        prompt=request.prompt,
        negative_prompt=request.negative_prompt or "",
        model=model,
        width=request.width,
        height=request.height,
        steps=request.steps if request.steps is not None else settings.default_steps,
        guidance_scale=guidance if guidance is not None else float(settings.default_guidance_scale),
        seed=None if request.seed == -1 else request.seed,  # -1: random, as A1111 has it
        scheduler=request.scheduler or settings.default_scheduler,
        n=n if n is not None else 1,
        priority=request.priority or 0,
        loras=request.loras or (),
        init_image=request.init_image,
        mask_image=request.mask_image,
        strength=request.strength,
        hires=request.hires,
        clip_skip=None if request.clip_skip == 1 else request.clip_skip,  # 1: the last layer
        vae=request.vae,
        true_cfg_scale=None if request.true_cfg_scale == 1 else request.true_cfg_scale,  # off
        max_sequence_length=request.max_sequence_length,
        left_to_model=tuple(name for name in FAMILY_FIELDS if getattr(request, name) is None),
    )


@lru_cache(maxsize=16)
def _default_model(name: str) -> str:
    return normalise_model_id(name, "generation.default_model")


def load_json(text: str) -> Any:
    """`json.loads` for text from outside: every way it can refuse the text is a
    ValueError that says why in a few words (a syntax error, nesting deeper than the
    interpreter recurses, an integer of more digits than Python converts)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON: {exc}") from None
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    except ValueError:  # int() refuses over sys.get_int_max_str_digits() digits
        raise ValueError(
            f"a number in the JSON has more than {sys.get_int_max_str_digits()} digits"
        ) from None


def parse_json(text: str, where: str) -> Any:
    """JSON text -> value; a refusal names `where` (a file name, a line)."""
    try:
        return load_json(text)
    except ValueError as exc:
        raise InvalidParameters(f"{where}: {exc}") from None


def parse_jsonl(
    text: str,
    name: str,
    defaults: GenerationDefaults = BUILTIN_DEFAULTS,
    *,
    prepare: Callable[[Any], Any] | None = None,
) -> list[Request]:
    """A JSONL batch: one request per line, blank lines skipped. The first bad line is
    an error naming its number (`name line N: ...`), so a batch is all or nothing.
    `prepare`: applied to each line's value before it is parsed (the image intake)."""
    requests = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{name} line {number}"
        try:
            value = parse_json(line, where)
            requests.append(parse_request(prepare(value) if prepare else value, defaults))
        except InvalidParameters as exc:
            message = exc.message if exc.message.startswith(where) else f"{where}: {exc.message}"
            raise InvalidParameters(message, field=exc.field, line=number) from None
    if not requests:
        raise InvalidParameters(f"{name} holds no requests")
    return requests
