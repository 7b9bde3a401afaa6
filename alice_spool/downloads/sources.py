"""The model sources as the download worker and the search routes
see them: what each needs from the settings (endpoints, tokens, the address rules), and
the plan of a download of each source. Tokens live only here and in `Access`: they
are sent in headers and never written into a plan, a row, a log line or an error."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .. import urls
from ..errors import DownloadFailed
from .plan import SINGLE, Access, Plan, RemoteFile

if TYPE_CHECKING:
    from ..config import Settings


@dataclass(frozen=True)
class SourceSettings:
    hf_endpoint: str = ""  # "" = the library's default
    hf_token: str = field(default="", repr=False)
    hf_variant: str = ""  # "fp16" or "" (already decided from models.hf_variant)
    civitai_url: str = "https://civitai.com"
    civitai_token: str = field(default="", repr=False)
    allow_private_urls: bool = False
    allow_pickle: bool = False

    @classmethod
    def from_settings(cls, settings: Settings) -> SourceSettings:
        models = settings.models
        variant = models.hf_variant
        if variant == "auto":
            variant = "" if settings.runner.device == "cpu" else "fp16"
        return cls(
            hf_endpoint=models.hf_endpoint,
            hf_token=models.hf_token,
            hf_variant=variant,
            civitai_url=models.civitai_url,
            civitai_token=models.civitai_token,
            allow_private_urls=models.allow_private_urls,
            allow_pickle=models.allow_pickle,
        )

    def access(self, source: str) -> Access:
        """How to fetch a file of `source`. Every hop is checked by the address rules
        but those on the configured Hub's or CivitAI's own origin (scheme, host and
        port): the storage hosts they redirect to are checked as any URL is."""
        if source == "url":
            return Access(urls.UrlRules(allow_private=self.allow_private_urls))
        if source == "huggingface":
            from .huggingface import access, endpoint

            trusted = urls.UrlRules.trusting(endpoint(self), allow_private=self.allow_private_urls)
            return access(self, trusted)
        if source == "civitai":
            from .civitai import access

            trusted = urls.UrlRules.trusting(
                self.civitai_url, allow_private=self.allow_private_urls
            )
            return access(self, trusted)
        raise DownloadFailed(f"unknown source {source!r}")

    def plan(
        self, source: str, reference: dict[str, Any], kind: str | None, name: str | None
    ) -> Plan:
        """What a download of `reference` fetches, asked of its source now."""
        if source == "url":
            if kind == "diffusers":  # refused before a byte is fetched
                raise DownloadFailed("a URL gives one file; a diffusers model is a folder")
            file = RemoteFile(SINGLE, str(reference["url"]), sha256=reference.get("sha256"))
            return Plan(kind or "", name or "", (file,))
        if source == "huggingface":
            from .huggingface import plan

            return plan(self, reference, kind, name)
        if source == "civitai":
            from .civitai import plan as civitai_plan

            return civitai_plan(self, reference, kind, name)
        raise DownloadFailed(f"unknown source {source!r}")
