"""The service's settings: environment variables prefixed `VMEM_`, or an env file, validated at start-up.

    VMEM_MEMORY=./memory VMEM_API_KEY=... uvicorn --factory vmem.cli.serve:create_service_app

Unsafe combinations are refused here rather than discovered in production: an editing API with
auth enabled but no key, a key too short to resist guessing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from vmem.answer_log import DEFAULT_BACKUPS, DEFAULT_MAX_MB
from vmem.novelty import OOD_PERCENTILE, OOD_SAMPLE_SIZE

from .keys import read_keys_file
from .schemas import MOST_BATCH_IMAGES

MIN_API_KEY_LENGTH = 16


class Settings(BaseSettings):
    """Everything `vmem serve` and `create_app` can be told; each field reads `VMEM_<NAME>`."""

    model_config = SettingsConfigDict(
        env_prefix="VMEM_", env_file=".env", env_file_encoding="utf-8", extra="ignore",
        env_ignore_empty=True,  # `VMEM_QDRANT_URL=` (a template's blank line) means unset, not a URL of ""
    )

    memory: str = Field(default="./memory", description="embedded memory directory, or `:memory:`")
    qdrant_url: str | None = Field(default=None, description="a Qdrant server (http://host:6333); replaces `memory`")
    featurizer: str | None = Field(
        default=None, description="encoder name; must match the memory's (only needed with create_memory)")
    create_memory: bool = Field(default=False, description="create an empty memory when none exists")
    read_only: bool = Field(
        default=False, description="serve the embedded memory for classify only, every edit refused: a private copy "
        "of it in the temporary folder is opened, so its folder may be a read-only mount and other services may "
        "serve it the same way")
    device: str | None = Field(default=None, description="torch device for the encoder (default: cuda if present)")
    wait: float = Field(
        default=0.0, ge=0, description="seconds the start waits for another process that holds the embedded memory "
        "(a build, a notebook) to let go (`vmem serve --wait`); 0 refuses at once")

    api_key: SecretStr | None = Field(default=None, description="key required in X-API-Key to edit the memory")
    api_keys_file: Path | None = Field(
        default=None, description="a file of named keys, one `NAME SHA256 [edit,rerank]` a line (`vmem key NAME` makes "
        "one), taken beside VMEM_API_KEY and read again when it changes: the name of the key an edit came with is "
        "journaled")
    auth_disabled: bool = Field(default=False, description="let anyone edit the memory (only for a trusted network)")

    max_upload_bytes: int = Field(default=20 * 1024 * 1024, ge=1024, description="largest request body accepted")
    max_import_bytes: int = Field(
        default=4 * 1024**3, ge=1024, description="largest .npz file `POST /v1/memory/import` takes (an export of "
        "ImageNet's 1.28M images is about 2.0 GB at 384-d, 4.0 GB at 768-d); `vmem import` on the host takes any size")
    max_batch_images: int = Field(default=32, ge=1, le=MOST_BATCH_IMAGES,
                                  description="most images in one batch or add request")
    log_format: Literal["text", "json"] = Field(
        default="text", description="vmem serve's log lines: text, or one JSON object a line (for a log collector)")
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="origins allowed by CORS (comma-separated); none by default")
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Host headers answered (comma-separated; `*.example.org` a domain's); any "
        "by default. Names a service on loopback against DNS rebinding: a web page could read it through a name it "
        "made resolve to 127.0.0.1")

    ood_percentile: float = Field(
        default=OOD_PERCENTILE, gt=50, lt=100,
        description="novelty above this percentile of memory-to-memory novelty is OOD")
    ood_sample_size: int = Field(default=OOD_SAMPLE_SIZE, ge=8, le=10_000,
                                 description="memory points sampled to calibrate OOD")

    prefetch_memory: bool = Field(
        default=True, description="read the memory's search files once at start-up, before taking traffic, so that "
        "the first queries do not wait on the disk")
    featurize_threads: int = Field(default=2, ge=1, le=64, description="threads that decode and embed images")
    rerank_requests: int = Field(
        default=4, ge=1, le=64, description="rerank=true requests served at once, on threads of their own (each waits "
        "seconds on Gemini: on the embedding threads they held up every other classify); more wait their turn")
    result_cache_size: int = Field(
        default=1024, ge=0, description="classify answers kept per memory version (0: off), and at most this many "
        "times 50 neighbours among them (answers at a large k count for more)")
    thumbnail_dir: Path | None = Field(
        default=None, description="where thumbnails of added images are kept (default: MEMORY/thumbnails)")
    backup_dir: Path | None = Field(
        default=None, description="where `POST /v1/memory/backup` writes backups of the embedded memory, a folder "
        "each (made if missing; best on another disk than the memory's); unset, backups over HTTP are refused")
    answer_log: Path | None = Field(
        default=None, description="a file to log every answer to, one JSON line each (time, client, the image's sha256 "
        "and name, the label, the neighbours: `vmem answers` reads it); unset, answers are not logged")
    answer_log_max_mb: float = Field(
        default=DEFAULT_MAX_MB, ge=0, description=f"the answer log's size at which it is rotated (to FILE.1; "
        f"{DEFAULT_BACKUPS} older files kept, the oldest dropped); 0 never rotates")
    keep_uploads: bool = Field(
        default=False, description="keep each image added over HTTP as sent, in the memory's folder (MEMORY/uploads), "
        "so that `vmem copy --featurizer` can embed it again with another encoder; a forget deletes it. Unset, only "
        "a thumbnail is kept, and uploaded points are left out of such a move")
    thumbnail_size: int = Field(default=160, ge=16, le=1024, description="longest side of a thumbnail, in pixels")
    source_roots: Annotated[list[Path], NoDecode] = Field(
        default_factory=list, description="directories whose images may be served as thumbnails and sent to the "
        "re-ranker (comma-separated); default: the roots `vmem build` recorded in the memory")

    @field_validator("cors_origins", "allowed_hosts", "source_roots", mode="before")
    @classmethod
    def _split_origins(cls, value: object, info: ValidationInfo) -> object:
        if isinstance(value, str) and value.strip().startswith("["):  # the JSON list other settings take
            try:
                return json.loads(value)
            except json.JSONDecodeError as exc:
                # ... or hosts from an IPv6 address in brackets ("[::1],localhost"), which no JSON list is
                if info.field_name != "allowed_hosts":
                    raise ValueError(f"{value!r} is neither a JSON list nor comma-separated ({exc})") from None
        if isinstance(value, str):
            return [o.strip() for o in value.split(",") if o.strip()]
        return value

    @field_validator("allowed_hosts", mode="after")
    @classmethod
    def _host_names(cls, hosts: list[str]) -> list[str]:
        """Hosts as a Host header names them, without a port: "localhost:8000" had matched nothing, and an IPv6
        address is written in brackets."""
        names = []
        for host in hosts:
            host = host.strip().lower()
            if host.startswith("["):
                host = host[: host.find("]") + 1] if "]" in host else host
            elif host.count(":") == 1:
                host = host.split(":")[0]
            elif host.count(":") > 1:  # a bare IPv6 address
                host = f"[{host}]"
            names.append(host)
        return names

    @field_validator("answer_log", mode="after")
    @classmethod
    def _a_file(cls, value: Path | None) -> Path | None:
        if value is not None and value.expanduser().is_dir():
            raise ValueError(f"{value} is a folder: give the answer log's file")
        return value

    @field_validator("thumbnail_dir", "backup_dir", mode="after")
    @classmethod
    def _a_folder(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is not None and value.expanduser().exists() and not value.expanduser().is_dir():
            raise ValueError(f"{value} is a file, not a folder for {str(info.field_name).removesuffix('_dir')}s")
        return value

    @field_validator("api_keys_file", mode="after")
    @classmethod
    def _keys_file(cls, value: Path | None) -> Path | None:
        if value is not None:
            read_keys_file(value.expanduser())  # a malformed file refused at start, with its line
        return value

    @field_validator("memory", "thumbnail_dir", "backup_dir", "source_roots", "answer_log", "api_keys_file",
                     mode="after")
    @classmethod
    def _expand_home(cls, value: str | Path | list[Path] | None) -> str | Path | list[Path] | None:
        # A shell expands `~` in VMEM_MEMORY=~/memory; an env file or a systemd unit does not.
        if isinstance(value, list):
            return [p.expanduser() for p in value]
        if isinstance(value, Path):
            return value.expanduser()
        return os.path.expanduser(value) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _refuse_unsafe(self) -> Settings:
        if self.read_only and self.qdrant_url:
            raise ValueError("VMEM_READ_ONLY serves an embedded memory (VMEM_MEMORY); a Qdrant server's collection is "
                             "served by several services as it is")
        if self.keep_uploads and (self.qdrant_url or self.memory == ":memory:"):
            raise ValueError("VMEM_KEEP_UPLOADS keeps uploaded images in the embedded memory's folder: a memory "
                             f"{'on a Qdrant server' if self.qdrant_url else 'in RAM'} has none")
        if self.auth_disabled:
            return self
        key = self.api_key.get_secret_value() if self.api_key is not None else ""
        if not key:
            if self.api_keys_file is not None:
                if read_keys_file(self.api_keys_file):
                    return self
                raise ValueError(f"VMEM_API_KEYS_FILE ({self.api_keys_file}) holds no key, and VMEM_API_KEY is "
                                 "unset: nobody could edit the memory (`vmem key NAME` makes a key and its line)")
            if self.read_only:  # every edit is refused: what the key still guards is the points' vectors
                raise ValueError("no API key: set VMEM_API_KEY or VMEM_API_KEYS_FILE (a read-only service refuses "
                                 "every edit; re-ranked classifies, the export of the points and backups require it), "
                                 "or set VMEM_AUTH_DISABLED=true to let anyone ask for them")
            raise ValueError(
                "no API key: set VMEM_API_KEY or VMEM_API_KEYS_FILE (memory-editing endpoints require it), "
                "or set VMEM_AUTH_DISABLED=true to let anyone edit the memory"
            )
        if len(key) < MIN_API_KEY_LENGTH:
            raise ValueError(f"VMEM_API_KEY is too short: use at least {MIN_API_KEY_LENGTH} characters")
        return self

    @property
    def location(self) -> str:
        return self.qdrant_url or self.memory
