"""Image inputs (img2img and inpainting): taken from a request, decoded and checked, and
stored with the job before it is committed (`<data_dir>/inputs/<job id>/`), so that a
queued job's inputs survive crashes and restarts.

A request names an image as base64 (with or without a `data:` prefix) or, in an inbox
file, as a file name relative to the inbox. ALICE's `input_images` (the first is used)
stands for `init_image`. What is stored is the file as it was sent; the job's spec
records its SHA-256, so a repeated request is recognised as the same.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import os
import re
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from PIL import Image, UnidentifiedImageError

from .durable import fsync_path
from .errors import InputUnavailable, InvalidParameters
from .spec import DEFAULT_STRENGTH

FORMATS = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp"}
ROLES = ("init_image", "mask_image")
# Every field `take` reads an image from: a request with none of them has nothing to take.
IMAGE_FIELDS = (*ROLES, "input_images", "input_image_urls")
_DATA_URL = re.compile(r"data:image/[A-Za-z0-9.+-]+;base64,", re.IGNORECASE)
_SHA256 = re.compile(r"sha256:[0-9a-f]{64}")
INPUTS_DIR = "inputs"
T = TypeVar("T")
Fetch = Callable[[str, str], bytes]  # (url, the field it came in) -> the body
MAX_INPUT_PIXELS = 4_194_304  # generation.max_input_pixels's default


@dataclass(frozen=True)
class Decoded:
    """One input image: the bytes as sent, their format and size, and their hash."""

    role: str
    data: bytes
    extension: str
    width: int
    height: int

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def file_name(self) -> str:
        return f"{self.role.removesuffix('_image')}.{self.extension}"


@dataclass
class Staged:
    """A request's decoded inputs, before they are stored with its job."""

    images: dict[str, Decoded] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.images)


def decode(role: str, data: bytes, max_pixels: int, *, field: str | None = None) -> Decoded:
    """Check that `data` is a whole PNG, JPEG or WebP image of at most `max_pixels`
    (errors name `field`, by default the role)."""
    name = field or role
    try:
        with Image.open(io.BytesIO(data)) as image:
            kind = image.format or ""
            width, height = image.size
            if kind not in FORMATS:
                raise InvalidParameters(
                    f"{name} must be a PNG, JPEG or WebP image, not {kind or 'this format'}",
                    field=name,
                )
            if width * height > max_pixels:
                raise InvalidParameters(
                    f"{name} is {width}x{height} = {width * height} pixels; the limit is "
                    f"{max_pixels} (generation.max_input_pixels)",
                    field=name,
                )
            image.load()  # the whole file decodes: not truncated, not a bomb
    except InvalidParameters:
        raise
    except UnidentifiedImageError:
        raise InvalidParameters(f"{name} is not a PNG, JPEG or WebP image", field=name) from None
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise InvalidParameters(f"{name} is not a readable image: {exc}", field=name) from None
    return Decoded(role, data, FORMATS[kind], width, height)


def _from_base64(role: str, text: str) -> bytes:
    body = _DATA_URL.sub("", text.strip(), count=1)
    try:
        return base64.b64decode("".join(body.split()), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidParameters(f"{role} is not valid base64", field=role) from None


def _from_inbox(role: str, name: str, inbox: Path) -> bytes:
    """A file beside the request, never outside the inbox (no `..`, no links out)."""
    root = inbox.resolve()
    path = (root / name).resolve()
    if name.startswith(("/", "\\")) or not path.is_relative_to(root) or path == root:
        raise InvalidParameters(f"{role}: {name!r} is outside the inbox", field=role)
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InvalidParameters(
            f"{role}: cannot read {name!r} in the inbox: {exc.strerror or exc}", field=role
        ) from None


def _strings(fields: dict[str, Any], name: str, what: str) -> list[str]:
    values = fields.pop(name, None)
    if values is None:
        return []
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise InvalidParameters(f"{name} must be a list of {what}", field=name)
    return values


def carries_images(data: Mapping[str, Any]) -> bool:
    """Whether `take` has anything to do for this request (a field that may hold an
    image is there, even null: `take` then says what is wrong with it)."""
    return any(name in data for name in IMAGE_FIELDS)


def take(
    data: Mapping[str, Any],
    max_pixels: int,
    *,
    inbox: Path | None = None,
    fetch: Fetch | None = None,
) -> tuple[dict[str, Any], Staged]:
    """The request with its images decoded and checked, each replaced by
    `sha256:<hex>`, and the images to store with the job. With no size given, the
    output takes the input's, rounded down to a multiple of 8. `fetch(url, field)`
    gets what ALICE's `input_image_urls` name (urls.py's rules); a door without it
    refuses them."""
    fields = dict(data)
    fetched = _one_source(fields, fetch)
    staged = Staged()
    for role in ROLES:
        decoded = _decoded(role, fields.get(role), fetched, max_pixels, inbox)
        if decoded is None:
            continue
        staged.images[role] = decoded
        fields[role] = f"sha256:{decoded.sha256}"
    init, mask = staged.images.get("init_image"), staged.images.get("mask_image")
    if mask is not None and init is None:
        raise InvalidParameters("mask_image needs an init_image", field="mask_image")
    if (
        init is not None
        and mask is not None
        and (mask.width, mask.height)
        != (
            init.width,
            init.height,
        )
    ):
        raise InvalidParameters(
            f"mask_image is {mask.width}x{mask.height} and init_image "
            f"{init.width}x{init.height}: they must be the same size",
            field="mask_image",
        )
    if init is not None:
        if fields.get("strength") is None:
            fields["strength"] = DEFAULT_STRENGTH
        no_size = all(fields.get(k) is None for k in ("size", "width", "height"))
        if no_size:
            fields["width"] = max(64, min(2048, init.width // 8 * 8))
            fields["height"] = max(64, min(2048, init.height // 8 * 8))
    return fields, staged


def _one_source(fields: dict[str, Any], fetch: Fetch | None) -> bytes | None:
    """The input image given one way only: `init_image`, or ALICE's `input_images` (the
    first stands for `init_image`), or its `input_image_urls` (the first, fetched: its
    body is returned)."""
    images = _strings(fields, "input_images", "images")
    links = _strings(fields, "input_image_urls", "URLs")
    given = [
        name for name, there in (("input_images", images), ("input_image_urls", links)) if there
    ]
    if fields.get("init_image") is not None:
        given.insert(0, "init_image")
    if len(given) > 1:
        raise InvalidParameters(f"give one of {' or '.join(given)}, not both", field=given[1])
    if images:
        fields["init_image"] = images[0]  # ALICE uses the first
    if not links:
        return None
    if fetch is None:
        raise InvalidParameters(
            "input_image_urls are not taken here: send the image itself (init_image)",
            field="input_image_urls",
        )
    return fetch(links[0], "input_image_urls")  # the first, as input_images


def _decoded(
    role: str, value: Any, fetched: bytes | None, max_pixels: int, inbox: Path | None
) -> Decoded | None:
    """The image given for `role` (base64, a file beside an inbox request, or the body
    fetched for the init image), decoded and checked; None when there is none."""
    if role == "init_image" and fetched is not None:
        return decode(role, fetched, max_pixels, field="input_image_urls")
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise InvalidParameters(f"{role} must be an image as base64 text", field=role)
    if inbox is not None and not _looks_like_base64(value):
        return decode(role, _from_inbox(role, value.strip(), inbox), max_pixels)
    return decode(role, _from_base64(role, value), max_pixels)


def _looks_like_base64(value: str) -> bool:
    """A data URL, or text too long or too plain to be a file name."""
    text = value.strip()
    return bool(_DATA_URL.match(text)) or (len(text) > 255 and "/" not in text[:64])


def is_reference(value: Any) -> bool:
    """`sha256:<hex>`: an image that `take` decoded and stored."""
    return isinstance(value, str) and _SHA256.fullmatch(value) is not None


def job_dir(data_dir: Path, job_id: str) -> Path:
    return Path(data_dir) / INPUTS_DIR / job_id


def store(data_dir: Path, job_id: str, staged: Staged) -> Path:
    """Write the inputs durably under `<data_dir>/inputs/<job id>/` (before the job is
    committed: a crash in between leaves a directory with no job, which purge removes)."""
    target = job_dir(data_dir, job_id)
    target.mkdir(parents=True, exist_ok=True)
    for decoded in staged.images.values():
        path = target / decoded.file_name
        with path.open("wb") as handle:
            handle.write(decoded.data)
            handle.flush()
            os.fsync(handle.fileno())
    fsync_path(target)
    return target


def remove(data_dir: Path, job_id: str) -> None:
    shutil.rmtree(job_dir(data_dir, job_id), ignore_errors=True)


def stored_file(data_dir: Path, job_id: str, role: str) -> Path | None:
    """The file a job's input of `role` was stored in (a regular file, not a link)."""
    stem = role.removesuffix("_image")
    for extension in FORMATS.values():
        path = job_dir(data_dir, job_id) / f"{stem}.{extension}"
        if path.is_file() and not path.is_symlink():
            return path
    return None


def load(data_dir: Path, job_id: str, wanted: Mapping[str, str | None]) -> dict[str, Image.Image]:
    """A job's stored inputs as RGB (init) and L (mask) images, by role: each role that
    `wanted` names (`{role: "sha256:<hex>"}`, as the job's spec records it) must be
    there with exactly those bytes, else `input_unavailable` (deleted or damaged since
    the job was queued)."""
    found: dict[str, Image.Image] = {}
    for role in ROLES:
        reference = wanted.get(role)
        if reference is None:
            continue
        path = stored_file(data_dir, job_id, role)
        if path is None:
            raise InputUnavailable(
                f"the job's {role} is no longer stored in {job_dir(data_dir, job_id)}",
                field=role,
            )
        try:
            data = path.read_bytes()
            if "sha256:" + hashlib.sha256(data).hexdigest() != reference:
                raise InputUnavailable(
                    f"the job's stored {role} ({path}) is not the image it was queued with",
                    field=role,
                )
            with Image.open(io.BytesIO(data)) as image:
                found[role] = image.convert("L" if role == "mask_image" else "RGB")
        except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as exc:
            raise InputUnavailable(
                f"the job's stored {role} ({path}) cannot be read: {exc}", field=role
            ) from exc
    return found


def queue_with(
    data_dir: Path,
    staged: Staged,
    job_id: str,
    enqueue: Callable[[str | None], T],
    made: Callable[[T], bool],
) -> T:
    """Store `staged` under `job_id`, then `enqueue(job_id)`; without images,
    `enqueue(None)`. The inputs go again if the enqueue raises, or if `made(answer)`
    says it made no new job under that id (a repeat of an earlier one)."""
    if not staged:
        return enqueue(None)
    store(data_dir, job_id, staged)
    try:
        answer = enqueue(job_id)
    except BaseException:
        remove(data_dir, job_id)
        raise
    if not made(answer):
        remove(data_dir, job_id)
    return answer
