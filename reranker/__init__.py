"""VLM re-ranking: Gemini looks at the query and its labelled neighbours and picks the label.

>>> from reranker import GeminiReranker, RerankRequest
>>> rr = GeminiReranker()                      # key from $GEMINI_API_KEY or $GOOGLE_API_KEY
>>> rr.rerank_one(RerankRequest(image=img, neighbors=nbrs, scores=scores, vote_label="tabby"))

Every failure falls back to the vote, with `reranked=False` and a `fallback_reason`.
"""

from ._breaker import CircuitBreaker
from ._cache import AnswerCache, cache_key, default_cache_dir, default_cache_path
from ._errors import (
    CircuitOpenError,
    ConnectionFailedError,
    DeadlineExceededError,
    InvalidAnswerError,
    NoApiKeyError,
    NonCandidateAnswerError,
    NothingToRerankError,
    QuotaExceededError,
    RequestRejectedError,
    RerankError,
    StepBudgetError,
    UpstreamError,
)
from ._gemini import (
    DEFAULT_MODEL,
    RERANKERS,
    GeminiReranker,
    GeminiSettings,
    api_key_from_env,
    forget_cached_answers,
    make_reranker,
)
from ._prompt import BuiltPrompt, build_prompt, candidate_labels, encode_query
from ._thumbs import ThumbnailCache, ThumbnailError, encode_jpeg
from ._types import RerankBatch, RerankNeighbor, RerankOutcome, RerankRequest, Usage

__all__ = [
    "DEFAULT_MODEL",
    "RERANKERS",
    "AnswerCache",
    "BuiltPrompt",
    "CircuitBreaker",
    "CircuitOpenError",
    "ConnectionFailedError",
    "DeadlineExceededError",
    "GeminiReranker",
    "GeminiSettings",
    "InvalidAnswerError",
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
    "UpstreamError",
    "Usage",
    "api_key_from_env",
    "build_prompt",
    "cache_key",
    "candidate_labels",
    "default_cache_dir",
    "default_cache_path",
    "encode_jpeg",
    "encode_query",
    "forget_cached_answers",
    "make_reranker",
]
