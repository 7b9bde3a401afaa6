"""Stand-ins for the Hugging Face Hub and CivitAI on 127.0.0.1: the routes
`reference/model-sources.md` lists, answering as those services do (JSON shapes, error
headers, redirects to a storage host, `Range`), with real files. Each records what it
was asked, with which `Authorization`, so tests can say what was fetched and where a
token went."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

from .remote import send_ranged

Seen = tuple[str, str, str | None]  # (method, path, Authorization)


def git_blob_id(body: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(body) + body).hexdigest()


@dataclass
class Files:
    """What a file route serves, with resumable transfers and their faults."""

    requests: list[Seen] = field(default_factory=list)
    ranges: dict[str, list[str | None]] = field(default_factory=dict)  # path -> each Range
    honour_ranges: bool = True
    drop_after: dict[str, int] = field(default_factory=dict)  # path -> bytes, then hang up
    hold: threading.Event | None = None  # set: bodies wait after their first MiB until set

    def fetched(self, suffix: str) -> int:
        """How many GETs asked for a path ending with `suffix`."""
        return sum(
            1 for method, path, _ in self.requests if method == "GET" and path.endswith(suffix)
        )


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    app: Any = None

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        self._serve("GET")

    def do_HEAD(self) -> None:
        self._serve("HEAD")

    def _serve(self, method: str) -> None:
        parts = urlsplit(self.path)
        query = parse_qs(parts.query)
        self.app.files.requests.append(
            (method, unquote(parts.path), self.headers.get("Authorization"))
        )
        self.app.answer(self, method, unquote(parts.path), query)

    # -- answers --------------------------------------------------------------------------

    def send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_json(
        self, value: Any, status: int = 200, headers: dict[str, str] | None = None
    ) -> None:
        body = json.dumps(value).encode()
        self.send(status, body, {"Content-Type": "application/json", **(headers or {})})

    def send_file(self, key: str, body: bytes, etag: str, headers: dict[str, str]) -> None:
        files: Files = self.app.files
        if self.command == "GET":
            files.ranges.setdefault(key, []).append(self.headers.get("Range"))
        send_ranged(
            self,
            body,
            etag,
            honour_ranges=files.honour_ranges,
            headers=headers,
            cut=files.drop_after.pop(key, None) if self.command == "GET" else None,
            hold=files.hold,
        )


@contextmanager
def _serving(app: Any) -> Iterator[Any]:
    handler = type("Handler", (_Handler,), {"app": app})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    app.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield app
    finally:
        if app.files.hold is not None:
            app.files.hold.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


# -- the Hugging Face Hub -------------------------------------------------------------------


@dataclass
class Repo:
    files: dict[str, bytes]
    gated: bool = False
    pipeline_tag: str = "text-to-image"
    downloads: int = 0
    likes: int = 0
    tags: list[str] = field(default_factory=lambda: ["diffusers"])

    @property
    def sha(self) -> str:
        digest = hashlib.sha1()
        for path in sorted(self.files):
            digest.update(path.encode() + git_blob_id(self.files[path]).encode())
        return digest.hexdigest()


@dataclass
class Hub:
    """`repos` by id; `token` opens the gated ones. Files of 1 KiB or more are "LFS" (a
    SHA-256 in the listing); the rest are plain git files (only their git blob id)."""

    repos: dict[str, Repo] = field(default_factory=dict)
    token: str = "hf_standin_secret_token"
    corrupt: dict[str, bytes] = field(default_factory=dict)  # "repo/path" -> served instead
    files: Files = field(default_factory=Files)
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _allowed(self, repo: Repo, handler: _Handler) -> bool:
        return not repo.gated or handler.headers.get("Authorization") == f"Bearer {self.token}"

    def _refuse(self, handler: _Handler, code: str, status: int) -> None:
        handler.send_json(
            {"error": f"{code} (stand-in)"},
            status,
            {"X-Error-Code": code, "X-Error-Message": f"{code} (stand-in)"},
        )

    def _entry(self, path: str, body: bytes) -> dict[str, Any]:
        entry: dict[str, Any] = {"rfilename": path, "size": len(body), "blobId": git_blob_id(body)}
        if len(body) >= 1024:
            sha = hashlib.sha256(body).hexdigest()
            entry["lfs"] = {"sha256": sha, "size": len(body), "pointerSize": 134}
        return entry

    def _info(self, name: str, repo: Repo) -> dict[str, Any]:
        return {
            "_id": name,
            "id": name,
            "modelId": name,
            "author": name.split("/")[0],
            "sha": repo.sha,
            "private": False,
            "gated": "manual" if repo.gated else False,
            "disabled": False,
            "downloads": repo.downloads,
            "likes": repo.likes,
            "tags": repo.tags,
            "pipeline_tag": repo.pipeline_tag,
            "library_name": "diffusers",
            "lastModified": "2026-11-01T00:00:00.000Z",
            "createdAt": "2026-01-01T00:00:00.000Z",
            "siblings": [self._entry(p, b) for p, b in sorted(repo.files.items())],
        }

    def answer(
        self, handler: _Handler, method: str, path: str, query: dict[str, list[str]]
    ) -> None:
        if path == "/api/models":
            self._search(handler, query)
        elif path.startswith("/api/models/"):
            rest = path.removeprefix("/api/models/")
            name, _, revision = rest.partition("/revision/")
            name = name.removesuffix("/")
            repo = self.repos.get(name)
            if repo is None:
                return self._refuse(handler, "RepoNotFound", 401)
            if revision not in ("", "main", repo.sha):
                return self._refuse(handler, "RevisionNotFound", 404)
            # As the Hub's: a gated repository's listing is public; its files are not.
            handler.send_json(self._info(name, repo))
        elif "/resolve/" in path:
            self._resolve(handler, path)
        else:
            handler.send(404)

    def _search(self, handler: _Handler, query: dict[str, list[str]]) -> None:
        text = query.get("search", [""])[0].lower()
        wanted = set(query.get("filter", [])) | set(query.get("pipeline_tag", []))
        found = [
            self._info(name, repo)
            for name, repo in sorted(self.repos.items())
            if text in name.lower() and wanted <= set(repo.tags) | {repo.pipeline_tag}
        ]
        sort = query.get("sort", [""])[0]
        if sort in ("downloads", "likes"):
            found.sort(key=lambda info: -info[sort])
        limit = int(query.get("limit", ["1000"])[0])
        for info in found:
            info.pop("siblings")
        handler.send_json(found[:limit])

    def _resolve(self, handler: _Handler, path: str) -> None:
        head, _, file_path = path.lstrip("/").partition("/resolve/")
        revision, _, file_path = file_path.partition("/")
        repo = self.repos.get(head)
        if repo is None:
            return self._refuse(handler, "RepoNotFound", 401)
        if revision not in ("main", repo.sha):
            return self._refuse(handler, "RevisionNotFound", 404)
        if not self._allowed(repo, handler):
            return self._refuse(handler, "GatedRepo", 401)
        body = repo.files.get(file_path)
        if body is None:
            return self._refuse(handler, "EntryNotFound", 404)
        entry = self._entry(file_path, body)
        body = self.corrupt.get(f"{head}/{file_path}", body)
        etag = '"' + (entry["lfs"]["sha256"] if "lfs" in entry else entry["blobId"]) + '"'
        headers = {"X-Repo-Commit": repo.sha}
        if "lfs" in entry:
            headers["X-Linked-Etag"] = etag
            headers["X-Linked-Size"] = str(len(body))
        handler.send_file(f"{head}/{file_path}", body, etag, headers)


# -- CivitAI ------------------------------------------------------------------------------


@dataclass
class Civitai:
    """`models` as CivitAI's API shows them (`items`); `blobs` by file id, served by a
    separate storage host (another port: another origin) behind a 307, as the real one
    does. Downloads need `Bearer <token>`. Search (`query`) runs in cursor mode (its
    cursors are offsets; one it never gave leads past the end, where CivitAI itself
    answers 400) and, as CivitAI did until mid-2026, ignores `types` (clients filter
    themselves)."""

    models: list[dict[str, Any]] = field(default_factory=list)
    blobs: dict[int, bytes] = field(default_factory=dict)
    token: str = "civitai_standin_secret_token"
    files: Files = field(default_factory=Files)
    storage: Storage | None = None
    images: dict[str, bytes] = field(default_factory=dict)  # path -> a preview image
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def answer(
        self, handler: _Handler, method: str, path: str, query: dict[str, list[str]]
    ) -> None:
        if path in self.images:
            handler.send(200, self.images[path], {"Content-Type": "image/png"})
        elif path == "/api/v1/models":
            self._list(handler, query)
        elif path.startswith("/api/v1/models/"):
            found = [m for m in self.models if str(m["id"]) == path.rsplit("/", 1)[1]]
            if not found:
                return handler.send_json({"error": "No model with id"}, 404)
            handler.send_json(found[0])
        elif path.startswith("/api/v1/model-versions/"):
            wanted = path.rsplit("/", 1)[1]
            for model in self.models:
                for version in model["modelVersions"]:
                    if str(version["id"]) == wanted:
                        return handler.send_json(
                            {
                                **version,
                                "modelId": model["id"],
                                "model": {
                                    "name": model["name"],
                                    "type": model["type"],
                                    "nsfw": model["nsfw"],
                                },
                            }
                        )
            handler.send_json({"error": "Model version not found"}, 404)
        elif path.startswith("/api/download/models/"):
            self._download(handler, path.rsplit("/", 1)[1], query)
        else:
            handler.send(404)

    def _list(self, handler: _Handler, query: dict[str, list[str]]) -> None:
        limit = int(query.get("limit", ["100"])[0])
        if not 0 <= limit <= 100:
            return handler.send_json({"error": "limit must be 0..100"}, 400)
        text = query.get("query", [""])[0].lower()
        if text and "page" in query:
            return handler.send_json({"error": "Cannot use page with query, use cursor"}, 400)
        nsfw = query.get("nsfw", ["false"])[0] == "true"
        items = [m for m in self.models if nsfw or not m["nsfw"]]
        if text:
            items = [m for m in items if text in m["name"].lower()]
            cursor = query.get("cursor", [""])[0] or "0"
            # One it never gave (its cursors are offsets) leads past the end.
            start = int(cursor) if cursor.isascii() and cursor.isdigit() else len(items)
            page = items[start : start + limit]
            more = start + limit < len(items)
            metadata: dict[str, Any] = {"nextCursor": str(start + limit) if more else None}
        else:
            types = set(query.get("types", []))
            if types:
                items = [m for m in items if m["type"] in types]
            number = int(query.get("page", ["1"])[0])
            page = items[(number - 1) * limit : number * limit]
            more = number * limit < len(items)
            metadata = {"currentPage": number, "pageSize": limit}
            if more:
                metadata["nextPage"] = f"{self.url}/api/v1/models?page={number + 1}"
        handler.send_json({"items": page, "metadata": metadata})

    def _download(self, handler: _Handler, version_id: str, query: dict[str, list[str]]) -> None:
        if handler.headers.get("Authorization") != f"Bearer {self.token}":
            return handler.send_json(
                {
                    "error": "Unauthorized",
                    "message": "The creator of this asset requires you to be logged in",
                },
                401,
            )
        for model in self.models:
            for version in model["modelVersions"]:
                if str(version["id"]) != version_id:
                    continue
                wanted = query.get("fileId", [None])[0]
                for entry in version["files"]:
                    if (wanted is None and entry.get("primary")) or str(entry["id"]) == wanted:
                        assert self.storage is not None
                        where = f"/files/{entry['id']}/{quote(entry['name'])}?sig=signed"
                        location = self.storage.url + where
                        return handler.send(307, b"", {"Location": location})
        handler.send_json({"error": "Not found"}, 404)


@dataclass
class Storage:
    """CivitAI's storage host: signed URLs, `Content-Disposition`, `Range`."""

    blobs: dict[int, bytes]
    disposition: dict[int, str] = field(default_factory=dict)  # file id -> a forced name
    files: Files = field(default_factory=Files)
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def answer(
        self, handler: _Handler, method: str, path: str, query: dict[str, list[str]]
    ) -> None:
        parts = path.strip("/").split("/")
        if len(parts) != 3 or parts[0] != "files" or query.get("sig") != ["signed"]:
            return handler.send(403)
        body = self.blobs.get(int(parts[1]))
        if body is None:
            return handler.send(404)
        name = self.disposition.get(int(parts[1]), parts[2])
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        headers = {"Content-Disposition": f'attachment; filename="{name}"'}
        handler.send_file(path, body, etag, headers)


@contextmanager
def hub_serving(hub: Hub) -> Iterator[Hub]:
    with _serving(hub) as running:
        yield running


@contextmanager
def civitai_serving(civitai: Civitai) -> Iterator[Civitai]:
    storage = Storage(civitai.blobs)
    with _serving(storage), _serving(civitai) as running:
        running.storage = storage
        yield running


def civitai_model(
    model_id: int,
    name: str,
    kind: str,
    files: list[tuple[int, str, bytes]],
    *,
    version_id: int | None = None,
    nsfw: bool = False,
    scan: str = "Success",
    file_format: str = "SafeTensor",
    sha256: str | None = None,
    image: str | None = None,
) -> dict[str, Any]:
    """One model as CivitAI lists it, one version, its files (id, name, bytes); `image`
    its preview's URL."""
    version = version_id or model_id * 10
    return {
        "id": model_id,
        "name": name,
        "description": f"<p>{name}</p>",
        "type": kind,
        "nsfw": nsfw,
        "tags": ["style"],
        "creator": {"username": "maker", "image": None},
        "stats": {"downloadCount": 1000 - model_id, "rating": 4.5},
        "modelVersions": [
            {
                "id": version,
                "name": "v1.0",
                "baseModel": "SD 1.5",
                "trainedWords": ["lighthouse"],
                "images": [
                    {"url": image or f"https://image.civitai.com/{model_id}.jpeg", "nsfwLevel": 1}
                ],
                "downloadUrl": f"https://civitai.com/api/download/models/{version}",
                "files": [
                    {
                        "id": file_id,
                        "name": file_name,
                        "sizeKB": len(body) / 1024,
                        "type": "Model",
                        "primary": index == 0,
                        "metadata": {"format": file_format, "size": "pruned", "fp": "fp16"},
                        "pickleScanResult": scan,
                        "virusScanResult": "Success",
                        "hashes": {
                            "SHA256": (sha256 or hashlib.sha256(body).hexdigest()).upper(),
                            "AutoV2": hashlib.sha256(body).hexdigest()[:10].upper(),
                        },
                        "downloadUrl": f"https://civitai.com/api/download/models/{version}?fileId={file_id}",
                    }
                    for index, (file_id, file_name, body) in enumerate(files)
                ],
            }
        ],
    }


def files_of(folder: Path) -> dict[str, bytes]:
    """A model folder's files by relative path, as a repository holds them."""
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def checkpoint_bytes(mib: float = 3, seed: int = 5) -> bytes:
    """A safetensors file with a checkpoint's (not a LoRA's) tensor names, `mib` MiB of
    seeded random weights."""
    import numpy as np
    from safetensors.numpy import save

    count = int(mib * 1024 * 256)
    weights = np.random.default_rng(seed).standard_normal(count).astype(np.float32)
    return save({"model.diffusion_model.input_blocks.0.0.weight": weights})
