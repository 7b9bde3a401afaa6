"""The Hugging Face Hub as a model source, through `huggingface_hub` for what it does
well (listing a revision's files with their sizes and SHA-256, file URLs, search, the
Hub's errors) and not for the transfer: it restarts an interrupted file from byte 0, so
each file is fetched by `transfer.fetch_to_file` (resumed with `Range`).

A diffusers repository gives exactly the files its pipeline loads: `model_index.json`,
each component's configs (the scheduler and tokenizer folders whole) and its
safetensors weights, in the fp16 variant where the folder has one and it is wanted
(installed under the plain name, so the model loads as any other); never a `.bin`,
`.ckpt`, `.msgpack` or `.onnx` duplicate, nor a root-level checkpoint. A `file` gives
that one file (a single-file checkpoint or a LoRA)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

from huggingface_hub import HfApi, constants, hf_hub_url
from huggingface_hub import errors as hub_errors

from .. import urls
from ..errors import DownloadFailed, SourceUnavailable, SpoolError, Unauthorized, UnsafeFormat
from .files import PICKLE_SUFFIXES, safe_name
from .plan import SINGLE, Access, Plan, RemoteFile, SearchPage
from .transfer import Transient

if TYPE_CHECKING:
    from .sources import SourceSettings

TOKEN_SETTING = "models.hf_token"
SORTS = ("downloads", "likes", "last_modified", "trending_score", "created_at")
_WEIGHT_SUFFIXES = (
    ".safetensors",
    ".bin",
    ".ckpt",
    ".pt",
    ".pth",
    ".msgpack",
    ".onnx",
    ".onnx_data",
    ".pb",
    ".h5",
    ".gguf",
    ".pkl",
)
# `<base>.<variant>.safetensors` or `<base>.<variant>-0000k-of-0000n.safetensors`
_VARIANT = re.compile(r"^[^.]+\.(?P<variant>[A-Za-z0-9_]+)(?:-\d+-of-\d+)?\.safetensors$")
_VARIANT_INDEX = re.compile(r"\.safetensors\.index\.(?P<variant>[A-Za-z0-9_]+)\.json$")
T = TypeVar("T")


def access(settings: SourceSettings, trusted: urls.UrlRules) -> Access:
    headers = {"Authorization": f"Bearer {settings.hf_token}"} if settings.hf_token else {}
    return Access(trusted, headers, _token_hint(settings))


def endpoint(settings: SourceSettings) -> str:
    """The Hub the settings name: `models.hf_endpoint`, else the library's default."""
    return settings.hf_endpoint or constants.ENDPOINT


def _token_hint(settings: SourceSettings) -> str:
    if settings.hf_token:
        return f"the token in {TOKEN_SETTING} has no access (accept the model's terms on the Hub)"
    return f"set {TOKEN_SETTING} to a Hugging Face token with access"


def _api(settings: SourceSettings) -> HfApi:
    # With telemetry on, huggingface_hub 2.x asks huggingface.co itself for a list of
    # agents to name in its User-Agent, whatever the endpoint: a configured Hub (or an
    # offline host) must be the only one asked. Off for this process.
    constants.HF_HUB_DISABLE_TELEMETRY = True
    return HfApi(
        endpoint=settings.hf_endpoint or None,
        token=settings.hf_token or False,  # False: never a token from the environment
        library_name="alice-spool",
    )


def _asking(settings: SourceSettings, repo: str, call: Callable[[], T]) -> T:
    """`call()`, with the Hub's errors as ours (messages that never hold a token)."""
    try:
        return call()
    except hub_errors.GatedRepoError:  # a RepositoryNotFoundError: caught first
        raise Unauthorized(f"{repo} is a gated repository: {_token_hint(settings)}") from None
    except hub_errors.RepositoryNotFoundError:
        if not settings.hf_token:
            raise Unauthorized(
                f"{repo} was not found on the Hub, or it is private (set {TOKEN_SETTING})"
            ) from None
        raise DownloadFailed(
            f"{repo} was not found on the Hub (or the token cannot see it)"
        ) from None
    except hub_errors.RevisionNotFoundError:
        raise DownloadFailed(f"{repo} has no such revision") from None
    except hub_errors.OfflineModeIsEnabled:
        raise SourceUnavailable(
            "HF_HUB_OFFLINE is set in this process's environment: the Hub is not asked"
        ) from None
    except hub_errors.HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        if status is not None and (status >= 500 or status == 429):
            raise Transient(f"the Hub answered {status} for {repo}") from None
        raise DownloadFailed(f"the Hub answered {status} for {repo}") from None
    except SpoolError:
        raise
    except Exception as exc:  # the connection: httpx's errors, OSError
        raise Transient(f"the Hub could not be reached: {type(exc).__name__}") from None


def plan(
    settings: SourceSettings, reference: dict[str, Any], kind: str | None, name: str | None
) -> Plan:
    repo = str(reference["repo"])
    revision = str(reference.get("revision") or "main")
    file = reference.get("file")
    api = _api(settings)
    info = _asking(
        settings, repo, lambda: api.model_info(repo, revision=revision, files_metadata=True)
    )
    if info.gated and not settings.hf_token:
        raise Unauthorized(f"{repo} is a gated repository: {_token_hint(settings)}")
    commit = info.sha or revision
    siblings = {s.rfilename: s for s in info.siblings or []}

    def remote(path: str, lands: str, *, weights: bool) -> RemoteFile:
        entry = siblings[path]
        lfs = entry.lfs
        return RemoteFile(
            path=lands,
            url=hf_hub_url(repo, path, revision=commit, endpoint=settings.hf_endpoint or None),
            size=entry.size if entry.size is not None else (lfs.size if lfs else None),
            sha256=lfs.sha256.lower() if lfs else None,
            git_blob=None if lfs else entry.blob_id,
            weights=weights,
        )

    default_name = safe_name(repo.rsplit("/", 1)[-1])
    if file is None and kind in (None, "diffusers") and "model_index.json" in siblings:
        chosen = pipeline_files(siblings, settings.hf_variant)
        files = tuple(
            remote(p, lands, weights=lands.endswith(".safetensors")) for p, lands in chosen
        )
        return Plan("diffusers", name or default_name, files, commit)
    if kind == "diffusers":
        raise DownloadFailed(f"{repo} is not a diffusers pipeline: it has no model_index.json")
    if file is None:
        top = sorted(p for p in siblings if "/" not in p and p.endswith(".safetensors"))
        if len(top) != 1:
            listed = ", ".join(top[:8]) or "none"
            raise DownloadFailed(
                f"{repo} is not a diffusers pipeline; name the file to download "
                f"(its safetensors files: {listed})"
            )
        file = top[0]
    file = str(file)
    if file not in siblings:
        raise DownloadFailed(f"{repo} has no file {file} at {revision}")
    if file.lower().endswith(PICKLE_SUFFIXES) and not settings.allow_pickle:
        raise UnsafeFormat(
            f"{file} is a pickle file, which can run code when loaded: only safetensors are "
            "installed (models.allow_pickle = true allows it)"
        )
    return Plan(kind or "", name or default_name, (remote(file, SINGLE, weights=True),), commit)


def pipeline_files(siblings: Iterable[str], variant: str) -> list[tuple[str, str]]:
    """(path in the repository, path in the model) of each file a diffusers pipeline
    needs; `unsafe_format` for a model folder with no safetensors weights."""
    paths = sorted(siblings)
    chosen = [("model_index.json", "model_index.json")]
    folders = sorted({p.split("/", 1)[0] for p in paths if "/" in p})
    for folder in folders:
        inside = [p for p in paths if p.startswith(folder + "/") and p.count("/") == 1]
        configs = [
            p
            for p in inside
            if not p.lower().endswith(_WEIGHT_SUFFIXES)
            and not p.rsplit("/", 1)[1].startswith(".")
            and not p.endswith(".bin.index.json")
            and not _VARIANT_INDEX.search(p)
        ]
        safetensors = [p for p in inside if p.endswith(".safetensors")]
        plain = [p for p in safetensors if not _VARIANT.match(p.rsplit("/", 1)[1])]
        wanted = [p for p in safetensors if _variant_of(p) == variant] if variant else []
        sharded = any("-of-" in p for p in wanted)
        if wanted and not sharded:  # the variant, installed under the plain names
            weights = [(p, p.replace(f".{variant}.safetensors", ".safetensors")) for p in wanted]
        else:
            weights = [(p, p) for p in plain]
        if not weights and any(p.lower().endswith(_WEIGHT_SUFFIXES) for p in inside):
            raise UnsafeFormat(
                f"{folder}/ has no safetensors weights (only pickle formats, which can run "
                "code when loaded): this repository cannot be installed"
            )
        chosen += [(p, p) for p in configs] + weights
    return chosen


def _variant_of(path: str) -> str | None:
    found = _VARIANT.match(path.rsplit("/", 1)[1])
    return found.group("variant") if found else None


def search(
    settings: SourceSettings, query: str, *, sort: str, limit: int, cursor: str | None
) -> SearchPage:
    """Text-to-image diffusers repositories matching `query`; the cursor is how many
    were already shown."""
    skip = int(cursor) if cursor else 0
    api = _api(settings)

    def ask() -> list[Any]:
        found = api.list_models(
            search=query or None,
            filter="diffusers",
            pipeline_tag="text-to-image",
            sort=sort,  # type: ignore[arg-type]
            limit=skip + limit + 1,
        )
        return list(found)

    try:
        models = _asking(settings, "the search", ask)
    except Transient as exc:
        raise SourceUnavailable(exc.message) from None
    except DownloadFailed as exc:
        raise SourceUnavailable(exc.message) from None
    page = models[skip : skip + limit]
    data = [
        {
            "source": "huggingface",
            "id": m.id,
            "name": m.id,
            "type": "lora" if "lora" in (m.tags or []) else "diffusers",
            "author": m.author or m.id.split("/")[0],
            "downloads": m.downloads,
            "likes": m.likes,
            "tags": list(m.tags or []),
            "pipeline_tag": m.pipeline_tag,
            "last_modified": m.last_modified.isoformat() if m.last_modified else None,
            "gated": bool(m.gated),
        }
        for m in page
    ]
    more = len(models) > skip + limit
    return SearchPage(data, str(skip + limit) if more else None)
