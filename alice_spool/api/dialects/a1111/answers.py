"""AUTOMATIC1111's answers as models, in the shapes its clients (webuiapi, SillyTavern,
Open WebUI) read: what txt2img and img2img answer, the lists, progress and png-info."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, Field, RootModel, WithJsonSchema


class A1111Info(BaseModel):
    """`info`, A1111's `Processed.js()`: the first pass's size, each image's seed and
    infotext, and the settings beyond the fixed ones in `extra_generation_params`."""

    prompt: str
    all_prompts: list[str]
    negative_prompt: str | None
    all_negative_prompts: list[str | None]
    seed: int | None
    all_seeds: list[int]
    subseed: int
    all_subseeds: list[int]
    subseed_strength: float
    width: int | None
    height: int | None
    sampler_name: str
    cfg_scale: float | None
    steps: int | None
    batch_size: int
    restore_faces: bool
    face_restoration_model: None
    sd_model_name: str
    sd_model_hash: None
    sd_vae_name: str | None
    sd_vae_hash: str | None
    seed_resize_from_w: int
    seed_resize_from_h: int
    denoising_strength: float | None
    extra_generation_params: dict[str, str]
    index_of_first_image: int
    infotexts: list[str]
    styles: list[str]
    job_timestamp: str = Field(description="the job's creation, YYYYmmddHHMMSS")
    clip_skip: int
    is_using_inpainting_conditioning: bool
    version: str
    job_id: str = Field(description="the job's id at /v1/jobs/{job_id}")


def _parameters(fields: list[str]) -> Any:
    """`parameters`: A1111's request fields, each the body's value or A1111's default."""
    shape: dict[str, Any] = {
        "properties": {name: {} for name in fields},
        "required": fields,
        "additionalProperties": False,
    }
    return Field(
        description="A1111's request fields: the body's values, its defaults for the rest",
        json_schema_extra=shape,
    )


_INFO = WithJsonSchema(
    {
        "type": "string",
        "contentMediaType": "application/json",
        "contentSchema": A1111Info.model_json_schema(mode="serialization"),
        "description": "A1111's info: a JSON object, as text (A1111Info)",
    }
)
_IMAGES = (
    "base64, in the client's samples_format: a PNG with its infotext, or a JPEG or WebP "
    "with it in its EXIF; none when send_images is false"
)


def generated(name: str, fields: list[str]) -> type[BaseModel]:
    """The answer of txt2img or img2img (`name`), whose `parameters` are `fields`."""

    class Generated(BaseModel):
        images: list[str] = Field(description=_IMAGES)
        parameters: dict[str, Any] = _parameters(fields)
        info: Annotated[str, _INFO]

    Generated.__name__ = Generated.__qualname__ = name
    Generated.__doc__ = "The images, the request's fields and `info` (a JSON string)."
    return Generated


class A1111Checkpoint(BaseModel):
    """A model as A1111 lists a checkpoint: its `title` is what options set."""

    title: str
    model_name: str
    hash: None
    sha256: None
    filename: str
    config: None


class A1111Sampler(BaseModel):
    name: str
    aliases: list[str]
    options: dict[str, str] = Field(description="as A1111 lists them: each value a string")


class A1111Schedule(BaseModel):
    name: str
    label: str
    aliases: list[str] | None
    default_rho: float
    need_inner_model: bool


class A1111Lora(BaseModel):
    name: str = Field(description="what a <lora:name:scale> tag names")
    alias: str
    path: str
    metadata: dict[str, Any]


class A1111Upscaler(BaseModel):
    name: str
    model_name: None
    model_path: None
    model_url: None
    scale: float


class A1111LatentMode(BaseModel):
    name: str


class A1111Vae(BaseModel):
    model_name: str
    filename: str | None


class A1111Embeddings(BaseModel):
    loaded: dict[str, Any]
    skipped: dict[str, Any]


class A1111Flags(BaseModel):
    api: bool
    api_auth: str | None = Field(description="masked; null when keys are off")


class A1111PngInfo(BaseModel):
    info: str = Field(description="the infotext ('' for none)")
    items: dict[str, str] = Field(description="the image's other text chunks")
    parameters: dict[str, str] = Field(description="the infotext's settings, as pairs")


class A1111State(BaseModel):
    skipped: bool
    interrupted: bool
    stopping_generation: bool
    job: str
    job_count: int = Field(description="this client's jobs queued or running")
    job_timestamp: str
    job_no: int
    sampling_step: int
    sampling_steps: int = Field(description="both passes of a hires job counted")


class A1111Progress(BaseModel):
    """This client's newest running job."""

    progress: float = Field(ge=0, le=1)
    eta_relative: float = Field(ge=0, description="seconds")
    state: A1111State
    current_image: None
    textinfo: None
    current_task: str | None


class A1111Checkpoints(RootModel[list[A1111Checkpoint]]):
    pass


class A1111Samplers(RootModel[list[A1111Sampler]]):
    pass


class A1111Schedules(RootModel[list[A1111Schedule]]):
    pass


class A1111Loras(RootModel[list[A1111Lora]]):
    pass


class A1111Upscalers(RootModel[list[A1111Upscaler]]):
    pass


class A1111LatentModes(RootModel[list[A1111LatentMode]]):
    pass


class A1111Vaes(RootModel[list[A1111Vae]]):
    pass


NOTHING: dict[str, Any] = {"type": "array", "maxItems": 0, "description": "none here"}
NULL: dict[str, Any] = {"type": "null"}
