"""VLM re-ranking: Gemini looks at the query and its labelled neighbours and picks the label.

>>> from reranker import GeminiReranker, RerankRequest
>>> rr = GeminiReranker()                      # key from $GEMINI_API_KEY or $GOOGLE_API_KEY
>>> rr.rerank_one(RerankRequest(image=img, neighbors=nbrs, scores=scores, vote_label="tabby"))

Every failure falls back to the vote, with `reranked=False` and a `fallback_reason`.
"""

from typing import TYPE_CHECKING, Any

from ._breaker import CircuitBreaker
from ._cache import AnswerCache, cache_key, default_cache_dir, default_cache_path
from ._errors import (
    AttemptsTimedOutError,
    CircuitOpenError,
    ConnectionFailedError,
    DeadlineExceededError,
    InvalidAnswerError,
    KeyRefusedError,
    NoApiKeyError,
    NonCandidateAnswerError,
    NothingToRerankError,
    QuotaExceededError,
    RequestRejectedError,
    RerankError,
    StepBudgetError,
    UnexpectedError,
    UpstreamError,
)
from ._settings import DEFAULT_MODEL, GeminiSettings, configured_cache_path, http_url_problem
from ._thumbs import ThumbnailCache, ThumbnailError, encode_jpeg
from ._types import RerankBatch, RerankNeighbor, RerankOutcome, RerankRequest, Usage

# What needs the Gemini SDK (~0.4 s to import) is loaded on first use: a process that only forgets points,
# and cleans the answer cache after them, never does.
_FROM_SDK_MODULES = {
    "._gemini": ("RERANKERS", "GeminiReranker", "api_key_from_env", "make_reranker"),
    "._prompt": ("BuiltPrompt", "build_prompt", "candidate_labels", "encode_query"),
}
if TYPE_CHECKING:
    from ._gemini import RERANKERS, GeminiReranker, api_key_from_env, make_reranker
    from ._prompt import BuiltPrompt, build_prompt, candidate_labels, encode_query


def __getattr__(name: str) -> Any:
    import importlib

    for module, names in _FROM_SDK_MODULES.items():
        if name in names:
            value = getattr(importlib.import_module(module, __name__), name)
            globals()[name] = value
            return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DEFAULT_MODEL",
    "RERANKERS",
    "AnswerCache",
    "AttemptsTimedOutError",
    "BuiltPrompt",
    "CircuitBreaker",
    "CircuitOpenError",
    "ConnectionFailedError",
    "DeadlineExceededError",
    "GeminiReranker",
    "GeminiSettings",
    "InvalidAnswerError",
    "KeyRefusedError",
    "NoApiKeyError",
    "NonCandidateAnswerError",
    "NothingToRerankError",
    "QuotaExceededError",
    "RequestRejectedError",
    "RerankBatch",
    "RerankError",
    "RerankNeighbor",
    "RerankOutcome",
    "RerankRequest",
    "StepBudgetError",
    "ThumbnailCache",
    "ThumbnailError",
    "UnexpectedError",
    "UpstreamError",
    "Usage",
    "api_key_from_env",
    "build_prompt",
    "cache_key",
    "candidate_labels",
    "configured_cache_path",
    "default_cache_dir",
    "default_cache_path",
    "encode_jpeg",
    "encode_query",
    "http_url_problem",
    "make_reranker",
]
