"""The Gemini re-ranker against a fake Gemini server on loopback: the real google-genai client over real HTTP.

Each fault ends in the vote with the right reason; retries are counted at the server; the cache,
its invalidation, templates and the agentic loop are checked by what the server received.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_image, random_unit_vectors
from fake_gemini import Action, FakeGemini, candidates_of
from PIL import Image

from prompts import TemplateRegistry, UnknownTemplateError
from reranker import GeminiReranker, RerankNeighbor, RerankOutcome, RerankRequest
from retrieval import Featurizer, FeaturizerSpec, Preprocessing, open_store
from vmem import VisualMemory

COLOURS = {"red": (220, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 220), "yellow": (230, 220, 20)}


# ------------------------------------------------------------------ fixtures


@pytest.fixture
def fake():
    with FakeGemini() as server:
        yield server


@pytest.fixture
def images(tmp_path) -> dict[str, Path]:
    """One small solid-colour JPEG per colour label, on disk (the neighbours' sources)."""
    out = {}
    for name, rgb in COLOURS.items():
        p = tmp_path / f"{name}.jpg"
        p.write_bytes(make_image(rgb, size=(64, 48)))
        out[name] = p
    return out


@pytest.fixture
def make_rr(fake, tmp_path):
    made = []

    def make(**overrides) -> GeminiReranker:
        opts = {"api_key": "test-key", "base_url": fake.url, "cache_path": tmp_path / "rerank.sqlite",
                "backoff_initial_s": 0.01, "backoff_max_s": 0.05, "deadline_s": 5.0, "attempt_timeout_s": 3.0,
                "max_attempts": 3, **overrides}
        rr = GeminiReranker(**opts)
        made.append(rr)
        return rr

    yield make
    for rr in made:
        rr.close()


def request(images, labels=("cat", "dog", "cat"), colours=("red", "green", "blue"), template=None,
            vote="cat", query_rgb=(200, 30, 30), **kw) -> RerankRequest:
    """A query whose vote says `vote`, with neighbours labelled `labels` and imaged in `colours`."""
    neighbors = [RerankNeighbor(id=f"p{i}", label=lab, source=str(images[col]), similarity=0.9 - 0.05 * i,
                                weight=1 / (2 + i), rank=i)
                 for i, (lab, col) in enumerate(zip(labels, colours, strict=True))]
    counts: dict[str, float] = {}
    for n in neighbors:
        counts[n.label] = counts.get(n.label, 0.0) + n.weight
    total = sum(counts.values())
    scores = {k: v / total for k, v in sorted(counts.items(), key=lambda kv: -kv[1])}
    return RerankRequest(image=Image.new("RGB", (80, 60), query_rgb), neighbors=neighbors, scores=scores,
                         vote_label=vote, template=template, **kw)


def decoded_images(body: dict) -> list[Image.Image]:
    out = []
    for content in body["contents"]:
        for part in content["parts"]:
            if "inlineData" in part:
                out.append(Image.open(io.BytesIO(base64.urlsafe_b64decode(part["inlineData"]["data"]))))
    return out


# ------------------------------------------------------------------ the answer


def test_a_candidate_answer_becomes_the_label_not_the_vote(fake, make_rr, images):
    fake.enqueue(fake.answer("dog"))
    out = make_rr().rerank_one(request(images, vote="cat"))
    assert (out.label, out.reranked, out.fallback_reason) == ("dog", True, None)
    assert out.template == "neighbors-v1@1" and out.model == "gemini-3.6-flash"
    assert fake.count == 1 and out.attempts == 1


def test_the_request_constrains_the_answer_to_the_candidates(fake, make_rr, images):
    make_rr(media_resolution="low", thumb_size=32).rerank_one(request(images))
    [req] = fake.requests
    gen = req.body["generationConfig"]
    assert gen["responseMimeType"] == "text/x.enum"
    assert gen["responseSchema"] == {"type": "STRING", "enum": ["cat", "dog"]}
    assert gen["temperature"] == 0.0 and gen["mediaResolution"] == "MEDIA_RESOLUTION_LOW"
    assert req.model == "gemini-3.6-flash" and req.headers["x-goog-api-key"] == "test-key"
    thumbs = decoded_images(req.body)
    assert len(thumbs) == 4  # three neighbours, then the query
    assert all(max(im.size) == 32 for im in thumbs[:3]) and thumbs[0].format == "JPEG"


def test_token_usage_is_reported_per_request_and_summed_per_batch(fake, make_rr, images):
    batch = make_rr(cache=False).rerank_many([request(images), request(images, query_rgb=(1, 2, 3))])
    per = [o.usage for o in batch.outcomes]
    assert all(u.requests == 1 and u.prompt_tokens >= 4 * 258 and u.images == 4 for u in per)
    assert batch.usage.total_tokens == sum(u.total_tokens for u in per) > 0
    assert batch.reranked == 2 and batch.fallbacks == {}


def test_a_thinking_model_s_thoughts_are_not_its_answer_and_their_tokens_are_counted(fake, make_rr, images):
    # A thinking model may send a summary of its thoughts (a part marked `thought`) before the answer.
    fake.enqueue(fake.answer("dog", thoughts="The query is red, like the cats; but its shape is a dog's."))
    out = make_rr().rerank_one(request(images, vote="cat"))
    assert (out.label, out.reranked) == ("dog", True)
    assert out.usage.thinking_tokens > 0 and out.usage.total_tokens > out.usage.prompt_tokens + out.usage.output_tokens


def test_settings_can_come_from_the_environment(fake, images, monkeypatch, tmp_path):
    monkeypatch.setenv("VMEM_GEMINI_MODEL", "gemini-3.8-flash")
    monkeypatch.setenv("VMEM_GEMINI_MEDIA_RESOLUTION", "high")
    rr = GeminiReranker(api_key="k", base_url=fake.url, cache_path=tmp_path / "c.sqlite")
    try:
        assert rr.rerank_one(request(images)).model == "gemini-3.8-flash"
    finally:
        rr.close()
    assert fake.requests[0].model == "gemini-3.8-flash"
    assert fake.requests[0].body["generationConfig"]["mediaResolution"] == "MEDIA_RESOLUTION_HIGH"


def test_the_endpoint_comes_from_GOOGLE_GEMINI_BASE_URL(fake, make_rr, images, monkeypatch):
    monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", fake.url)
    monkeypatch.setenv("GEMINI_API_KEY", "env-key")
    out = make_rr(base_url=None, api_key=None).rerank_one(request(images))
    assert out.reranked and fake.requests[0].headers["x-goog-api-key"] == "env-key"


# ------------------------------------------------------------------ faults end in the vote, with a reason


def test_without_a_key_it_falls_back_without_calling(fake, make_rr, images):
    out = make_rr(api_key=None).rerank_one(request(images, vote="cat"))
    assert (out.label, out.reranked, out.error) == ("cat", False, "NoApiKeyError")
    assert "GEMINI_API_KEY" in out.fallback_reason
    assert fake.count == 0


def test_429_with_retry_delay_is_retried_after_that_delay(fake, make_rr, images):
    fake.enqueue(fake.status(429, retry_delay="0.3s"), fake.answer("dog"))
    out = make_rr().rerank_one(request(images))
    assert out.label == "dog" and out.reranked and out.attempts == 2 and fake.count == 2
    gap = fake.requests[1].at - fake.requests[0].at
    assert gap >= 0.3  # the server's retryDelay, not the 0.01 s backoff


def test_429_until_retries_run_out_is_a_quota_fallback(fake, make_rr, images):
    fake.enqueue(*[fake.status(429)] * 3)
    out = make_rr(max_attempts=3).rerank_one(request(images, vote="cat"))
    assert (out.label, out.reranked, out.error) == ("cat", False, "QuotaExceededError")
    assert "429" in out.fallback_reason and "3 attempt" in out.fallback_reason
    assert fake.count == 3


def test_a_quota_fallback_names_the_quota_google_says_ran_out(fake, make_rr, images):
    # A 51-image prompt is ~14,000 input tokens (more at Gemini 3's default media resolution): a free tier's
    # 250,000 input tokens a minute run out long before its requests a minute, and a daily quota is no wait away.
    per_minute = "GenerateContentInputTokensPerModelPerMinute-FreeTier"
    per_day = "GenerateRequestsPerDayPerProjectPerModel"
    fake.enqueue(fake.status(429, quota=(per_minute, "250000")),
                 fake.status(429, retry_delay="20000s", quota=(per_day + "-FreeTier", "0")))
    out = make_rr(max_attempts=1).rerank_one(request(images))
    assert out.fallback_reason == (f"Gemini quota exceeded (429 RESOURCE_EXHAUSTED; quota {per_minute}, limit 250000) "
                                   "after 1 attempt")
    out = make_rr(max_attempts=2).rerank_one(request(images, query_rgb=(1, 2, 3)))
    assert "quota GenerateRequestsPerDayPerProjectPerModel-FreeTier, limit 0) after 1 attempt; the server asked " \
           "to retry in 20000 s" in out.fallback_reason


def test_a_retry_delay_past_the_deadline_gives_up_at_once(fake, make_rr, images):
    # The server asks for an hour, the deadline is a minute away: the query falls back now, not at the deadline. (A 2 s
    # deadline and a 30 s delay had the same meaning, but a loaded machine's slow reply could eat the 2 s itself.)
    fake.enqueue(fake.status(429, retry_delay="3600s"))
    t0 = time.monotonic()
    out = make_rr(deadline_s=60.0).rerank_one(request(images))
    assert out.error == "QuotaExceededError" and out.fallback_reason.endswith(
        "the server asked to retry in 3600 s, which would pass the 60 s deadline")
    assert fake.count == 1 and time.monotonic() - t0 < 30  # it did not wait: the deadline was 60 s away


def test_a_retry_after_date_is_read_as_a_wait(fake, make_rr, images):
    from email.utils import format_datetime

    # An hour from now, against a 60 s deadline (a 2 s one could pass in a loaded machine's slow reply itself)
    later = format_datetime(datetime.now(UTC) + timedelta(hours=1), usegmt=True)  # HTTP's other Retry-After form
    fake.enqueue(fake.status(429, retry_after=later))
    out = make_rr(deadline_s=60.0).rerank_one(request(images))
    assert out.error == "QuotaExceededError" and "deadline" in out.fallback_reason and fake.count == 1


@pytest.mark.parametrize("finish", ["MAX_TOKENS", "SAFETY"])
def test_an_answer_cut_off_is_no_answer_and_is_not_cached(fake, make_rr, images, finish):
    # "cliff" cut off may have been "cliff dwelling": both can be candidates.
    fake.enqueue(fake.text("dog", finish_reason=finish))
    rr = make_rr()
    out = rr.rerank_one(request(images, vote="cat"))
    assert (out.label, out.reranked) == ("cat", False) and f"finish reason {finish}" in out.fallback_reason
    again = rr.rerank_one(request(images, vote="cat"))
    assert again.reranked and not again.cached and fake.count == 2


def test_a_query_stops_retrying_once_other_failures_open_the_circuit(fake, make_rr, images):
    # Its first attempt failed and it found the circuit closed, so it waits to retry; other queries' failures open
    # the circuit meanwhile. Held where it looked until the test has opened it (not raced against the retry delay).
    import threading

    from reranker import CircuitBreaker

    class OpenedWhileTheQueryWaits(CircuitBreaker):
        looked, opened = threading.Event(), threading.Event()

        @property
        def state(self):
            seen = super().state
            if fake.count == 1 and not self.looked.is_set():  # its first attempt failed: does it retry?
                self.looked.set()
                assert self.opened.wait(30)
            return seen

    fake.enqueue(*[fake.status(503, retry_delay="1s")] * 4)
    rr = make_rr(max_attempts=4, deadline_s=20.0, breaker_failures=1)
    rr.breaker = breaker = OpenedWhileTheQueryWaits(rr.settings.breaker_failures, rr.settings.breaker_cooldown_s)
    done: list = []
    asking = threading.Thread(target=lambda: done.append(rr.rerank_one(request(images))))
    asking.start()
    assert breaker.looked.wait(30) and breaker.state == "closed"  # it will retry, after the server's delay
    breaker.failure(breaker.acquire(), "another query's failures")  # the circuit opens meanwhile
    breaker.opened.set()
    asking.join(30)
    assert not done[0].reranked and fake.count == 1  # no second attempt into an open circuit


@pytest.mark.parametrize("code", [500, 503])
def test_server_errors_are_retried(fake, make_rr, images, code):
    fake.enqueue(fake.status(code), fake.answer("dog"))
    out = make_rr().rerank_one(request(images))
    assert out.label == "dog" and out.attempts == 2 and fake.count == 2


def test_server_errors_until_retries_run_out_fall_back(fake, make_rr, images):
    fake.enqueue(*[fake.status(503)] * 3)
    out = make_rr(max_attempts=3).rerank_one(request(images))
    assert out.error == "UpstreamError" and "503" in out.fallback_reason and fake.count == 3


def test_the_fake_answers_from_its_responder_and_says_when_the_responder_fails(fake, make_rr, images):
    # A VLM simulated per request: it reads the candidates the request allows and picks the vote's last
    fake.responder = lambda body: fake.answer(candidates_of(body)[-1])
    out = make_rr().rerank_one(request(images, vote="cat"))
    assert out.reranked and out.label == candidates_of(fake.requests[0].body)[-1] != "cat"
    # A responder that fails is a 500 (its body names the error), not a connection dropped without a word
    fake.responder = lambda body: {}["no such query"]
    out = make_rr(max_attempts=1, cache=False).rerank_one(request(images, vote="cat"))
    assert not out.reranked and out.fallback_reason == (
        "Gemini unavailable (500 INTERNAL: the fake's responder failed: KeyError('no such query')) after 1 attempt")


def test_a_server_error_falls_back_saying_what_the_server_said_of_it(fake, make_rr, images):
    fake.enqueue(fake.status(503, message="The model is overloaded. Please try again later."))
    out = make_rr(max_attempts=1).rerank_one(request(images))
    assert out.error == "UpstreamError" and out.fallback_reason == (
        "Gemini unavailable (503 UNAVAILABLE: The model is overloaded. Please try again later.) after 1 attempt")
    fake.enqueue(fake.page(502, "<html><title>502 Bad Gateway</title></html>"))  # a proxy's page, not Gemini's
    out = make_rr(max_attempts=1, cache=False).rerank_one(request(images))
    assert out.fallback_reason == ("Gemini unavailable (502 Bad Gateway: the reply is not Gemini's (a proxy on the "
                                   "way?): '502 Bad Gateway') after 1 attempt")


def test_a_client_error_is_not_retried(fake, make_rr, images):
    fake.enqueue(fake.status(400))
    out = make_rr().rerank_one(request(images))
    assert out.error == "RequestRejectedError" and "400" in out.fallback_reason and fake.count == 1


def test_an_error_page_from_a_proxy_is_told_in_a_line_not_pasted_whole(fake, make_rr, images):
    # A proxy (or a wrong base_url) answers with HTML, not Google's JSON error: the reason, which answers and logs
    # carry, had the whole page in it (3 KB here; a real block page is often tens of KB).
    page = ("<!DOCTYPE html><html><head><title>Access denied &amp; logged</title><style>" + "p{color:red}" * 250
            + "</style></head><body><h1>Access denied</h1><p>Your request was blocked by the proxy.</p></body></html>")
    fake.enqueue(fake.page(403, page), fake.page(413, "<html><body><h1>413 Request Entity Too Large</h1>"
                                                     "<hr><center>nginx</center></body></html>"))
    rr = make_rr()
    out = rr.rerank_one(request(images))
    assert out.error == "RequestRejectedError" and out.fallback_reason == (
        "Gemini rejected the request (403 Forbidden): the reply is not Gemini's (a proxy on the way?): "
        "'Access denied & logged'")
    out = rr.rerank_one(request(images))
    assert out.fallback_reason.endswith("'413 Request Entity Too Large nginx'")
    fake.enqueue(fake.page(200, "<html><head><title>Sign in to the hotel network</title></head><body>" + "x" * 3000))
    out = rr.rerank_one(request(images))
    assert out.error == "InvalidAnswerError" and out.fallback_reason == (
        "Gemini's reply could not be parsed (not JSON: 'Sign in to the hotel network')")


def test_a_key_gemini_refuses_says_which_key_to_check(fake, make_rr, images, monkeypatch):
    # Google answers a bad key with 400 INVALID_ARGUMENT and an ErrorInfo reason API_KEY_INVALID (not a 401).
    fake.enqueue(fake.status(400, message="API key not valid. Please pass a valid API key.", reason="API_KEY_INVALID"))
    monkeypatch.setenv("GEMINI_API_KEY", "revoked")
    monkeypatch.setenv("GOOGLE_API_KEY", "the-one-other-tools-use")  # the SDK's own choice when both are set
    out = make_rr(api_key=None).rerank_one(request(images))
    assert out.error == "KeyRefusedError" and fake.count == 1  # not retried
    assert out.fallback_reason == ("Gemini rejected the request (400 INVALID_ARGUMENT): API key not valid. Please "
                                   "pass a valid API key. Check the key in GEMINI_API_KEY (GOOGLE_API_KEY is set "
                                   "too, but GEMINI_API_KEY comes first)")
    fake.enqueue(fake.status(403, message="Your API key was reported as leaked. Please use another API key."))
    out = make_rr().rerank_one(request(images))
    assert out.fallback_reason.endswith("Check the key given as api_key")


def test_fallbacks_are_warned_of_once_a_minute_per_kind_saying_how_many_came_between(fake, make_rr, images,
                                                                                    caplog):
    # At INFO they were invisible by default: a revoked key made every re-rank the vote, and nothing said so.
    from reranker import _gemini

    clock = [1000.0]
    rr = make_rr(max_attempts=1)
    rr._log_fallback = _gemini._FallbackLog(clock=lambda: clock[0])
    # Refusals of the request, not of the key (a refused key opens the circuit: a test below)
    fake.enqueue(*[fake.status(400, message="Request payload size exceeds the limit")] * 3, fake.status(400))
    with caplog.at_level("WARNING", logger="reranker"):
        for seconds in (0, 1, 2):
            clock[0] += seconds
            assert rr.rerank_one(request(images)).error == "RequestRejectedError"
        clock[0] += _gemini.FALLBACK_WARNING_EVERY_S
        rr.rerank_one(request(images))
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 2 and "payload size" in warned[0] and "(2 more RequestRejectedError since" in warned[1]


def test_a_hang_past_the_deadline_falls_back_in_time(fake, make_rr, images):
    # The hang lasts an hour and the attempt's timeout is longer than the deadline: only the deadline can end the
    # query, which falls back the moment it passes (3 s, time enough to send the call on a loaded machine: at 0.6 s the
    # query's own JPEG encoding could use it up, and no call was made)
    rr = make_rr(deadline_s=3.0, attempt_timeout_s=30.0)
    # A reranker's first query also starts its loop and makes its client: on a loaded machine its call reached the
    # fake 0.3 to 3.4 s after the query began, past the deadline once (later still, no call is sent: nothing hangs
    # and the count is 0); its next query's, within 0.1 s. So a query answered first (another image, not answered
    # from the cache), then the hanging one.
    fake.enqueue(fake.answer("dog"))
    assert rr.rerank_one(request(images, vote="cat", query_rgb=(30, 200, 30))).label == "dog"
    fake.reset()
    fake.enqueue(fake.hang(3600))
    t0 = time.monotonic()
    out = rr.rerank_one(request(images, vote="cat"))
    elapsed = time.monotonic() - t0
    assert (out.label, out.reranked, out.error) == ("cat", False, "DeadlineExceededError")
    assert out.fallback_reason == "no answer within the 3 s deadline (1 attempt)"
    assert elapsed > 2.9  # it waited for the deadline, no more: the hang ends an hour later
    assert fake.count == 1  # no time left for a second attempt


def test_a_slow_attempt_is_retried_within_the_deadline(fake, make_rr, images):
    # The hang lasts an hour: only the attempt's timeout ends it. The answering attempt must end within the attempt's
    # time: 5 s, where a loaded 2-core machine took up to 0.19 s and CI's more than 0.4 s (0.3 s, then 2 s within a
    # 5 s deadline, had been too close to that)
    fake.enqueue(fake.hang(3600), fake.answer("dog"))
    out = make_rr(deadline_s=60.0, attempt_timeout_s=5.0).rerank_one(request(images))
    assert out.label == "dog" and out.attempts == 2 and fake.count == 2


def test_every_attempt_timing_out_before_the_deadline_is_told_from_a_failing_gemini(fake, make_rr, images):
    # Both had been UpstreamError: an operator's metrics could not tell a slow Gemini from a failing one
    fake.enqueue(*[fake.hang(10)] * 2)
    out = make_rr(deadline_s=5.0, attempt_timeout_s=0.2, max_attempts=2).rerank_one(request(images, vote="cat"))
    assert (out.label, out.error) == ("cat", "AttemptsTimedOutError")
    assert out.fallback_reason == "Gemini timed out on all 2 attempts"
    # Failing, then slow at the last attempt: failing (decided by the last attempt, it had been "slow"). The 503s must
    # come back within the attempt's time, as the slow test's answer must. Asked of a server of its own: an attempt
    # above timed out before its request was sent (0.2 s is spent building it under load) leaves its hang in the
    # first server's script, and one sent late takes the first reply scripted after it, whatever the test meant.
    with FakeGemini() as failing:
        failing.enqueue(failing.status(503), failing.status(503), failing.hang(3600))
        out = make_rr(base_url=failing.url, deadline_s=60.0, attempt_timeout_s=5.0, max_attempts=3).rerank_one(
            request(images, vote="cat"))
        assert out.error == "UpstreamError" and "1 timed out, the last among them; 2 failed" in out.fallback_reason


def test_malformed_json_is_an_unparseable_answer(fake, make_rr, images):
    fake.enqueue(fake.malformed())
    out = make_rr().rerank_one(request(images, vote="cat"))
    assert (out.label, out.error) == ("cat", "InvalidAnswerError") and "parsed" in out.fallback_reason
    assert fake.count == 1


def test_no_candidates_in_the_reply_is_an_unparseable_answer(fake, make_rr, images):
    fake.enqueue(fake.empty())
    out = make_rr().rerank_one(request(images))
    assert out.error == "InvalidAnswerError" and "no answer" in out.fallback_reason


def test_a_prompt_gemini_refuses_says_why_in_gemini_s_words(fake, make_rr, images):
    fake.enqueue(fake.blocked("PROHIBITED_CONTENT"))
    out = make_rr().rerank_one(request(images, vote="cat"))
    assert (out.label, out.error) == ("cat", "InvalidAnswerError")
    assert out.fallback_reason == "Gemini returned no answer (blocked: PROHIBITED_CONTENT)"  # not BlockedReason.PRO...


def test_a_label_that_is_not_a_candidate_is_refused(fake, make_rr, images):
    fake.enqueue(fake.text("giraffe"))
    out = make_rr().rerank_one(request(images, vote="cat"))
    assert (out.label, out.reranked, out.error) == ("cat", False, "NonCandidateAnswerError")
    assert "'giraffe'" in out.fallback_reason
    assert out.usage.requests == 1 and out.usage.total_tokens > 0  # the tokens were spent all the same


def test_free_text_is_not_mistaken_for_a_label(fake, make_rr, images):
    fake.enqueue(fake.text("I think it is a dog"))
    out = make_rr().rerank_one(request(images))
    assert out.label == "cat" and out.error == "NonCandidateAnswerError"


@pytest.mark.parametrize("said", ["Bullfrog", " bullfrog.", "BULLFROG!", "bullfrog:"])
def test_an_answer_in_another_case_or_closed_as_a_sentence_names_its_candidate(fake, make_rr, images, said):
    # A Gemini-compatible endpoint that ignores the schema's enum writes the label as a sentence: it had fallen back
    # to the vote ("Gemini answered 'Bullfrog', which is not one of the 2 candidate labels").
    fake.enqueue(fake.text(said))
    out = make_rr().rerank_one(request(images, labels=("cliff", "bullfrog", "cliff"), vote="cliff"))
    assert (out.label, out.reranked, out.error) == ("bullfrog", True, None)


@pytest.mark.parametrize(("labels", "said"), [
    (("cliff dwelling", "bullfrog", "cliff dwelling"), "cliff"),  # a part of a label names none
    (("cliff dwelling", "bullfrog", "cliff dwelling"), "Cliff."),
    (("Cat", "cat", "bullfrog"), "CAT"),  # two labels read alike: which one is not guessed
    (("cliff", "bullfrog", "cliff"), "bullfrogs"),
])
def test_an_answer_that_reads_as_no_single_candidate_is_still_refused(fake, make_rr, images, labels, said):
    fake.enqueue(fake.text(said))
    out = make_rr().rerank_one(request(images, labels=labels, vote=labels[0]))
    assert (out.label, out.reranked, out.error) == (labels[0], False, "NonCandidateAnswerError")


def test_an_agentic_answer_in_another_case_names_its_candidate(fake, make_rr, images, store):
    s, *_ = store
    req = agentic_request(images, store)
    other = next(n.label for n in req.neighbors if n.label != req.vote_label)
    fake.enqueue(fake.call("answer", label=f" {other.upper()}."))
    out = make_rr().rerank_one(req, store=s)
    assert (out.label, out.reranked, out.error) == (other, True, None)


def test_an_unreachable_endpoint_is_a_connection_fallback(make_rr, images):
    closed = FakeGemini()  # bound, never started, then closed: the port refuses connections
    url = closed.url
    closed._server.server_close()
    out = make_rr(base_url=url, max_attempts=2).rerank_one(request(images))
    assert out.error == "ConnectionFailedError" and url in out.fallback_reason and out.attempts == 2
    # Through a proxy that takes a user and password: the reason (which answers and logs carry) leaves them out.
    with_secret = url.replace("http://", "http://proxyuser:PROXYSECRET@")
    out = make_rr(base_url=with_secret, max_attempts=1).rerank_one(request(images))
    assert out.error == "ConnectionFailedError" and url in out.fallback_reason
    assert "PROXYSECRET" not in out.fallback_reason and "proxyuser" not in out.fallback_reason


def test_an_error_nobody_foresaw_is_still_a_fallback_that_says_what_it_was(make_rr, images, monkeypatch, caplog):
    import reranker._gemini

    def broken(*args, **kwargs):  # as a transport the SDK picked on its own (aiohttp's) would raise
        raise RuntimeError("Cannot connect to host http://u:secret@127.0.0.1:1/")

    monkeypatch.setattr(reranker._gemini, "build_prompt", broken)
    rr = make_rr()
    out = rr.rerank_one(request(images))
    assert (out.label, out.reranked, out.error) == ("cat", False, "UnexpectedError")
    assert out.fallback_reason == ("re-ranking failed unexpectedly (RuntimeError: Cannot connect to host "
                                   "http://127.0.0.1:1/)")
    assert "re-ranking failed unexpectedly" in caplog.text and "Traceback" in caplog.text


def test_a_single_candidate_needs_no_call(fake, make_rr, images):
    out = make_rr().rerank_one(request(images, labels=("cat", "cat", "cat")))
    assert out.error == "NothingToRerankError" and "only one candidate" in out.fallback_reason
    assert fake.count == 0
    named = make_rr().rerank_one(request(images, labels=("n02123045",) * 3, vote="n02123045",
                                         label_names={"n02123045": "tabby"}))
    assert named.fallback_reason == "only one candidate label (n02123045 'tabby'): nothing to re-rank"


def test_a_lone_candidate_is_named_in_the_reason_as_a_label_is_shown(fake, make_rr, images):
    # The reason is shown as it is (the page's "vote used: ...", the CLI's [fallback: ...]): a label holding U+202E
    # RIGHT-TO-LEFT OVERRIDE turned the rest of it backwards, and repr escaped a Persian name's joiner that shows
    out = make_rr().rerank_one(request(images, labels=("\u202etac",) * 3, vote="\u202etac",
                                       label_names={"\u202etac": "نیم\u200cرخ"}))
    assert out.fallback_reason == "only one candidate label (\\u202etac 'نیم\u200cرخ'): nothing to re-rank"


# ------------------------------------------------------------------ cache


def test_a_cache_hit_makes_no_http_call(fake, make_rr, images):
    fake.enqueue(fake.answer("dog"))
    rr = make_rr()
    first = rr.rerank_one(request(images))
    again = rr.rerank_one(request(images))
    assert fake.count == 1
    assert (again.label, again.reranked, again.cached, again.attempts) == ("dog", True, True, 0)
    assert again.usage.total_tokens == 0 and first.usage.total_tokens > 0


def test_a_cache_the_disk_takes_no_more_of_leaves_gemini_s_answer_standing(fake, make_rr, images, monkeypatch):
    # A full disk under the cache's SQLite file had turned every answered re-rank into a 500.
    import sqlite3

    from reranker import AnswerCache

    def disk_full(*args, **kwargs):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(AnswerCache, "put", disk_full)
    fake.enqueue(fake.answer("dog"))
    answer = make_rr().rerank_one(request(images))
    assert (answer.label, answer.reranked, answer.cached) == ("dog", True, False)


def test_the_cache_survives_a_restart(fake, make_rr, images):
    fake.enqueue(fake.answer("dog"))
    make_rr().rerank_one(request(images))
    out = make_rr().rerank_one(request(images))  # a new re-ranker on the same cache file
    assert out.cached and out.label == "dog" and fake.count == 1


@pytest.mark.parametrize("change", [
    {"query_rgb": (0, 0, 0)},
    {"labels": ("cat", "dog", "dog")},
    {"colours": ("red", "blue", "green")},  # same ids, same labels, other images: same key (ids decide)
])
def test_the_cache_key_follows_the_query_and_neighbours(fake, make_rr, images, change):
    rr = make_rr()
    rr.rerank_one(request(images))
    rr.rerank_one(request(images, **change))
    expect_new_call = "colours" not in change
    assert fake.count == (2 if expect_new_call else 1)


def test_settings_and_model_are_part_of_the_cache_key(fake, make_rr, images):
    make_rr().rerank_one(request(images))
    make_rr(thumb_size=64).rerank_one(request(images))
    make_rr(model="gemini-3.8-flash").rerank_one(request(images))
    assert fake.count == 3 and fake.requests[2].model == "gemini-3.8-flash"


def test_a_thinking_level_is_sent_only_when_set_and_then_keys_its_own_answers(fake, make_rr, images):
    # Gemini 3 Flash thinks at MEDIUM unless told: a one-label answer may want LOW (faster, cheaper). A model
    # without thinking levels refuses the field, so it is not sent unless set.
    make_rr().rerank_one(request(images))
    make_rr(thinking_level="low").rerank_one(request(images))
    make_rr(thinking_level="low").rerank_one(request(images))  # answered from the cache
    unset, low = (req.body["generationConfig"] for req in fake.requests)
    # The SDK writes the field's proto name (as it does inlineData's mime_type); proto JSON takes either spelling
    assert "thinkingConfig" not in unset and low["thinkingConfig"] in ({"thinkingLevel": "LOW"},
                                                                      {"thinking_level": "LOW"})
    assert fake.count == 2


def test_the_default_settings_key_answers_as_before_the_thinking_level_existed():
    from reranker import GeminiSettings

    assert "thinking_level" not in GeminiSettings().key_settings()
    assert GeminiSettings(thinking_level="high").key_settings()["thinking_level"] == "high"


def test_vote_scores_the_prompt_shows_are_part_of_the_cache_key(fake, make_rr, images):
    # Same query, same neighbours, but another vote rule (alpha, tau) gave other scores: labels-only shows
    # them ("vote 0.67"), and they order the candidates, so it is another prompt and needs its own answer.
    fake.enqueue(fake.answer("cat"), fake.answer("dog"))
    rr = make_rr()
    first = rr.rerank_one(request(images, template="labels-only"))
    other = request(images, template="labels-only")
    other.scores = {"dog": 0.55, "cat": 0.45}
    second = rr.rerank_one(other)
    assert fake.count == 2 and (first.label, second.label) == ("cat", "dog")
    assert second.candidates == ["dog", "cat"] and not second.cached


def with_user_template(rr, tmp_path, name: str, yaml_rest: str):
    """`rr` reading templates from a folder of the user's, with this one template in it."""
    (tmp_path / "tpl").mkdir(exist_ok=True)
    (tmp_path / "tpl" / f"{name}.yaml").write_text(f"name: {name}\n{yaml_rest}")
    rr._registry = TemplateRegistry(tmp_path / "tpl")
    return rr


def test_weights_a_template_prints_are_part_of_the_cache_key(fake, make_rr, images, tmp_path):
    # The softmax vote at two temperatures: the same neighbours and shares, but the template prints other weights
    # (4.54e-05, then 2.06e-09), which 3 decimals had keyed alike (0.000).
    rr = with_user_template(make_rr(), tmp_path, "weighed",
                            "version: 1\nsystem: Classify.\nneighbor: '$rank $label weight $weight'\n")
    for tau in (0.01, 0.005):
        req = request(images, template="weighed")
        for n in req.neighbors:
            n.weight = float(np.exp((n.similarity - 1) / tau))
        rr.rerank_one(req)
    assert fake.count == 2
    assert "1 cat weight 4.54e-05" in fake.requests[0].texts and "1 cat weight 2.06e-09" in fake.requests[1].texts


def test_fallbacks_are_not_cached(fake, make_rr, images):
    fake.enqueue(fake.status(400), fake.answer("dog"))
    rr = make_rr()
    assert not rr.rerank_one(request(images)).reranked
    assert rr.rerank_one(request(images)).label == "dog" and fake.count == 2


def test_invalidating_a_cited_point_drops_the_answer(fake, make_rr, images):
    rr = make_rr()
    rr.rerank_one(request(images))
    assert rr.invalidate(["not-cited"]) == 0
    assert rr.invalidate(["p2"]) == 1
    rr.rerank_one(request(images))
    assert fake.count == 2


# ------------------------------------------------------------------ templates


def test_swapping_the_template_changes_the_request(fake, make_rr, images):
    rr = make_rr()
    rr.rerank_one(request(images, template="neighbors-v1"))
    rr.rerank_one(request(images, template="labels-only"))
    full, cheap = fake.requests
    assert full.images == 4 and cheap.images == 1  # labels-only sends the query alone
    assert full.body["systemInstruction"] != cheap.body["systemInstruction"]
    assert any("vote 0.6" in t for t in cheap.texts) and not any("Example 1" in t for t in cheap.texts)


def test_a_user_template_is_chosen_by_name(fake, make_rr, images, tmp_path):
    rr = with_user_template(make_rr(), tmp_path, "terse",
                            "version: 2\nsystem: Classify.\nneighbor: '#$rank $label'\nneighbor_images: false\n")
    out = rr.rerank_one(request(images, template="terse"))
    assert out.template == "terse@2" and fake.requests[0].images == 1
    assert "#1 cat" in fake.requests[0].texts


def test_an_unknown_template_is_an_error_listing_the_available_ones(fake, make_rr, images):
    with pytest.raises(UnknownTemplateError, match="available: agentic-v1, labels-only, neighbors-v1"):
        make_rr().rerank_one(request(images, template="nope"))
    assert fake.count == 0


def test_an_unknown_template_is_refused_before_any_image_is_embedded(fake, make_rr, lite0, tmp_path, monkeypatch):
    mem = VisualMemory(open_store(tmp_path / "memory", lite0.spec), lite0, reranker=make_rr())
    mem.add([make_image((200, 0, 0)), make_image((0, 0, 200))], ["red", "blue"])
    embedded = []
    # Through monkeypatch: `lite0` is the session's encoder, and a patch left on it broke later tests' embedding
    monkeypatch.setattr(mem.featurizer, "embed_many", lambda *a, **k: embedded.append(a))  # minutes for a folder
    (tmp_path / "q.png").write_bytes(make_image((190, 0, 0)))
    with pytest.raises(UnknownTemplateError, match="'nope'"):
        mem.classify_many([tmp_path / "q.png"], rerank=True, template="nope")
    assert embedded == [] and fake.count == 0
    mem.close()


# ------------------------------------------------------------------ thumbnails


def test_a_missing_neighbour_image_is_shown_by_label_and_noted(fake, make_rr, images):
    blue = images["blue"].read_bytes()
    images["blue"].unlink()
    rr = make_rr()
    out = rr.rerank_one(request(images))
    assert out.reranked and fake.requests[0].images == 3
    [note] = out.trace
    assert note["event"] == "neighbor_label_only" and note["id"] == "p2" and "missing" in note["reason"]
    assert any("image unavailable" in t for t in fake.requests[0].texts)
    # That answer is not kept: with the image back, the full prompt is asked, not the lesser one's answer served.
    images["blue"].write_bytes(blue)
    again = rr.rerank_one(request(images))
    assert not again.cached and fake.count == 2 and fake.requests[1].images == 4
    assert rr.rerank_one(request(images)).cached  # the full prompt's answer is


def test_shared_neighbours_are_decoded_once(fake, make_rr, images):
    rr = make_rr(cache=False)
    rr.rerank_many([request(images, query_rgb=(i, i, i)) for i in range(4)])
    assert rr.thumbnails.stats.decodes == 3 and rr.thumbnails.stats.hits == 9


def test_a_batch_keeps_at_most_concurrency_requests_in_flight(fake, make_rr, images):
    import threading

    # Each call is answered once the next one has arrived (the last at once), so two meet in flight however slowly the
    # batch sends them; a 0.1 s reply had left it to a loaded machine to send the second within that time.
    arrived = 0
    next_arrived = threading.Condition()

    def answer_once_the_next_call_arrives(body: dict) -> Action:
        nonlocal arrived
        with next_arrived:
            arrived += 1
            mine = arrived
            next_arrived.notify_all()
            next_arrived.wait_for(lambda: arrived > mine or arrived == 6, timeout=60)
        return fake.answer(candidates_of(body)[0])

    fake.responder = answer_once_the_next_call_arrives
    rr = make_rr(cache=False, concurrency=2, deadline_s=120.0, attempt_timeout_s=90.0)
    batch = rr.rerank_many([request(images, query_rgb=(i, 0, 0)) for i in range(6)])
    assert batch.reranked == 6 and fake.count == 6 and fake.max_in_flight == 2


def test_an_interrupt_stops_the_batch_s_requests_not_only_the_wait_for_them(fake, make_rr, images):
    import signal
    import threading

    # Ctrl-C, or a notebook's interrupt, during a re-ranked batch: every remaining request had still been sent
    # (and billed) in the background, until the process ended or the memory was closed.
    # The first two calls are held (an hour's hang), so the batch is interrupted with exactly those two sent, however
    # slowly it goes (with 0.3 s replies, a loaded machine had sent more before the interrupt took effect)
    fake.enqueue(*[fake.hang(3600)] * 20)
    rr = make_rr(cache=False, concurrency=2, deadline_s=30.0, attempt_timeout_s=20.0)
    main = threading.main_thread().ident

    def interrupt_once_requests_are_in_flight() -> None:
        deadline = time.monotonic() + 20
        while fake.count < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        signal.pthread_kill(main, signal.SIGINT)

    # Python's own Ctrl-C handler, whatever the suite was started with: a run started in the background by a
    # shell (`bash -c 'time ...' &`) ignores SIGINT, and the interrupt never came (the CI rehearsal's one failure)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        threading.Thread(target=interrupt_once_requests_are_in_flight, daemon=True).start()
        with pytest.raises(KeyboardInterrupt):
            rr.rerank_many([request(images, query_rgb=(i, 0, 0)) for i in range(20)])
    finally:
        signal.signal(signal.SIGINT, previous)
    sent = fake.count
    # Let the held calls go: a batch still running would now send the rest. Once the re-ranker's loop holds no task
    # (the batch's were cancelled, or had run to the end), the count says which.
    fake.release_hangs()

    async def tasks_left() -> int:
        return len(asyncio.all_tasks()) - 1  # less this one

    deadline = time.monotonic() + 60
    while asyncio.run_coroutine_threadsafe(tasks_left(), rr._loop.loop).result(60) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sent == 2 and fake.count == sent


def test_the_async_api_runs_from_any_event_loop(fake, make_rr, images):
    rr = make_rr()

    async def caller():
        return await rr.arerank_many([request(images)])

    assert asyncio.run(caller()).outcomes[0].reranked


# ------------------------------------------------------------------ agentic mode


@pytest.fixture
def store(images):
    """A real Qdrant (local mode) memory of 8 points, two per colour label, sources on disk."""
    spec = FeaturizerSpec(name="dummy", dim=8, preprocessing=Preprocessing(resize=32, crop=32))
    s = open_store(":memory:", spec)
    vecs = random_unit_vectors(8, 8, seed=1)
    labels = [lab for lab in COLOURS for _ in range(2)]
    sources = [str(images[lab]) if i % 2 == 0 else f"{images[lab]}.missing" for i, lab in enumerate(labels)]
    ids = s.add(vecs, labels, sources)
    yield s, vecs, ids, labels
    s.close()


def agentic_request(images, store, **kw) -> RerankRequest:
    s, vecs, ids, labels = store
    nbrs = s.query(vecs[0], 3)
    req = request(images, labels=tuple(n.label for n in nbrs), colours=("red", "green", "blue"),
                  template="agentic-v1", vector=vecs[0], vote=nbrs[0].label, **kw)
    for r, n in zip(req.neighbors, nbrs, strict=True):
        r.id = n.id
    return req


def test_agentic_mode_runs_the_tools_then_answers(fake, make_rr, images, store):
    s, vecs, ids, labels = store
    req = agentic_request(images, store)
    other = next(c for c in req.scores if c != req.vote_label)
    unseen = next(c for c in COLOURS if c not in req.scores)
    fake.enqueue(fake.call("exemplars", label=other, n=2), fake.call("more_neighbors", k=8), fake.answer(unseen))
    out = make_rr().rerank_one(req, store=s)
    tools = [t["tool"] for t in out.trace]
    assert tools == ["exemplars", "more_neighbors", "answer"]
    ex, more, _ = out.trace
    assert ex["returned"] == 2 and set(ex["ids"]) == {i for i, lab in zip(ids, labels, strict=True) if lab == other}
    assert more["returned"] == 5  # 8 nearest minus the 3 already shown
    # `unseen` was no neighbour's label: more_neighbors made it a candidate, so the answer stands
    assert (out.label, out.reranked) == (unseen, True) and unseen in out.candidates
    # the tool results went back to Gemini as function responses carrying the images that exist
    second = fake.requests[1].body["contents"]
    reply = second[-1]["parts"][0]["functionResponse"]
    assert reply["name"] == "exemplars" and len(reply["parts"]) == ex["images"] == 1
    assert second[-2]["role"] == "model" and "functionCall" in second[-2]["parts"][0]
    assert fake.requests[0].function_names == ["answer", "exemplars", "more_neighbors"]
    # every point a tool showed is cited: forgetting any of them drops the cached answer
    rr = make_rr()
    assert rr.invalidate([more["ids"][-1]]) == 1


def test_more_neighbors_rows_are_captioned_as_the_prompt_s_neighbours_not_as_exemplars(fake, make_rr, images, store):
    # Every row more_neighbors returned was captioned 'Exemplar 1 of "red"', as the exemplars tool's are: the model,
    # told exemplars are memory images of one candidate label, read the query's next neighbours as chosen examples
    # of their label. They continue the prompt's list: 'Example 4, labelled "red" ...' after Examples 1-3.
    s, *_ = store
    req = agentic_request(images, store)
    other = next(c for c in req.scores if c != req.vote_label)
    fake.enqueue(fake.call("more_neighbors", k=8), fake.call("exemplars", label=other, n=1), fake.answer(other))
    out = make_rr().rerank_one(req, store=s)
    assert [t["tool"] for t in out.trace] == ["more_neighbors", "exemplars", "answer"]
    prompt = "\n".join(fake.requests[0].texts)
    assert 'Example 3, labelled "' in prompt and "Example 4" not in prompt  # the three neighbours shown
    more = fake.requests[1].body["contents"][-1]["parts"][0]["functionResponse"]["response"]["neighbors"]
    for row in more:
        assert re.fullmatch(rf'Example {row["rank"]}, labelled "{row["label"]}" \(similarity -?\d\.\d{{3}}\):',
                            row["caption"]), row
    assert [row["rank"] for row in more] == [4, 5, 6, 7, 8]
    [exemplar] = fake.requests[2].body["contents"][-1]["parts"][0]["functionResponse"]["response"]["exemplars"]
    assert exemplar["caption"].startswith(f'Exemplar 1 of "{other}" (similarity ')


def test_a_cached_agentic_answer_is_not_served_once_a_point_a_tool_showed_is_gone(fake, make_rr, images, store):
    # `vmem forget` (or another process) deletes points without this re-ranker attached, so no
    # invalidate() reaches the cache; the point was no neighbour, so the cache key is unchanged.
    s, *_ = store
    fake.enqueue(fake.call("more_neighbors", k=8), fake.answer("red"))
    rr = make_rr()
    first = rr.rerank_one(agentic_request(images, store), store=s)
    gone = first.trace[0]["ids"][0]  # shown by the tool, not among the neighbours
    assert rr.rerank_one(agentic_request(images, store), store=s).cached  # nothing forgotten yet
    s.delete_ids([gone])
    again = rr.rerank_one(agentic_request(images, store), store=s)
    assert not again.cached and again.attempts >= 1 and fake.count == 3


def test_a_cached_agentic_answer_is_not_served_once_its_exemplars_would_differ(fake, make_rr, images, store):
    # A point added since, close to the query and of the label the exemplars tool was asked for, would be
    # among its exemplars now. The request (its neighbours, so the cache key) is the same: the search is run again.
    s, vecs, ids, labels = store
    req = agentic_request(images, store)
    other = next(c for c in req.scores if c != req.vote_label)
    rr = make_rr()
    fake.enqueue(fake.call("exemplars", label=other, n=2), fake.answer(other))
    rr.rerank_one(req, store=s)
    assert rr.rerank_one(req, store=s).cached  # the memory is as it was

    near = vecs[0] + 0.01 * vecs[1]
    s.add((near / np.linalg.norm(near))[None], [other], [f"{images[other]}.near"])
    fake.enqueue(fake.call("exemplars", label=other, n=2), fake.answer(other))
    again = rr.rerank_one(req, store=s)
    assert not again.cached and fake.count == 4
    assert again.trace[0]["ids"][0] not in ids  # the new point is an exemplar now
    assert rr.rerank_one(req, store=s).cached  # the new answer is kept in its place


def test_a_cached_agentic_answer_is_not_served_once_a_point_a_tool_showed_is_relabelled(fake, make_rr, images,
                                                                                         store):
    s, *_ = store
    fake.enqueue(fake.call("more_neighbors", k=8), fake.answer("red"))
    rr = make_rr()
    shown = rr.rerank_one(agentic_request(images, store), store=s).trace[0]
    s.relabel([shown["ids"][0]], "purple")
    again = rr.rerank_one(agentic_request(images, store), store=s)
    assert not again.cached and fake.count == 3


def test_the_answer_cache_tells_endpoints_apart(fake, make_rr, images):
    # A proxy or a compatible server may answer to the same model name with another model.
    with FakeGemini() as elsewhere:
        first, second = make_rr(), make_rr(base_url=elsewhere.url)
        assert first.rerank_one(request(images)).reranked and fake.count == 1
        assert first.rerank_one(request(images)).cached
        assert not second.rerank_one(request(images)).cached and elsewhere.count == 1


def test_the_agentic_step_budget_is_enforced(fake, make_rr, images, store):
    s, *_ = store
    req = agentic_request(images, store)
    fake.enqueue(*[fake.call("more_neighbors", k=4)] * 5)
    out = make_rr().rerank_one(req, store=s)
    assert out.error == "StepBudgetError" and "budget of 3" in out.fallback_reason
    assert out.label == req.vote_label and not out.reranked
    assert fake.count == 4  # three tool rounds, then one request that may only answer
    assert fake.requests[3].function_names == ["answer"]
    assert fake.requests[3].body["toolConfig"]["functionCallingConfig"]["allowedFunctionNames"] == ["answer"]
    assert [t["tool"] for t in out.trace] == ["more_neighbors"] * 3


def test_an_agentic_answer_outside_the_candidates_is_refused(fake, make_rr, images, store):
    s, *_ = store
    fake.enqueue(fake.call("answer", label="giraffe"))
    out = make_rr().rerank_one(agentic_request(images, store), store=s)
    assert out.error == "NonCandidateAnswerError"


@pytest.mark.parametrize(("reply", "why"), [
    (FakeGemini.blocked("SAFETY"), "Gemini returned no answer (blocked: SAFETY)"),
    (FakeGemini.stopped("MALFORMED_FUNCTION_CALL"), "finish reason MALFORMED_FUNCTION_CALL"),
    (FakeGemini.stopped("SAFETY"), "finish reason SAFETY"),
])
def test_an_agentic_reply_without_a_call_says_why_gemini_made_none(fake, make_rr, images, store, reply, why):
    s, *_ = store
    fake.enqueue(reply)
    out = make_rr().rerank_one(agentic_request(images, store), store=s)
    assert out.error == "InvalidAnswerError" and why in out.fallback_reason


def test_an_exemplars_call_for_a_non_candidate_gets_an_error_reply(fake, make_rr, images, store):
    s, *_ = store
    fake.enqueue(fake.call("exemplars", label="giraffe"), fake.answer("red"))
    out = make_rr().rerank_one(agentic_request(images, store), store=s)
    assert "not a candidate" in out.trace[0]["error"]
    assert fake.requests[1].body["contents"][-1]["parts"][0]["functionResponse"]["response"]["error"]


def test_a_tool_call_with_a_count_that_is_no_number_gets_an_error_reply(fake, make_rr, images, store):
    # One odd reply must not raise out of the whole batch: Gemini is told, and may answer after all.
    s, *_ = store
    fake.enqueue(fake.call("more_neighbors", k="many"), fake.answer("red"))
    out = make_rr().rerank_one(agentic_request(images, store), store=s)
    assert (out.label, out.reranked) == ("red", True)
    assert "'many'" in out.trace[0]["error"] and fake.count == 2


@pytest.mark.parametrize(("call", "says"), [(("exemplars", {"label": "red", "n": 0}), "n must be from 1 to 8, got 0"),
                                           (("more_neighbors", {"k": 0}), "k must be from 1 to 100, got 0"),
                                           (("more_neighbors", {"k": -3}), "k must be from 1 to 100, got -3"),
                                           (("more_neighbors", {}), "k must be an integer from 1 to 100, got None")])
def test_a_tool_call_with_a_count_outside_the_schemas_range_gets_an_error_reply_naming_it(fake, make_rr, images,
                                                                                          store, call, says):
    # n=0 had been read as no n (the default 4 exemplars), k=0 or no k as k=1: Gemini was answered something
    # else than it asked, and not told so.
    s, *_ = store
    name, args = call
    fake.enqueue(fake.call(name, **args), fake.answer("red"))
    out = make_rr().rerank_one(agentic_request(images, store), store=s)
    assert (out.label, out.reranked) == ("red", True) and out.trace[0]["error"] == says and "ids" not in out.trace[0]
    assert fake.requests[1].body["contents"][-1]["parts"][0]["functionResponse"]["response"] == {"error": says}


# ------------------------------------------------------------------ through VisualMemory


class MeanColour(Featurizer):
    """A stand-in encoder: the image's mean colour (enough to make colours neighbours)."""

    name, dim, preprocessing = "mean-colour", 3, Preprocessing(resize=16, crop=16)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return batch.mean(dim=(2, 3)) + 3.0  # shift off zero so cosine separates the colours


@pytest.fixture
def memory(images):
    feat = MeanColour(device="cpu")
    mem = VisualMemory(open_store(":memory:", feat.spec), feat)
    paths = [images[c] for c in ("red", "red", "green", "blue")]
    mem.add(paths, ["red", "red", "green", "blue"])
    yield mem
    mem.close()


def test_classify_with_rerank_and_no_key_falls_back_to_the_vote(memory):
    [res] = memory.classify([make_image(COLOURS["red"])], k=3, rerank=True)
    assert res.label == "red" and not res.reranked
    assert res.fallback_reason == "no Gemini API key (set GEMINI_API_KEY or GOOGLE_API_KEY)"


def test_classify_with_reranking_turned_off(memory):
    memory.reranker = None
    [res] = memory.classify([make_image(COLOURS["red"])], k=3, rerank=True)
    assert res.fallback_reason == "re-ranking is not configured"


def test_classify_with_rerank_takes_gemini_label_and_forget_reaches_the_cache(fake, make_rr, memory):
    memory.reranker = make_rr()
    fake.enqueue(fake.answer("green"))
    [res] = memory.classify([make_image(COLOURS["red"])], k=3, rerank=True, template="neighbors-v1")
    assert (res.label, res.reranked, res.template, res.model) == ("green", True, "neighbors-v1@1", "gemini-3.6-flash")
    assert res.scores and next(iter(res.scores)) == "red"  # the vote is still reported
    assert res.usage["requests"] == 1 and res.usage["images"] == 4
    [again] = memory.classify([make_image(COLOURS["red"])], k=3, rerank=True)
    assert again.usage["cached"] and fake.count == 1
    cache = memory.reranker.cache
    assert len(cache) == 1
    memory.forget(ids=[res.neighbors[-1].id])
    assert len(cache) == 0  # unlearning reached the cache


def test_an_answer_names_the_template_text_it_was_asked_with_not_only_its_version(fake, make_rr, memory, tmp_path):
    # A team's own neighbors-v1 in place of the built-in, version 1 as well: both answers said neighbors-v1@1.
    (tmp_path / "tpl").mkdir()
    (tmp_path / "tpl" / "neighbors-v1.yaml").write_text("name: neighbors-v1\nversion: 1\nsystem: Ours.\n")
    ours = TemplateRegistry(tmp_path / "tpl")
    memory.reranker = make_rr()
    [builtin] = memory.classify([make_image(COLOURS["red"])], k=3, rerank=True)
    memory.reranker = make_rr(registry=ours)
    [mine] = memory.classify([make_image(COLOURS["red"])], k=3, rerank=True)
    assert builtin.reranked and mine.reranked and builtin.template == mine.template == "neighbors-v1@1"
    # The hash `vmem templates list` shows for each
    assert builtin.template_hash == TemplateRegistry().get("neighbors-v1").content_hash
    assert mine.template_hash == ours.get("neighbors-v1").content_hash != builtin.template_hash


def test_a_replaced_reranker_is_no_longer_told_of_forgets(fake, make_rr, memory, tmp_path):
    first = make_rr()
    memory.reranker = first
    memory.reranker = second = make_rr(cache_path=tmp_path / "second.sqlite")
    first.close()  # its cache closed: told of a forget, it raised after the points were deleted
    fake.enqueue(fake.answer("green"))
    [res] = memory.classify([make_image(COLOURS["red"])], k=3, rerank=True)
    assert res.reranked and len(second.cache) == 1
    assert memory.forget(ids=[res.neighbors[-1].id]) == 1 and len(second.cache) == 0


def test_the_agentic_trace_comes_back_through_classify(fake, make_rr, memory):
    memory.reranker = make_rr()
    fake.enqueue(fake.call("exemplars", label="green", n=1), fake.answer("green"))
    [res] = memory.classify([make_image(COLOURS["red"])], k=3, rerank=True, template="agentic-v1")
    assert res.label == "green" and [t["tool"] for t in res.trace] == ["exemplars", "answer"]
    assert res.trace[0]["returned"] == 1



# ------------------------------------------------------------------ CLI


@pytest.fixture
def disk_memory(tmp_path, lite0, images):
    """An embedded (Qdrant Edge) memory on disk built with the real EfficientNet-Lite0."""
    mem = VisualMemory(open_store(tmp_path / "memory", lite0.spec), lite0)
    mem.add([images[c] for c in ("red", "green", "blue", "yellow")], ["red", "green", "blue", "yellow"])
    mem.close()
    return tmp_path / "memory"


@pytest.mark.slow
def test_cli_classify_rerank_json(fake, disk_memory, images, monkeypatch):
    from typer.testing import CliRunner

    from vmem.cli import app

    monkeypatch.setenv("GEMINI_API_KEY", "cli-key")
    monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", fake.url)
    fake.enqueue(fake.answer("green"))
    runner = CliRunner()
    res = runner.invoke(app, ["classify", str(images["red"]), "-m", str(disk_memory), "--k", "3", "--rerank",
                              "--template", "labels-only", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output.splitlines()[0])
    assert (out["label"], out["reranked"], out["template"], out["model"]) == \
        ("green", True, "labels-only@1", "gemini-3.6-flash")
    assert out["template_hash"] == TemplateRegistry().get("labels-only").content_hash
    assert out["usage"]["requests"] == 1 and fake.requests[0].headers["x-goog-api-key"] == "cli-key"
    fake.enqueue(fake.answer("green"))
    plain = runner.invoke(app, ["classify", str(images["red"]), "-m", str(disk_memory), "--k", "3", "--rerank",
                                "--template", "labels-only"])
    assert plain.stdout.rstrip().endswith("[re-ranked: labels-only@1]"), plain.stdout  # which template, for people
    res = runner.invoke(app, ["classify", str(images["red"]), "-m", str(disk_memory), "--rerank",
                              "--template", "nope"])
    flat = " ".join(res.output.replace("│", " ").split())
    assert res.exit_code == 2 and "unknown template 'nope'; available: agentic-v1" in flat


def test_one_tool_call_sends_at_most_max_tool_images(fake, make_rr, images, store):
    s, *_ = store
    fake.enqueue(fake.call("more_neighbors", k=8), fake.answer("red"))
    out = make_rr(max_tool_images=1).rerank_one(agentic_request(images, store), store=s)
    more = out.trace[0]
    assert more["returned"] == 5 and more["images"] == 1
    reply = fake.requests[1].body["contents"][-1]["parts"][0]["functionResponse"]
    assert len(reply["parts"]) == 1 and sum(r["image"] is not None for r in reply["response"]["neighbors"]) == 1


def test_many_threads_can_share_one_reranker(fake, make_rr, images):
    from concurrent.futures import ThreadPoolExecutor

    rr = make_rr(cache=False)
    with ThreadPoolExecutor(4) as pool:  # e.g. a FastAPI threadpool serving four requests at once
        outs = list(pool.map(lambda i: rr.rerank_one(request(images, query_rgb=(i, 9, 9))), range(8)))
    assert all(o.reranked for o in outs) and fake.count == 8


def test_closing_a_reranker_twice_returns_at_once(tmp_path):
    # VisualMemory.close() closes its re-ranker, and so may the code that built it: both must return.
    import threading

    from reranker import GeminiReranker

    r = GeminiReranker(api_key="test-key-not-real", cache_path=tmp_path / "rerank.sqlite")
    closing = threading.Thread(target=lambda: (r.close(), r.close()), daemon=True)
    closing.start()
    closing.join(60)  # a hang fails here instead of holding up the suite for ever
    assert not closing.is_alive()


def test_the_answer_cache_is_reachable_without_loading_the_gemini_sdk():
    """`vmem forget` cleans the answer cache; it should not pay the SDK's import (~0.4 s) to do it."""
    import subprocess
    import sys

    probe = ("import sys, reranker; reranker.configured_cache_path(); reranker.AnswerCache; "
             "assert 'google.genai' not in sys.modules, 'loaded early'; "
             "reranker.GeminiReranker; assert 'google.genai' in sys.modules; print('ok')")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parent.parent)
    assert out.stdout.strip() == "ok", out.stderr


# ------------------------------------------------------------------ label names


def test_gemini_reads_the_label_names_and_its_answer_comes_back_as_a_label(fake, make_rr, images):
    # A memory built from ImageNet folders holds WordNet ids: Gemini is shown the names instead.
    names = {"cat": "Egyptian cat", "dog": "dingo"}
    fake.enqueue(fake.answer("dingo"))
    out = make_rr().rerank_one(request(images, vote="cat", label_names=names))
    assert (out.label, out.reranked) == ("dog", True) and out.candidates == ["cat", "dog"]
    [sent] = fake.requests
    assert sent.body["generationConfig"]["responseSchema"]["enum"] == ["Egyptian cat", "dingo"]
    assert 'Example 1, labelled "Egyptian cat"' in "\n".join(sent.texts)
    assert not any('labelled "cat"' in t or "- cat" in t for t in sent.texts)


def test_an_answer_naming_a_label_rather_than_its_shown_name_is_refused(fake, make_rr, images):
    fake.enqueue(fake.answer("dog"))  # outside the enum Gemini was given
    out = make_rr().rerank_one(request(images, label_names={"cat": "Egyptian cat", "dog": "dingo"}))
    assert out.error == "NonCandidateAnswerError" and out.label == "cat" and not out.reranked


def test_labels_sharing_a_name_are_told_apart_by_their_label(fake, make_rr, images):
    # ImageNet has two "crane"s (a bird and a machine); an answer must still name one label.
    names = {"n02012849": "crane", "n03126707": "crane"}
    fake.enqueue(fake.answer("crane (n03126707)"))
    out = make_rr().rerank_one(request(images, labels=("n02012849", "n03126707", "n02012849"), vote="n02012849",
                                       label_names=names))
    assert out.label == "n03126707" and out.reranked
    assert fake.requests[0].body["generationConfig"]["responseSchema"]["enum"] == [
        "crane (n02012849)", "crane (n03126707)"]


def test_names_spelled_alike_in_another_unicode_form_are_told_apart(fake, make_rr, images):
    # One class named from a names file typed on Linux (NFC), another from a Mac's file names (NFD): the same
    # text to Gemini, which must still be able to answer either.
    import unicodedata

    names = {"cat": unicodedata.normalize("NFC", "café"), "dog": unicodedata.normalize("NFD", "café")}
    fake.enqueue(fake.answer("café (dog)"))  # echoed composed, as a model writes it
    out = make_rr().rerank_one(request(images, label_names=names))
    assert out.label == "dog" and out.reranked
    enum = fake.requests[0].body["generationConfig"]["responseSchema"]["enum"]
    assert [unicodedata.normalize("NFC", text) for text in enum] == ["café (cat)", "café (dog)"]


def test_shown_label_texts_are_one_to_one():
    from reranker._prompt import ShownLabels

    names = {"b": "a", "c": "c", "d": "x", "e": "x"}
    shown = ShownLabels(names, ["a", "b", "c", "d", "e", "f"])
    texts = shown.texts(["a", "b", "c", "d", "e", "f"])
    # "a" is unnamed and shown first; "b" is named "a", another label: its label follows
    assert texts == ["a", "a (b)", "c", "x (d)", "x (e)", "f"]
    assert [shown.label(t) for t in texts] == ["a", "b", "c", "d", "e", "f"]
    assert shown.label("x") is None
    # In whichever order the vote put them: the unnamed label keeps its text, the named one takes its label.
    for order in (["b", "a"], ["a", "b"]):
        shown = ShownLabels({"b": "a"}, order)
        assert {label: shown.show(label) for label in order} == {"a": "a", "b": "a (b)"}, order


def test_the_names_gemini_reads_are_part_of_the_cache_key(fake, make_rr, images):
    rr = make_rr()
    rr.rerank_one(request(images))
    assert rr.rerank_one(request(images)).cached
    named = rr.rerank_one(request(images, label_names={"cat": "Egyptian cat", "dog": "dingo"}))
    assert not named.cached and fake.count == 2  # another prompt: asked again
    assert rr.rerank_one(request(images, label_names={"cat": "Egyptian cat", "dog": "dingo"})).cached


def test_agentic_tools_take_and_show_the_names(fake, make_rr, images, store):
    s, vecs, ids, labels = store
    names = {lab: f"{lab} thing" for lab in COLOURS}
    req = agentic_request(images, store, label_names=names)
    other = next(c for c in req.scores if c != req.vote_label)
    unseen = next(c for c in COLOURS if c not in req.scores)
    fake.enqueue(fake.call("exemplars", label=names[other], n=2), fake.call("more_neighbors", k=8),
                 fake.answer(names[unseen]))
    out = make_rr().rerank_one(req, store=s)
    ex, more, _ = out.trace
    assert "error" not in ex and set(ex["ids"]) == {i for i, lab in zip(ids, labels, strict=True) if lab == other}
    assert (out.label, out.reranked) == (unseen, True)
    reply = fake.requests[1].body["contents"][-1]["parts"][0]["functionResponse"]["response"]
    assert {row["label"] for row in reply["exemplars"]} == {names[other]}
    assert fake.requests[0].function_names == ["answer", "exemplars", "more_neighbors"]
    decl = {d["name"]: d for t in fake.requests[0].body["tools"] for d in t["functionDeclarations"]}
    assert set(decl["answer"]["parameters"]["properties"]["label"]["enum"]) <= set(names.values())
    more_reply = fake.requests[2].body["contents"][-1]["parts"][0]["functionResponse"]["response"]
    assert set(more_reply["candidates"]) == set(names.values())


def test_classify_shows_gemini_the_memory_label_names(fake, make_rr, memory):
    memory.set_label_names({"red": "crimson", "green": "emerald", "blue": "navy"})
    memory.reranker = make_rr()
    fake.enqueue(fake.answer("emerald"))
    [res] = memory.classify([make_image(COLOURS["red"])], k=3, rerank=True)
    assert (res.label, res.label_name, res.reranked) == ("green", "emerald", True)
    assert [n.label_name for n in res.neighbors] == [{"red": "crimson", "green": "emerald",
                                                      "blue": "navy"}[n.label] for n in res.neighbors]
    assert set(fake.requests[0].body["generationConfig"]["responseSchema"]["enum"]) <= {"crimson", "emerald", "navy"}


def test_an_answer_cache_that_cannot_be_kept_leaves_re_ranking_working_without_one(fake, make_rr, images,
                                                                                   tmp_path, caplog):
    (tmp_path / "a-folder").mkdir()  # VMEM_GEMINI_CACHE_PATH naming a folder, as a read-only home does too
    rr = make_rr(cache_path=tmp_path / "a-folder")
    assert rr.cache is None
    assert "re-ranking without an answer cache: it cannot be kept at" in caplog.text
    fake.enqueue(fake.answer("dog"))
    out = rr.rerank_one(request(images, vote="cat"))
    assert (out.label, out.reranked) == ("dog", True)


def test_a_user_with_no_home_re_ranks_without_an_answer_cache(fake, make_rr, images, monkeypatch, caplog):
    # A container run as a uid the system does not know, with no HOME: Path.home() raises RuntimeError, which
    # the cache did not expect, so every re-rank failed (a 500 in the service), and every forget warned.
    from pathlib import Path

    from reranker import configured_cache_path

    for variable in ("VMEM_HOME", "XDG_CACHE_HOME", "HOME"):
        monkeypatch.delenv(variable, raising=False)

    def no_home(cls):
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.setattr(Path, "home", classmethod(no_home))
    rr = make_rr(cache_path=None)
    assert rr.cache is None
    assert "re-ranking without an answer cache" in caplog.text and "set VMEM_HOME" in caplog.text
    assert configured_cache_path() is None  # no folder, so no kept answers a forget must drop
    fake.enqueue(fake.answer("dog"))
    out = rr.rerank_one(request(images, vote="cat"))
    assert (out.label, out.reranked) == ("dog", True)


def test_the_answer_cache_keeps_the_newest_answers_up_to_its_limit(tmp_path):
    from reranker._cache import TRIM_EVERY, AnswerCache

    cache = AnswerCache(tmp_path / "answers.sqlite", max_entries=10)
    outcome = RerankOutcome(label="cat", reranked=True)
    for i in range(TRIM_EVERY):
        cache.put(f"k{i}", outcome, [f"p{i}", "shared"])
    assert len(cache) == 10  # trimmed at the 64th put: the newest ten are kept
    assert cache.get(f"k{TRIM_EVERY - 1}") is not None and cache.get("k0") is None
    assert cache.cited("k0") == [] and cache.invalidate(["shared"]) == 10
    cache.close()
    # A cache kept under a larger limit is trimmed when opened
    big = AnswerCache(tmp_path / "big.sqlite")
    for i in range(30):
        big.put(f"k{i}", outcome, [f"p{i}"])
    big.close()
    small = AnswerCache(tmp_path / "big.sqlite", max_entries=5)
    assert len(small) == 5 and small.get("k29") is not None
    small.close()


@pytest.mark.parametrize("build_default", ["secure_delete on", "secure_delete off"])
def test_an_answer_dropped_for_a_forgotten_point_leaves_no_byte_of_its_id_in_the_cache_files(
        tmp_path, monkeypatch, build_default):
    # A data-removal request: the point is forgotten, so its id goes from the cache's files too, as the service
    # that keeps the cache open goes on running (the write-ahead log held the pages as they were, the id in them),
    # and whatever SQLite's build default (Debian's zeroes deleted rows, python.org's and macOS's do not).
    import sqlite3

    from reranker._cache import AnswerCache

    if build_default.endswith("off"):
        connect = sqlite3.connect

        def a_build_that_keeps_deleted_bytes(*args, **kwargs):
            db = connect(*args, **kwargs)
            db.execute("PRAGMA secure_delete=OFF")
            return db

        monkeypatch.setattr(sqlite3, "connect", a_build_that_keeps_deleted_bytes)
    cache = AnswerCache(tmp_path / "rerank.sqlite")
    outcome = RerankOutcome(label="goldfish", reranked=True)
    ids = [f"point-{i:03d}-of-a-photo-kept-elsewhere" for i in range(60)]
    for i in range(40):
        cache.put(f"k{i}", outcome, ids[i:i + 20])
    forgotten = ids[25]
    assert cache.invalidate([forgotten]) == 20

    def copies_on_disk() -> dict[str, int]:
        return {p.name: p.read_bytes().count(forgotten.encode()) for p in tmp_path.iterdir() if p.is_file()}

    assert set(copies_on_disk().values()) == {0}  # the cache still open, as a running service holds it
    assert len(cache) == 20 and cache.cited("k0") == ids[:20]  # the other answers stay
    cache.close()
    assert set(copies_on_disk().values()) == {0}


def test_a_forget_is_not_held_up_by_another_process_reading_the_cache_and_empties_the_log_after(tmp_path):
    # Another process reading the cache (a replica sharing VMEM_HOME, a CLI) holds a read open: emptying the
    # write-ahead log must wait for it, and the connection's busy wait (30 s) held the forget up that long.
    import sqlite3
    import threading

    from reranker._cache import AnswerCache

    cache = AnswerCache(tmp_path / "rerank.sqlite")
    for i in range(10):
        cache.put(f"k{i}", RerankOutcome(label="goldfish", reranked=True), [f"point-{i}-forgotten-soon", "shared"])
    reader = sqlite3.connect(str(tmp_path / "rerank.sqlite"))
    rows = reader.execute("SELECT point_id FROM cites")
    rows.fetchone()  # its read stays open until the rows are all read
    dropped: list[int] = []
    forget = threading.Thread(target=lambda: dropped.append(cache.invalidate(["point-3-forgotten-soon"])))
    forget.start()
    forget.join(20)  # a hang guard, not a speed claim: the busy wait it replaces was 30 s
    assert not forget.is_alive() and dropped == [1]
    assert b"point-3-forgotten-soon" in (tmp_path / "rerank.sqlite-wal").read_bytes()  # kept while the read lasts
    rows.fetchall()
    reader.close()
    assert cache.invalidate(["point-4-forgotten-soon"]) == 1
    assert (tmp_path / "rerank.sqlite-wal").stat().st_size == 0
    cache.close()
