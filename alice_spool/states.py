"""The states a job and a download go through, where a job came from, and the roles of
a key: plain enums every layer may use (the SQL tables in `store/tables.py` check them)."""

from __future__ import annotations

import enum


class JobStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in FINISHED


FINISHED = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})


class Source(enum.StrEnum):
    API = "api"
    OPENAI = "openai"
    INBOX = "inbox"
    CLI = "cli"
    # The other servers' dialects: jobs their clients asked for.
    A1111 = "a1111"
    ABLEREFUSAL = "ablerefusal"
    GTX1060 = "gtx1060"
    RESTPLAN = "restplan"


class DownloadStatus(enum.StrEnum):
    QUEUED = "queued"
    DOWNLOADING = "downloading"
    VERIFYING = "verifying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (DownloadStatus.SUCCEEDED, DownloadStatus.FAILED, DownloadStatus.CANCELLED)


DOWNLOAD_SOURCES = ("huggingface", "civitai", "url")
DOWNLOAD_KINDS = ("diffusers", "checkpoint", "lora")
ROLES = ("admin", "user")
