"""An agentic template of one's own, through the fake Gemini server: what its tools return to Gemini."""

from __future__ import annotations

import pytest
from conftest import make_image, random_unit_vectors
from fake_gemini import FakeGemini
from PIL import Image

from prompts import TemplateRegistry
from reranker import GeminiReranker, RerankNeighbor, RerankRequest
from retrieval import FeaturizerSpec, Preprocessing, open_store

FEW = """name: few
version: 1
system: Classify the image; the tools may help.
max_neighbors: 4
tools: [more_neighbors]
max_steps: 2
"""


@pytest.fixture
def memory(tmp_path):
    """A real Qdrant (local mode) memory of 12 points, labels a, b, c in turn, each with an image on disk."""
    spec = FeaturizerSpec(name="dummy", dim=8, preprocessing=Preprocessing(resize=32, crop=32))
    store = open_store(":memory:", spec)
    vectors = random_unit_vectors(12, 8, seed=3)
    sources = []
    for i in range(12):
        (path := tmp_path / f"p{i}.jpg").write_bytes(make_image((20 * i, 100, 50), size=(40, 30)))
        sources.append(str(path))
    store.add(vectors, [["a", "b", "c"][i % 3] for i in range(12)], sources)
    yield store, vectors
    store.close()


def request_of_8(tmp_path, store, vectors):
    """The 8 nearest neighbours of point 0, re-ranked with the user template `few` (which shows 4)."""
    (templates := tmp_path / "templates").mkdir(exist_ok=True)
    (templates / "few.yaml").write_text(FEW)
    hits = store.query(vectors[0], 8)
    neighbors = [RerankNeighbor(id=h.id, label=h.label, source=h.source, similarity=h.similarity,
                                weight=1 / (2 + i), rank=i) for i, h in enumerate(hits)]
    request = RerankRequest(image=Image.new("RGB", (40, 30), (5, 5, 5)), neighbors=neighbors, vector=vectors[0],
                            scores={"a": 0.5, "b": 0.3, "c": 0.2}, vote_label="a", template="few")
    return request, hits, TemplateRegistry(templates)


def test_more_neighbors_returns_those_the_template_did_not_show(tmp_path, memory):
    # A template that shows 4 of the k=8 neighbours searched (agentic-v1 shows 20 of the default 50): Gemini's
    # more_neighbors(k=6) asks for the 5th and 6th. They had counted as shown already, so the tool returned none.
    store, vectors = memory
    request, hits, registry = request_of_8(tmp_path, store, vectors)
    with FakeGemini() as fake:
        fake.enqueue(fake.call("more_neighbors", k=6), fake.answer("b"))
        rr = GeminiReranker(api_key="test-key", base_url=fake.url, cache_path=tmp_path / "rerank.sqlite",
                            registry=registry)
        try:
            out = rr.rerank_one(request, store=store)
            assert (out.label, out.reranked) == ("b", True), out.fallback_reason
            [more, _answer] = out.trace
            assert more["ids"] == [h.id for h in hits[4:6]]  # the 5th and 6th nearest, not shown before
            reply = fake.requests[1].body["contents"][-1]["parts"][0]["functionResponse"]
            assert [row["rank"] for row in reply["response"]["neighbors"]] == [5, 6]
            assert len(reply["parts"]) == 2  # with their images
            # asked again, the cached answer is served: the tool, run again, would show Gemini the same points
            assert rr.rerank_one(request, store=store).cached and fake.count == 2
        finally:
            rr.close()


def test_an_answer_call_without_a_label_says_so(tmp_path, memory):
    # The reason had read "Gemini answered None, which is not one of the 3 candidate labels": no label was given.
    store, vectors = memory
    request, hits, registry = request_of_8(tmp_path, store, vectors)
    with FakeGemini() as fake:
        fake.enqueue(fake.call("answer", reason="looks like b"))
        rr = GeminiReranker(api_key="test-key", base_url=fake.url, cache=False, registry=registry)
        try:
            out = rr.rerank_one(request, store=store)
        finally:
            rr.close()
    assert (out.label, out.reranked, out.error) == ("a", False, "InvalidAnswerError")
    assert out.fallback_reason == "Gemini called answer without a label (its arguments: reason)"
