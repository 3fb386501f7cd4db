"""The fake Gemini server the tests use (it lives in `reranker.testing` so the benchmark can use it too)."""

from reranker.testing import TOKENS_PER_IMAGE, Action, FakeGemini, Recorded, candidates_of

__all__ = ["TOKENS_PER_IMAGE", "Action", "FakeGemini", "Recorded", "candidates_of"]
