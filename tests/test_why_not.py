"""`classify(why_not=LABEL)`, `vmem classify --why-not`, `POST /v1/classify?why_not=`: why the vote did not answer
a label the caller expected, on a real memory of Tiny-ImageNet classes embedded by EfficientNet-Lite0."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fake_gemini import FakeGemini
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from reranker import GeminiReranker
from retrieval.voting import neighbor_weights, vote_all_k
from server import Settings, create_app
from tests._lite0_once import lite0_loaded_once  # noqa: F401 - autouse: one Lite0 load for the module
from vmem import NoSuchLabelsError, VisualMemory
from vmem.cli import app
from vmem.why_not import winners_at_every_k

TABBY, PERSIAN, EGYPTIAN, ORANGE, LEMON, BANANA = (
    "n02123045", "n02123394", "n02124075", "n07747607", "n07749582", "n07753592")


@pytest.fixture(scope="module")
def memory(tiny_imagenet, tmp_path_factory):
    """Three cats, two citrus fruits (20 train images each) and a banana of 3 images: 103 points."""
    root = tmp_path_factory.mktemp("why-not")
    for label, n in [(TABBY, 20), (PERSIAN, 20), (EGYPTIAN, 20), (ORANGE, 20), (LEMON, 20), (BANANA, 3)]:
        (root / "train" / label).mkdir(parents=True)
        for image in sorted((tiny_imagenet / "train" / label).iterdir())[:n]:
            (root / "train" / label / image.name).symlink_to(image)
    built = CliRunner().invoke(app, ["build", str(root / "train"), "--memory", str(root / "memory"), "--featurizer",
                                     "efficientnet-lite0", "--workers", "0",
                                     "--label-names", str(tiny_imagenet / "classes.tsv")])
    assert built.exit_code == 0, built.output
    return root / "memory"


@pytest.fixture
def mem(memory):
    with VisualMemory.open(memory, reranker=None) as opened:
        yield opened


def val(tiny_imagenet, label: str, name: str) -> str:
    return str(tiny_imagenet / "val" / label / name)


def test_a_tabby_answered_egyptian_cat_is_outvoted_and_wins_at_a_smaller_k(mem, tiny_imagenet):
    query = val(tiny_imagenet, TABBY, "val_1300.JPEG")
    [res] = mem.classify([query], k=50, why_not=TABBY)
    assert res.label == EGYPTIAN  # the true label loses
    why = res.why_not
    # Its nearest points are the tabby neighbours that voted, at their ranks and weights
    voted = [n for n in res.neighbors if n.label == TABBY]
    assert [(p.id, p.rank, p.weight) for p in why.nearest] == [(n.id, n.rank, n.weight) for n in voted[:5]]
    assert (why.in_top_k, why.share, why.vote_label, why.vote_share) == (
        len(voted), res.scores[TABBY], EGYPTIAN, res.scores[EGYPTIAN])
    assert why.reason == ("its 18 points among the k = 50 (the nearest at rank 2) are outweighed by 19 of "
                          "'n02124075' (Egyptian cat) (the nearest at rank 1): share 0.34 against 0.39; it would "
                          "win at k = 13")
    # And so it does
    assert mem.classify([query], k=why.k_that_wins)[0].label == TABBY


def test_a_label_whose_points_lie_past_k_is_found_by_a_search_among_its_points(mem, tiny_imagenet):
    query = val(tiny_imagenet, BANANA, "val_2012.JPEG")
    [res] = mem.classify([query], k=10, why_not=BANANA)
    why = res.why_not
    assert res.label != BANANA and why.in_top_k == 0 and why.share == 0.0
    # Ranks among all 103 points, as a vote over all of them ranks them
    [everything] = mem.classify([query], k=103)
    assert [p.rank for p in why.nearest] == [n.rank for n in everything.neighbors if n.label == BANANA] == [45, 63, 93]
    assert all(p.weight == 0.0 for p in why.nearest)
    assert why.reason == "its nearest point is the 46th nearest (rank 45), outside k = 10"
    assert (why.k_that_wins, why.k_checked) == (None, 103)


def test_a_label_of_too_few_points_says_so_and_points_at_few_points(mem, tiny_imagenet):
    [res] = mem.classify([val(tiny_imagenet, BANANA, "val_11.JPEG")], k=50, why_not=BANANA)
    why = res.why_not
    assert res.label == LEMON and why.points == 3 and why.in_top_k == 3
    assert why.reason == "it has 3 points, too few to win a rank vote of k = 50: see few_points"
    assert (why.few_points.needed, why.few_points.k) == (5, 50)
    # At the vote's k, not the memory's: at k = 10 three points are enough to have a chance
    [at_10] = mem.classify([val(tiny_imagenet, BANANA, "val_11.JPEG")], k=10, why_not=BANANA)
    assert at_10.why_not.few_points is None


def test_the_answer_itself_is_said_to_be_the_answer(mem, tiny_imagenet):
    [res] = mem.classify([val(tiny_imagenet, TABBY, "val_1356.JPEG")], why_not=TABBY)
    assert res.label == TABBY
    assert res.why_not.reason == "it is the rank vote's answer: 18 of its points among the k = 50, share 0.45"
    assert res.why_not.k_that_wins == 50


def test_a_label_tied_with_the_winner_is_said_to_lose_the_tie_break(mem, tiny_imagenet):
    # A plurality vote of k = 2 whose two nearest points are of two labels: a tie, won by the nearer. The reason
    # had said the second was "outweighed" at "share 0.50 against 0.50".
    queries = [str(p) for p in sorted((tiny_imagenet / "val" / TABBY).iterdir())[:20]]
    split = [r for r in mem.classify(queries, rule="plurality", k=2) if r.neighbors[0].label != r.neighbors[1].label]
    assert split, "no query of the twenty has its two nearest points in two labels"
    second = split[0].neighbors[1]
    [res] = mem.classify([split[0].source], rule="plurality", k=2, why_not=second.label)
    assert res.label == split[0].neighbors[0].label and res.why_not.share == res.why_not.vote_share == 0.5
    assert res.why_not.reason.startswith(f"its 1 point among the k = 2 (the nearest at rank 1) ties with 1 of "
                                         f"{res.label!r}")
    assert "outweighed" not in res.why_not.reason
    assert "a tie goes to the label whose nearest point ranks first" in res.why_not.reason


def test_already_embedded_queries_are_explained_alike(mem, tiny_imagenet, lite0):
    query = val(tiny_imagenet, TABBY, "val_1300.JPEG")
    [embedded] = mem.classify_vectors(lite0.embed([query]), mem.vote_settings(k=50), why_not=TABBY)
    assert embedded.why_not == mem.classify([query], k=50, why_not=TABBY)[0].why_not


def test_without_why_not_the_answer_has_none(mem, tiny_imagenet):
    [res] = mem.classify([val(tiny_imagenet, TABBY, "val_1356.JPEG")])
    assert res.why_not is None


@pytest.mark.parametrize(("label", "options", "says"), [
    ("tabby cat", {}, "no label 'tabby cat'.*spelled or named like it: 'n02123045' \\(tabby\\)"),
    ("n0212304", {}, "spelled or named like it: 'n02123045' \\(tabby\\), 'n02123394' \\(Persian cat\\)"),
    ("lemon", {}, "'lemon' is the name of label n07749582"),
])
def test_an_unknown_label_is_refused_naming_those_spelled_or_named_like_it(mem, tiny_imagenet, label, options, says):
    with pytest.raises(NoSuchLabelsError, match=says):
        mem.classify([val(tiny_imagenet, TABBY, "val_1300.JPEG")], why_not=label, **options)


def test_a_label_the_vote_cannot_answer_is_refused(mem, tiny_imagenet):
    query = [val(tiny_imagenet, TABBY, "val_1300.JPEG")]
    with pytest.raises(ValueError, match="not among the labels the vote chooses from"):
        mem.classify(query, labels=[EGYPTIAN, PERSIAN], why_not=TABBY)
    with pytest.raises(ValueError, match="rule dmn"):
        mem.classify(query, rule="dmn", why_not=TABBY)
    # Among the labels it is, and ranked among them
    [res] = mem.classify(query, labels=[EGYPTIAN, TABBY], why_not=TABBY)
    assert {n.label for n in res.neighbors} == {EGYPTIAN, TABBY} and res.why_not.vote_label in (EGYPTIAN, TABBY)


def test_a_re_ranked_answer_s_why_not_explains_the_vote(memory, tiny_imagenet):
    with FakeGemini() as fake, VisualMemory.open(memory) as mem:
        mem.reranker = GeminiReranker(api_key="test-key", base_url=fake.url, cache=False)
        fake.enqueue(fake.answer("tabby"))  # the re-ranker shows Gemini the labels' names
        [res] = mem.classify([val(tiny_imagenet, TABBY, "val_1300.JPEG")], rerank=True, why_not=TABBY)
    assert res.reranked and res.label == TABBY
    # The VLM answered the label asked about; the vote did not, and that is what why_not explains
    assert res.why_not.vote_label == EGYPTIAN and "outweighed by 19 of 'n02124075'" in res.why_not.reason
    assert res.why_not.note == ("the answer is the VLM's, 'n02123045' (tabby): this explains the vote under it "
                                "(its scores and neighbours, won by 'n02124075' (Egyptian cat)), not the VLM's choice")


@pytest.mark.parametrize("rule", ["rank", "plurality", "distance", "softmax"])
@pytest.mark.parametrize("seed", range(5))
def test_the_winner_at_every_k_is_the_vote_s(rule, seed):
    # One query's running totals, as `vote_all_k` finds the winners of many a k at a time: ties and a reliability
    # of 0 (soft pruning) included
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 4, 60)
    sims = np.sort(rng.uniform(0.2, 0.9, 60))[::-1].round(2)  # rounded: equal similarities, tied weights
    reliability = rng.choice([1.0, 0.5, 0.0], 60)
    assert (winners_at_every_k(ids, neighbor_weights(sims, rule, reliability=reliability))
            == vote_all_k(ids[None], sims[None], rule, 4, reliability=reliability[None])[0]).all()


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "250"})


def test_vmem_classify_why_not_says_why_under_each_answer(memory, tiny_imagenet):
    lost, won = val(tiny_imagenet, TABBY, "val_1300.JPEG"), val(tiny_imagenet, TABBY, "val_1356.JPEG")
    said = run("classify", lost, won, "--memory", memory, "--why-not", TABBY)
    assert said.exit_code == 0, said.output
    assert said.stdout.splitlines()[1] == (
        "  why not n02123045 (tabby): its 18 points among the k = 50 (the nearest at rank 2) are outweighed by 19 "
        "of 'n02124075' (Egyptian cat) (the nearest at rank 1): share 0.34 against 0.39; it would win at k = 13")
    assert said.stdout.splitlines()[3].startswith("  why not n02123045 (tabby): it is the rank vote's answer")
    as_json = run("classify", lost, "--memory", memory, "--why-not", TABBY, "--k", "13", "--json")
    answer = json.loads(as_json.stdout)
    assert answer["label"] == TABBY and answer["why_not"]["label"] == TABBY
    assert [p["rank"] for p in answer["why_not"]["nearest"]] == [n["rank"] for n in answer["neighbors"]
                                                                 if n["label"] == TABBY][:5]


def test_vmem_classify_refuses_an_unknown_why_not_before_embedding(memory, tiny_imagenet):
    refused = run("classify", val(tiny_imagenet, TABBY, "val_1300.JPEG"), "--memory", memory, "--why-not",
                  "tabby cat")
    assert refused.exit_code == 2
    assert "--why-not" in refused.output and "'n02123045' (tabby)" in refused.output


def test_the_http_classify_route_takes_why_not(memory, tiny_imagenet, tmp_path):
    with VisualMemory.open(memory, reranker=None) as mem, TestClient(create_app(
            Settings(memory=str(memory), auth_disabled=True, thumbnail_dir=tmp_path / "thumbs"), memory=mem)) as client:
        with open(val(tiny_imagenet, TABBY, "val_1300.JPEG"), "rb") as f:
            image = f.read()
        answer = client.post(f"/v1/classify?why_not={TABBY}", files={"image": ("q.jpg", image, "image/jpeg")})
        assert answer.status_code == 200, answer.text
        why = answer.json()["why_not"]
        assert why["k_that_wins"] == 13
        # Its points come with thumbnails, as the neighbours do: the page shows them beside the neighbours' cards
        point = why["nearest"][0]
        assert point["thumbnail_url"] == f"/v1/memory/points/{point['id']}/thumbnail"
        assert client.get(point["thumbnail_url"]).headers["content-type"] == "image/jpeg"
        # A cached answer to the same image without why_not is not served for it, nor it for one without
        plain = client.post("/v1/classify", files={"image": ("q.jpg", image, "image/jpeg")}).json()
        assert plain["why_not"] is None
        refused = client.post("/v1/classify?why_not=tabby%20cat", files={"image": ("q.jpg", image, "image/jpeg")})
        assert refused.status_code == 422 and refused.json()["type"].endswith("unknown-label")
        assert "'n02123045' (tabby)" in refused.json()["detail"]
