"""Telling unfamiliar images from familiar ones: `VisualMemory.novelty_threshold`, `vmem classify --ood`.

A classification's `novelty` is its mean cosine distance to its k neighbours; the threshold is calibrated on the
memory itself (`vmem.novelty`), the one rule the Python API, the CLI and the HTTP service follow.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from retrieval import FeaturizerSpec, Preprocessing, open_store, point_id_for
from retrieval.store import EXCLUDED_KEY
from tests._lite0_once import lite0_loaded_once  # noqa: F401 - autouse: one Lite0 load for the module
from tests._server_fixtures import checkerboard, fill_memory, texture
from tests.conftest import random_unit_vectors
from vmem import VisualMemory
from vmem.novelty import OOD_PERCENTILE, OOD_SAMPLE_SIZE

COLOUR = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


@pytest.fixture
def colours(tmp_path, lite0, memory_images):
    """A memory of 3 colours x 4 noisy textures (EfficientNet-Lite0 features)."""
    mem = fill_memory(str(tmp_path / "memory"), lite0, memory_images)
    yield mem
    mem.close()


def vector_memory(location, vectors: np.ndarray, labels: list[str]) -> VisualMemory:
    """A memory of given unit vectors, as `vmem experiment unlearning` builds one."""
    spec = FeaturizerSpec(name="precomputed", dim=vectors.shape[1], preprocessing=Preprocessing(resize=0, crop=0))
    store = open_store(str(location), spec)
    store.add(vectors, labels, [f"mem:{i}" for i in range(len(labels))])
    return VisualMemory(store, reranker=None)


# ------------------------------------------------------------------ VisualMemory.novelty_threshold


def test_an_image_unlike_the_memory_is_above_the_threshold_and_one_like_it_is_not(colours):
    threshold = colours.novelty_threshold(k=3)
    familiar, unfamiliar = colours.classify([texture(COLOUR["green"], seed=7), checkerboard()], k=3)
    assert familiar.label == "green" and familiar.novelty < threshold
    assert unfamiliar.novelty > threshold  # a label is still given: the threshold says not to trust it
    # k None is the memory's vote k (50 by default, every point here), as classify reads it
    assert colours.novelty_threshold() == colours.novelty_threshold(k=50) != threshold


def test_a_threshold_among_some_labels_is_calibrated_on_their_points(colours):
    # Among red alone the nearest "others" are red: closer than the whole memory's at k = 6, whose neighbours
    # reach into the other colours.
    red = colours.novelty_threshold(k=3, labels=["red"])
    assert red is not None and red < colours.novelty_threshold(k=6)
    assert colours.novelty_threshold(k=3, labels="red") == red  # one label, not its characters
    assert colours.novelty_threshold(k=3, labels=["red", "red"]) == red


def test_the_threshold_is_the_percentile_of_the_memorys_own_leave_one_out_novelty(tmp_path):
    vectors = random_unit_vectors(40, 8, seed=3)
    mem = vector_memory(tmp_path / "memory", vectors, ["a"] * 40)
    try:
        sims = vectors @ vectors.T  # (the memory keeps float16 originals: equal to about 1e-4)
        np.fill_diagonal(sims, -np.inf)  # each point's own hit left out
        own = [float(np.mean(1 - np.sort(row)[::-1][:5])) for row in sims]
        assert mem.novelty_threshold(k=5, exact=True) == pytest.approx(np.percentile(own, OOD_PERCENTILE), abs=1e-3)
        assert mem.novelty_threshold(k=5, percentile=50, exact=True) == pytest.approx(np.median(own), abs=1e-3)
        # The sample is the first points in id order: ids are hashes of the sources, so a pseudo-random draw
        first = sorted(range(40), key=lambda i: point_id_for(f"mem:{i}"))[:10]
        assert mem.novelty_threshold(k=5, sample_size=10, percentile=100, exact=True) == pytest.approx(
            max(own[i] for i in first), abs=1e-3)
    finally:
        mem.close()


def test_hard_pruned_points_are_no_sample_and_too_few_points_give_no_threshold(tmp_path):
    vectors = random_unit_vectors(4, 8, seed=5)
    mem = vector_memory(tmp_path / "memory", vectors, ["a", "a", "b", "c"])
    try:
        assert mem.novelty_threshold(k=1) is not None
        assert mem.novelty_threshold(k=1, labels=["b"]) is None  # one point: nothing to compare it with
        ids = mem.store.ids_where(label="a")
        mem.store.set_payload(ids[:1], {EXCLUDED_KEY: "hard"})
        assert mem.novelty_threshold(k=1, labels=["a"]) is None  # its other point is out of every search
        assert mem.novelty_threshold(k=1, labels=["a", "b"]) is not None
    finally:
        mem.close()


@pytest.mark.parametrize(("options", "says"), [({"k": 0}, "k"), ({"k": 1001}, "k"),
                                               ({"sample_size": 1}, "sample_size must be"),
                                               ({"percentile": 101}, "percentile must be")])
def test_options_that_cannot_calibrate_are_refused(colours, options, says):
    with pytest.raises(ValueError, match=says):
        colours.novelty_threshold(**options)


def test_the_http_service_calibrates_by_the_same_rule(tmp_path, colours):
    from fastapi.testclient import TestClient

    from server import Settings, create_app

    settings = Settings(memory=str(tmp_path / "memory"), auth_disabled=True, thumbnail_dir=tmp_path / "thumbs")
    assert (settings.ood_percentile, settings.ood_sample_size) == (OOD_PERCENTILE, OOD_SAMPLE_SIZE)
    with TestClient(create_app(settings, memory=colours)) as client:
        answer = client.post("/v1/classify?k=3&label=red&label=blue",
                             files={"image": ("q.png", texture(COLOUR["red"], 5), "image/png")}).json()
        assert answer["ood_threshold"] == colours.novelty_threshold(k=3, labels=["red", "blue"])
        assert client.app.state.service.ood_threshold(4) == colours.novelty_threshold(k=4)


# ------------------------------------------------------------------ vmem classify --ood


@pytest.fixture(scope="module")
def on_disk(tmp_path_factory, lite0, memory_images):
    """The colour memory in a folder, for the CLI, and a folder of queries: 3 colours seen before, 1 pattern not."""
    root = tmp_path_factory.mktemp("cli")
    fill_memory(str(root / "memory"), lite0, memory_images).close()
    (root / "queries").mkdir()
    for i, (label, colour) in enumerate(COLOUR.items()):
        (root / "queries" / f"{i}-{label}.png").write_bytes(texture(colour, seed=50 + i))
    (root / "queries" / "3-checkerboard.png").write_bytes(checkerboard())
    return root / "memory", root / "queries"


def run(*args):
    from typer.testing import CliRunner

    from vmem.cli import app

    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "250"})


def test_classify_ood_marks_the_unfamiliar_image_and_sums_up_on_stderr(on_disk):
    memory, queries = on_disk
    plain = run("classify", queries, "--memory", memory, "--k", "3")
    flagged = run("classify", queries, "--memory", memory, "--k", "3", "--ood")
    assert flagged.exit_code == 0, flagged.output
    with VisualMemory.open(memory) as mem:
        threshold = mem.novelty_threshold(k=3)
    lines, before = flagged.stdout.splitlines(), plain.stdout.splitlines()
    assert lines[:3] == before[:3]  # the familiar colours: their lines as without --ood
    assert lines[3].startswith(before[3] + " [out of distribution: novelty ")
    assert lines[3].endswith(f" > {threshold:.3f}]")
    assert flagged.stderr.splitlines()[-1] == (f"out of distribution: 1 of 4 images flagged (novelty above "
                                               f"{threshold:.4f}, the 99th percentile of the memory's points' own "
                                               "at k=3)")


def test_classify_ood_json_answers_carry_the_keys_an_http_answer_has(on_disk):
    import json

    memory, queries = on_disk
    plain = [json.loads(line) for line in run("classify", queries, "--memory", memory, "--k", "3", "--json",
                                              "--exact").stdout.splitlines()]
    out = run("classify", queries, "--memory", memory, "--k", "3", "--json", "--exact", "--ood")
    answers = [json.loads(line) for line in out.stdout.splitlines()]
    with VisualMemory.open(memory) as mem:
        threshold = mem.novelty_threshold(k=3, exact=True)
    assert [a["out_of_distribution"] for a in answers] == [False, False, False, True]
    assert {a["ood_threshold"] for a in answers} == {threshold}
    assert [{key: v for key, v in a.items() if key not in ("ood_threshold", "out_of_distribution")}
            for a in answers] == plain  # nothing else changes
    assert list(answers[0])[-2:] == ["ood_threshold", "out_of_distribution"]
    assert "1 of 4 images flagged" in out.stderr


def test_classify_without_ood_prints_what_it_printed_before(on_disk):
    import json

    memory, queries = on_disk
    text = run("classify", queries, "--memory", memory, "--k", "3")
    assert all(re.fullmatch(r"\S+\t\w+\t\(\w+ \d\.\d\d(, \w+ \d\.\d\d)*\)", line) for line in text.stdout.splitlines())
    assert "out of distribution" not in text.output
    answer = json.loads(run("classify", queries, "--memory", memory, "--k", "3", "--json").stdout.splitlines()[3])
    assert list(answer) == ["source", "label", "label_name", "scores", "neighbors", "vote", "novelty", "reranked",
                            "fallback_reason", "template", "template_hash", "model", "usage", "trace", "dmn", "why_not",
                            # added since, at the end: how sure the answer is (`--min-confidence`)
                            "min_confidence", "unsure", "unsure_reason", "confidence"]


def test_classify_ood_among_some_labels_uses_their_threshold(on_disk):
    memory, queries = on_disk
    out = run("classify", queries / "0-red.png", "--memory", memory, "--k", "2", "--label", "red", "--ood")
    assert out.exit_code == 0, out.output
    with VisualMemory.open(memory) as mem:
        threshold = mem.novelty_threshold(k=2, labels=["red"])
    assert out.stderr.splitlines()[-1] == (f"out of distribution: 0 of 1 image flagged (novelty above "
                                           f"{threshold:.4f}, the 99th percentile of the memory's points' own at "
                                           "k=2 among 1 label)")


def test_classify_ood_on_a_memory_too_small_to_calibrate_flags_nothing_and_says_why(tmp_path, lite0, on_disk):
    import json

    _, queries = on_disk
    store = open_store(str(tmp_path / "memory"), lite0.spec)
    store.add(lite0.embed([str(queries / "0-red.png")]), ["red"], ["one.png"])
    store.close()
    out = run("classify", queries / "3-checkerboard.png", "--memory", tmp_path / "memory", "--json", "--ood")
    assert out.exit_code == 0, out.output
    answer = json.loads(out.stdout)
    assert (answer["ood_threshold"], answer["out_of_distribution"]) == (None, None)
    assert ("out of distribution: none flagged: the memory has too few points to calibrate a novelty threshold at "
            "k=50 (2 are needed)") in out.stderr


def test_classify_ood_is_refused_with_dmn_which_votes_over_no_k_neighbours(on_disk):
    memory, queries = on_disk
    for dmn in (["--vote", "dmn"], ["--dmn-stream", "camera1"]):
        out = run("classify", queries, "--memory", memory, "--ood", *dmn)
        assert out.exit_code == 2 and "--vote dmn fuses text, static and dynamic memories" in out.output, out.output
