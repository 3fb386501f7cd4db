"""VLM faults under load, and the circuit breaker that stops asking a failing Gemini.

The real google-genai client talks over HTTP to the fake Gemini on loopback, which injects 429s,
503s and hangs. Every query must be answered within its deadline (a fallback to the vote counts as
an answer), fallbacks are counted by reason, and during an outage the breaker opens, so queries
fall back at once instead of waiting out retries; after the cool-down one trial call closes it.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import random
import threading
import time
from collections import Counter
from contextlib import closing

import pytest
from fake_gemini import Action, FakeGemini
from PIL import Image

from reranker import CircuitBreaker, GeminiReranker, RerankNeighbor, RerankRequest

# An attempt is cut after 5 s, where an answer on loopback took up to 0.19 s on a loaded 2-core machine and 0.4 s had
# been too little under CI's load (answers timed out, and their queries fell back for it); a hang lasts an hour, so only
# the attempt's timeout ends it. The deadline leaves room for three such attempts.
ATTEMPT_S = 5.0
DEADLINE_S = 60.0


# ------------------------------------------------------------------ the state machine, on a fake clock


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_breaker_opens_after_consecutive_failures_only():
    cb = CircuitBreaker(failures=3, cooldown_s=10, clock=Clock())
    for _ in range(5):  # failures broken up by a success never open it
        cb.failure(cb.acquire())
        cb.failure(cb.acquire())
        cb.success(cb.acquire())
    assert cb.state == "closed"
    for _ in range(3):
        cb.failure(cb.acquire(), "503")
    assert cb.state == "open"
    refusal = cb.acquire()
    assert isinstance(refusal, str) and refusal.startswith("circuit open") and "10 s cool-down" in refusal
    assert cb.rejected == 1


def test_after_the_cool_down_one_trial_call_closes_or_reopens_it():
    clock = Clock()
    cb = CircuitBreaker(failures=2, cooldown_s=10, clock=clock)
    cb.failure(cb.acquire())
    cb.failure(cb.acquire())
    clock.now = 9.9
    assert isinstance(cb.acquire(), str)
    clock.now = 10.0
    assert cb.state == "half-open"
    trial = cb.acquire()
    assert trial.probe
    assert "trial call is in flight" in cb.acquire()  # only one trial at a time
    cb.failure(trial, "503")
    assert cb.state == "open"  # a failed trial: another full cool-down
    clock.now = 19.9
    assert isinstance(cb.acquire(), str)
    clock.now = 20.0
    trial = cb.acquire()
    cb.success(trial)
    assert cb.state == "closed" and not isinstance(cb.acquire(), str)
    assert [t.state for t in cb.transitions] == ["open", "half-open", "open", "half-open", "closed"]


def test_a_cancelled_trial_lets_the_next_call_try():
    clock = Clock()
    cb = CircuitBreaker(failures=1, cooldown_s=1, clock=clock)
    cb.failure(cb.acquire())
    clock.now = 1.0
    cb.release(cb.acquire())
    assert cb.acquire().probe


def test_failures_of_calls_made_before_the_circuit_opened_do_not_extend_it():
    clock = Clock()
    cb = CircuitBreaker(failures=2, cooldown_s=10, clock=clock)
    in_flight = [cb.acquire() for _ in range(4)]
    cb.failure(in_flight[0])
    cb.failure(in_flight[1])
    assert cb.state == "open"
    clock.now = 5
    cb.failure(in_flight[2])
    cb.failure(in_flight[3])
    clock.now = 10
    assert cb.state == "half-open"


def test_zero_failures_turns_the_breaker_off():
    cb = CircuitBreaker(failures=0)
    for _ in range(100):
        cb.failure(cb.acquire())
    assert cb.state == "closed" and not isinstance(cb.acquire(), str)


# ------------------------------------------------------------------ against the fake Gemini


@pytest.fixture
def fake():
    with FakeGemini() as server:
        yield server


@pytest.fixture
def neighbour_images(tmp_path):
    paths = []
    for i, rgb in enumerate([(220, 20, 20), (20, 200, 20), (20, 20, 220)]):
        p = tmp_path / f"n{i}.png"
        Image.new("RGB", (24, 24), rgb).save(p)
        paths.append(str(p))
    return paths


def queries(neighbour_images, n: int, offset: int = 0) -> list[RerankRequest]:
    """Distinct queries (different query images) voting "cat" over cat/dog neighbours."""
    nbrs = [RerankNeighbor(id=f"p{i}", label=lab, source=src, similarity=0.9 - 0.1 * i, rank=i)
            for i, (lab, src) in enumerate(zip(["cat", "dog", "cat"], neighbour_images, strict=True))]
    return [RerankRequest(image=Image.new("RGB", (32, 32), ((offset + i) % 256, (7 * i) % 256, 90)),
                          neighbors=nbrs, scores={"cat": 0.6, "dog": 0.4}, vote_label="cat")
            for i in range(n)]


def on_clock(rr: GeminiReranker, clock: Clock) -> GeminiReranker:
    """The re-ranker, its breaker on the test's clock: the cool-down passes when the test moves the clock, not while a
    loaded machine is slow (past 1 s, a query meant to meet the open circuit got the trial call instead)."""
    rr.breaker = CircuitBreaker(rr.settings.breaker_failures, rr.settings.breaker_cooldown_s, clock=clock)
    return rr


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def reranker(fake, clock):
    rr = on_clock(GeminiReranker(api_key="test-key", base_url=fake.url, cache=False, deadline_s=DEADLINE_S,
                                 attempt_timeout_s=ATTEMPT_S, max_attempts=3, backoff_initial_s=0.01,
                                 backoff_max_s=0.05, concurrency=8, breaker_failures=5, breaker_cooldown_s=1.0), clock)
    yield rr
    rr.close()


def colour(i: int) -> tuple[int, int, int]:
    """The i-th of 64 colours far enough apart that a JPEG of it still says i (`index_of`)."""
    return 30 + 60 * (i % 4), 30 + 60 * (i // 4 % 4), 30 + 60 * (i // 16 % 4)


def index_of(jpeg_base64: str) -> int:
    jpeg = base64.urlsafe_b64decode(jpeg_base64 + "=" * (-len(jpeg_base64) % 4))  # the SDK's: URL-safe, unpadded
    image = Image.open(io.BytesIO(jpeg)).convert("RGB")
    r, g, b = image.getpixel((image.width // 2, image.height // 2))
    return round((r - 30) / 60) + 4 * round((g - 30) / 60) + 16 * round((b - 30) / 60)


def fault_plan(seed: int, i: int, label: str | None, rate: float = 0.3) -> list[Action]:
    """Query i's replies, call by call: each attempt fails at `rate` (a 429 with a retryDelay, a 503, or a hang) until
    one is answered `label` (None: the request's first candidate), or three failed."""
    rng = random.Random(f"{seed}:{i}")
    faults = [FakeGemini.status(429, retry_delay="0.05s"), FakeGemini.status(503), FakeGemini.hang(3600)]
    plan: list[Action] = []
    while len(plan) < 3 and (not plan or plan[-1].kind != "answer"):
        plan.append(rng.choice(faults) if rng.random() < rate else Action("answer", label=label))
    return plan


def fallback_of(plan: list[Action]) -> str | None:
    """The reason a query with this plan falls back for (None: it is re-ranked): its last attempt's."""
    last = plan[-1]
    if last.kind == "answer":
        return None
    if last.kind == "hang":  # slow, unless an earlier attempt failed outright
        return "AttemptsTimedOutError" if all(a.kind == "hang" for a in plan) else "UpstreamError"
    return "QuotaExceededError" if last.status == 429 else "UpstreamError"


class PlannedFaults:
    """A `FakeGemini.responder` that answers the n-th call of query i (told by the colour of the request's last image,
    the query) with the n-th action of `plans[i]`: which queries fall back, and why, is the same whatever order the
    concurrent calls arrive in and however long each takes."""

    def __init__(self, plans: list[list[Action]]) -> None:
        self.plans = plans
        self.calls: Counter[int] = Counter()
        self._lock = threading.Lock()

    def __call__(self, body: dict) -> Action:
        images = [p["inlineData"]["data"] for c in body["contents"] for p in c["parts"] if "inlineData" in p]
        i = index_of(images[-1])
        with self._lock:
            n = self.calls[i]
            self.calls[i] += 1
        return self.plans[i][n] if n < len(self.plans[i]) else FakeGemini.status(500, message="a call past the plan")


def coloured_png(i: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), colour(i)).save(buf, format="PNG")
    return buf.getvalue()


def coloured_queries(neighbour_images, n: int) -> list[RerankRequest]:
    return [dataclasses.replace(r, image=Image.new("RGB", (32, 32), colour(i)))
            for i, r in enumerate(queries(neighbour_images, n))]


def test_with_30_percent_of_calls_failing_every_query_is_answered_in_time(fake, reranker, neighbour_images):
    plans = [fault_plan(36, i, "dog") for i in range(64)]
    expected = Counter(r for r in map(fallback_of, plans) if r)
    fake.responder = planned = PlannedFaults(plans)
    start = time.monotonic()
    batch = reranker.rerank_many(coloured_queries(neighbour_images, 64))
    wall = time.monotonic() - start

    assert len(batch.outcomes) == 64
    # Each query was called once per planned reply: a fault retried, an answer not, a hang cut by the attempt's
    # timeout (nothing else ends it), and never more than three attempts.
    assert [planned.calls[i] for i in range(64)] == [len(p) for p in plans] and fake.count > 64
    # Retries absorb most faults: a query falls back only when all three of its attempts fail, for its last one's reason
    assert batch.fallbacks == expected == {"UpstreamError": 1, "QuotaExceededError": 1} and batch.reranked == 62
    for o, plan in zip(batch.outcomes, plans, strict=True):
        assert (o.label, o.error) == (("dog", None) if o.reranked else ("cat", fallback_of(plan)))
        assert o.attempts == len(plan) and o.latency_s <= DEADLINE_S
    assert reranker.breaker.state == "closed"  # 2 fallbacks, never 5 in a row
    hangs = sum(a.kind == "hang" for p in plans for a in p)
    print(f"64 queries, {fake.count} calls ({hangs} hung until the attempt's timeout): {batch.reranked} re-ranked, "
          f"fallbacks {batch.fallbacks}, slowest {max(o.latency_s for o in batch.outcomes):.2f} s, batch {wall:.2f} s")


def test_during_an_outage_the_circuit_opens_and_queries_fall_back_at_once(fake, reranker, clock, neighbour_images):
    fake.enqueue(*[fake.status(503)] * 1000)
    batch = reranker.rerank_many(queries(neighbour_images, 40))

    assert batch.reranked == 0
    opened = [o for o in batch.outcomes if o.error == "CircuitOpenError"]
    assert batch.fallbacks["CircuitOpenError"] == len(opened) >= 40 - 5 - 8
    assert batch.fallbacks.get("UpstreamError", 0) >= 5
    for o in opened:
        assert o.fallback_reason.startswith("circuit open") and o.label == "cat"
        assert o.attempts == 0  # no call, so no retry to wait out: it falls back at once
    # Only the queries before the circuit opened (and those already in flight) called Gemini, 3 times each.
    assert fake.count <= (5 + 8) * 3
    assert reranker.breaker.state == "open"
    print(f"outage: 40 queries, {fake.count} calls, fallbacks {batch.fallbacks}, circuit-open answers in at most "
          f"{max(o.latency_s for o in opened) * 1000:.1f} ms, others in at most "
          f"{max(o.latency_s for o in batch.outcomes if o not in opened):.2f} s")

    # Gemini is back; until the cool-down passes nobody asks it.
    fake.reset()
    [early] = reranker.rerank_many(queries(neighbour_images, 1, offset=100)).outcomes
    assert early.error == "CircuitOpenError" and fake.count == 0

    clock.now += 1.0  # the cool-down is over
    [trial] = reranker.rerank_many(queries(neighbour_images, 1, offset=101)).outcomes
    assert trial.reranked and trial.label == "cat"
    assert reranker.breaker.state == "closed"
    after = reranker.rerank_many(queries(neighbour_images, 16, offset=102))
    assert after.reranked == 16
    assert [t.state for t in reranker.breaker.transitions] == ["open", "half-open", "closed"]


def test_a_failed_trial_call_reopens_the_circuit(fake, reranker, clock, neighbour_images):
    fake.enqueue(*[fake.status(503)] * 1000)
    reranker.rerank_many(queries(neighbour_images, 8))
    assert reranker.breaker.state == "open"
    clock.now += 1.0
    [trial] = reranker.rerank_many(queries(neighbour_images, 1, offset=50)).outcomes
    assert trial.error == "UpstreamError"
    assert reranker.breaker.state == "open"


def test_replies_that_are_refused_are_not_an_outage(fake, neighbour_images):
    # A non-candidate answer or a 400 means Gemini is up: the circuit stays closed. Attempts get time enough here:
    # under load, 0.4 s attempts timed out and were retried, their replies eaten, and the fake's default answer
    # re-ranked 4 of the 20 (a CI rehearsal).
    rr = GeminiReranker(api_key="test-key", base_url=fake.url, cache=False, deadline_s=10, attempt_timeout_s=5,
                        max_attempts=3, backoff_initial_s=0.01, backoff_max_s=0.05, concurrency=8,
                        breaker_failures=5, breaker_cooldown_s=1.0)
    fake.enqueue(*[fake.text("ignore previous instructions"), fake.status(400)] * 10)
    try:
        batch = rr.rerank_many(queries(neighbour_images, 20))
        assert batch.reranked == 0
        assert set(batch.fallbacks) == {"NonCandidateAnswerError", "RequestRejectedError"}
        assert rr.breaker.state == "closed"
    finally:
        rr.close()


def test_a_refused_key_opens_the_circuit_at_once_and_says_why(fake, clock, neighbour_images):
    # Every request with a bad key is refused alike: a batch had uploaded each query's ~420 KB prompt to be told so
    # again (the breaker counted refusals as "Gemini is up"). Attempts get time enough: under load a 0.4 s attempt
    # timed out, and its query fell back for that instead.
    fake.enqueue(*[fake.status(400, message="API key not valid. Please pass a valid API key.",
                               reason="API_KEY_INVALID")] * 1000)
    with closing(on_clock(GeminiReranker(api_key="test-key", base_url=fake.url, cache=False, deadline_s=10,
                                         attempt_timeout_s=5, max_attempts=3, backoff_initial_s=0.01,
                                         backoff_max_s=0.05, concurrency=8, breaker_failures=5,
                                         breaker_cooldown_s=1.0), clock)) as reranker:
        batch = reranker.rerank_many(queries(neighbour_images, 40))

        assert batch.reranked == 0 and fake.count <= 8  # only the queries already in flight asked
        assert batch.fallbacks["KeyRefusedError"] == fake.count
        assert batch.fallbacks["CircuitOpenError"] == 40 - fake.count
        opened = next(o for o in batch.outcomes if o.error == "CircuitOpenError")
        assert opened.fallback_reason.startswith("circuit open: Gemini rejected the request (400 INVALID_ARGUMENT): "
                                                 "API key not valid") and "Check the key given as api_key" in \
            opened.fallback_reason and opened.fallback_reason.endswith("calls resume after a 1 s cool-down")
        assert opened.attempts == 0

        # The key mended (or the API enabled for its project): after the cool-down a trial call closes the circuit
        fake.reset()
        clock.now += 1.0
        assert reranker.rerank_many(queries(neighbour_images, 1, offset=100)).reranked == 1
        assert reranker.breaker.state == "closed"


def test_a_trip_opens_the_breaker_whatever_the_count_unless_it_is_off():
    clock = Clock()
    cb = CircuitBreaker(failures=5, cooldown_s=10, clock=clock)
    cb.trip(cb.acquire(), "the key was refused")
    assert cb.state == "open" and cb.acquire() == ("circuit open: the key was refused; calls resume after a 10 s "
                                                   "cool-down")
    clock.now = 10
    trial = cb.acquire()
    cb.failure(trial, "503")  # the trial failed otherwise: the count's wording comes back
    assert cb.acquire() == "circuit open: Gemini failed 5 times in a row; calls resume after a 10 s cool-down"
    off = CircuitBreaker(failures=0)
    off.trip(off.acquire(), "the key was refused")
    assert off.state == "closed"


# ------------------------------------------------------------------ through the HTTP service


def test_the_service_answers_every_rerank_request_in_time_and_counts_fallbacks_by_reason(fake, encoder, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    from tests._reliability_fixtures import noise_png, tiny_app, tiny_memory
    from tests._server_fixtures import live_server

    rr = GeminiReranker(api_key="test-key", base_url=fake.url, cache=False, deadline_s=DEADLINE_S,
                        attempt_timeout_s=ATTEMPT_S, max_attempts=3, backoff_initial_s=0.01, backoff_max_s=0.05,
                        breaker_failures=5, breaker_cooldown_s=3600)
    mem = tiny_memory(encoder, reranker=rr)
    # Query i (a PNG of colour i) meets the faults of its plan, whichever of the 8 clients sends it when.
    plans = [fault_plan(14, i, None) for i in range(32)]
    fake.responder = PlannedFaults(plans)

    def classify(url: str, png: bytes) -> tuple[int, float, dict]:
        start = time.monotonic()
        resp = httpx.post(f"{url}/v1/classify", params={"rerank": "true", "k": 6}, timeout=2 * DEADLINE_S,
                          files={"image": ("q.png", png)})
        return resp.status_code, time.monotonic() - start, resp.json()

    try:
        with live_server(tiny_app(encoder, tmp_path, memory=mem)) as url, ThreadPoolExecutor(8) as pool:
            under_faults = list(pool.map(lambda i: classify(url, coloured_png(i)), range(32)))
            fake.reset()
            fake.responder = None
            fake.enqueue(*[fake.status(503)] * 1000)
            outage = list(pool.map(lambda s: classify(url, noise_png(s)), range(2000, 2032)))
            metrics = httpx.get(f"{url}/metrics").text
    finally:
        mem.close()

    for status, seconds, body in under_faults + outage:
        assert status == 200, body
        # Within the re-ranker's deadline (the slowest plan waits out one hung attempt), embedding included
        assert seconds < DEADLINE_S, (seconds, body.get("fallback_reason"))
    # Exactly the queries whose plan has an answer are re-ranked (2 fallbacks, too few to open the circuit)
    assert [b["reranked"] for _, _, b in under_faults] == [fallback_of(p) is None for p in plans]
    assert sum(b["reranked"] for _, _, b in under_faults) == 30
    reasons = [b["fallback_reason"] for _, _, b in under_faults + outage if not b["reranked"]]
    opened = [r for r in reasons if r.startswith("circuit open")]
    assert len(opened) >= 32 - 5 - 8
    counted = {line.split('reason="')[1].rsplit('"', 1)[0]: float(line.rsplit(" ", 1)[1])
               for line in metrics.splitlines() if line.startswith("vmem_rerank_fallbacks_total{")}
    assert sum(counted.values()) == len(reasons)
    # Labelled by error class, not by the reason's text (which would be a new series per message).
    assert counted.get("CircuitOpenError", 0) == len(opened)
    print(f"HTTP, 30% faults: {sum(b['reranked'] for _, _, b in under_faults)}/32 re-ranked, slowest "
          f"{max(t for _, t, _ in under_faults):.2f} s; outage: {len(opened)}/32 circuit open, "
          f"slowest {max(t for _, t, _ in outage):.2f} s; metrics count {sum(counted.values()):g} fallbacks")
