"""Why a re-ranking did not produce an answer. Each message is a complete sentence for a person.

    RerankError
    ├── NoApiKeyError           no GEMINI_API_KEY / GOOGLE_API_KEY
    ├── NothingToRerankError    no neighbours, or a single candidate label
    ├── DeadlineExceededError   the request's total deadline passed
    ├── QuotaExceededError      429 RESOURCE_EXHAUSTED, retries spent (or retryDelay past the deadline)
    ├── UpstreamError           5xx, timeouts or connection errors, retries spent
    │   └── ConnectionFailedError
    ├── CircuitOpenError        Gemini kept failing: not called until a cool-down passes
    ├── RequestRejectedError    400/401/403/404: retrying cannot help
    ├── InvalidAnswerError      the answer could not be read
    │   ├── NonCandidateAnswerError  a label that is not a candidate
    │   └── StepBudgetError          agentic mode: no answer within the step budget
    └── UnexpectedError         anything else raised on the way (logged with its traceback)

The re-ranker turns every one of these into a fallback to the vote, with the message as
`fallback_reason` and the class name as `error`; a server can map the class to a status code.
"""

from __future__ import annotations


class RerankError(Exception):
    """Re-ranking failed; `str(exc)` is the human-readable reason."""

    @property
    def reason(self) -> str:
        return str(self)


class NoApiKeyError(RerankError):
    pass


class NothingToRerankError(RerankError):
    pass


class DeadlineExceededError(RerankError, TimeoutError):
    pass


class QuotaExceededError(RerankError):
    pass


class UpstreamError(RerankError):
    pass


class ConnectionFailedError(UpstreamError, ConnectionError):
    pass


class AttemptsTimedOutError(UpstreamError, TimeoutError):
    """Every attempt timed out before the deadline: Gemini slow, not failing (metrics tell the two apart)."""


class CircuitOpenError(RerankError):
    pass


class RequestRejectedError(RerankError):
    pass


class KeyRefusedError(RequestRejectedError):
    """Gemini refused the API key (invalid, leaked, blocked, or its project lacks the API): every request with it
    would be refused too, so the circuit opens at once rather than after `breaker_failures` uploads."""


class InvalidAnswerError(RerankError):
    pass


class NonCandidateAnswerError(InvalidAnswerError):
    pass


class StepBudgetError(InvalidAnswerError):
    pass


class UnexpectedError(RerankError):
    pass
