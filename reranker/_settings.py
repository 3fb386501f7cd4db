"""The Gemini re-ranker's settings, apart from the SDK: reading them (or the answer cache's path) loads no client."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from retrieval.files import NoHomeError

from ._cache import DEFAULT_MAX_ENTRIES, default_cache_path
from ._thumbs import DEFAULT_QUERY_SIZE, DEFAULT_THUMB_SIZE

# gemini-3.5-flash, the default before, is deprecated: Google answers it with gemini-3.6-flash, so results and
# cache keys named a model that did not answer. Naming the one that answers changes no answer.
DEFAULT_MODEL = "gemini-3.6-flash"


def http_url_problem(url: str | None) -> str | None:
    """What is wrong with a Gemini base URL (None: nothing, or none given). Without a scheme every call failed as
    an unsupported protocol, was retried with backoff, then fell back."""
    return f"{url!r} is no http:// or https:// URL" if url and not url.startswith(("http://", "https://")) else None


class GeminiSettings(BaseSettings):
    """Options of the Gemini re-ranker; each can also be set as `VMEM_GEMINI_<NAME>` in the environment."""

    model_config = SettingsConfigDict(env_prefix="VMEM_GEMINI_", extra="forbid", env_ignore_empty=True)

    model: str = Field(default=DEFAULT_MODEL, description="Gemini model id")
    base_url: str | None = Field(default=None,
                                 description="API endpoint; default: $GOOGLE_GEMINI_BASE_URL, else Google's")
    thumb_size: int = Field(default=DEFAULT_THUMB_SIZE, ge=16, le=3072,
                            description="neighbour thumbnails' longest side, px")
    query_size: int = Field(default=DEFAULT_QUERY_SIZE, ge=16, le=3072, description="query image's longest side, px")
    media_resolution: Literal["unspecified", "low", "medium", "high"] = "unspecified"
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    thinking_level: Literal["unspecified", "minimal", "low", "medium", "high"] = Field(
        default="unspecified", description="how much a Gemini 3 model thinks before it answers (unspecified: the "
        "model's own default, MEDIUM for Flash); lower is faster and cheaper")
    deadline_s: float = Field(default=60.0, gt=0, description="total time per query, retries and tool steps included")
    attempt_timeout_s: float = Field(default=30.0, gt=0, description="time per HTTP attempt (capped by the deadline)")
    max_attempts: int = Field(default=4, ge=1, le=20, description="HTTP attempts per call, first one included")
    backoff_initial_s: float = Field(default=1.0, ge=0)
    backoff_max_s: float = Field(default=20.0, ge=0)
    concurrency: int = Field(default=8, ge=1, le=256, description="requests in flight at once in a batch")
    cache: bool = True
    cache_path: Path | None = Field(default=None, description="SQLite file; default $VMEM_HOME/cache/rerank.sqlite")
    cache_max_entries: int = Field(default=DEFAULT_MAX_ENTRIES, ge=1, description="answers kept (the oldest go first; "
                                   "~7 KB each)")
    max_exemplars: int = Field(default=8, ge=1, le=50, description="agentic: most images one exemplars() call returns")
    max_neighbors_total: int = Field(default=100, ge=1, le=1000, description="agentic: more_neighbors(k) cap on k")
    max_tool_images: int = Field(default=16, ge=0, le=100,
                                 description="agentic: images per tool result; the rest by label")
    breaker_failures: int = Field(default=5, ge=0, description="consecutive upstream failures that open the circuit, "
                                  "after which queries fall back at once (0: no breaker)")
    breaker_cooldown_s: float = Field(default=30.0, gt=0,
                                      description="how long an open circuit waits before a trial call")

    @field_validator("base_url")
    @classmethod
    def _an_http_url(cls, url: str | None) -> str | None:
        if problem := http_url_problem(url):
            raise ValueError(problem)
        return url or None

    def key_settings(self) -> dict[str, Any]:
        """The settings that can change an answer (and so belong in the cache key)."""
        key = self.model_dump(mode="json", include={"thumb_size", "query_size", "media_resolution", "temperature",
                                                    "thinking_level", "max_exemplars", "max_neighbors_total",
                                                    "max_tool_images"})
        if key["thinking_level"] == "unspecified":  # as before the setting was: the answers cached then still count
            del key["thinking_level"]
        return key


def configured_cache_path(settings: GeminiSettings | None = None) -> Path | None:
    """The answer cache file a Gemini re-ranker with these settings (default: the environment's) uses; None: off.

    For a process that deletes points without ever re-ranking (`vmem forget`): it can drop the answers that
    cited them from that file without building a re-ranker or needing an API key.
    """
    settings = settings or GeminiSettings()
    if not settings.cache:
        return None
    try:
        return settings.cache_path or default_cache_path()
    except NoHomeError:  # no default folder to have kept answers in: none to drop
        return None
