"""Property-based tests (hypothesis): voting invariants, request parsing, and image decoding fuzzed.

The HTTP API as a whole is fuzzed from its OpenAPI spec in tests/test_schemathesis.py; these go
below it, where a bad case is cheap to find and to shrink.
"""

from __future__ import annotations

import base64
import io
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from pydantic import ValidationError

from retrieval import VoteRule, vote
from retrieval.images import ImageDecodeError, load_image
from retrieval.voting import TIE_RTOL
from server.schemas import ClassifyJSON, ClassifyQuery

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

labels_st = st.sampled_from(["cat", "dog", "猫", 'a "quoted" one', "line\nbreak", "x"])
# Within the bounds the API accepts (server.schemas.ClassifyQuery).
alpha_st = st.floats(1e-3, 1e6, allow_nan=False)
tau_st = st.floats(1e-3, 1e3, allow_nan=False)


@st.composite
def neighbours(draw, min_size: int = 1):
    n = draw(st.integers(min_size, 30))
    labs = draw(st.lists(labels_st, min_size=n, max_size=n))
    sims = sorted(draw(st.lists(st.floats(-1, 1, allow_nan=False), min_size=n, max_size=n)), reverse=True)
    return labs, sims


@FAST
@given(neighbours(), st.sampled_from(list(VoteRule)), alpha_st, tau_st)
def test_the_vote_is_a_neighbour_label_with_the_top_score_and_scores_sum_to_one(nb, rule, alpha, tau):
    labs, sims = nb
    out = vote(labs, sims, rule, alpha, tau)
    assert out.label in labs
    assert set(out.scores) == set(labs)
    assert all(math.isfinite(s) and s >= 0 for s in out.scores.values()), out.scores
    assert math.isclose(sum(out.scores.values()), 1.0, rel_tol=1e-9) or sum(out.scores.values()) == 0
    assert next(iter(out.scores)) == out.label
    # Totals within TIE_RTOL of the best are a tie (summation-order noise), won by the best-ranked neighbour.
    assert out.scores[out.label] >= max(out.scores.values()) * (1 - 2 * TIE_RTOL)
    assert np.all(np.isfinite(out.weights)) and np.all(out.weights >= 0)


@FAST
@given(neighbours(), st.sampled_from(list(VoteRule)), alpha_st, tau_st)
def test_renaming_labels_renames_the_answer(nb, rule, alpha, tau):
    labs, sims = nb
    rename = {lab: f"renamed:{lab[::-1]}" for lab in set(labs)}
    out = vote(labs, sims, rule, alpha, tau)
    renamed = vote([rename[lab] for lab in labs], sims, rule, alpha, tau)
    assert renamed.label == rename[out.label]


@FAST
@given(neighbours(), st.sampled_from(list(VoteRule)), alpha_st, tau_st)
def test_one_more_vote_for_the_winner_keeps_it_the_winner(nb, rule, alpha, tau):
    labs, sims = nb
    out = vote(labs, sims, rule, alpha, tau)
    more = vote([*labs, out.label], [*sims, sims[-1]], rule, alpha, tau)
    assert more.label == out.label


# ------------------------------------------------------------------ request parsing


query_values = st.one_of(st.integers(-10**12, 10**12).map(str), st.floats(allow_nan=True).map(str),
                         st.text(max_size=20), st.sampled_from(["rank", "softmax", "true", "false", ""]))


@FAST
@given(st.dictionaries(st.sampled_from(["k", "vote", "alpha", "tau", "rerank", "template", "colour"]),
                       query_values, max_size=5))
def test_a_query_string_either_parses_within_bounds_or_is_a_validation_error(params):
    try:
        q = ClassifyQuery.model_validate(params)
    except ValidationError:
        return
    assert q.k is None or 1 <= q.k <= 1000
    assert q.alpha is None or (1e-3 <= q.alpha <= 1e6 and math.isfinite(q.alpha))
    assert q.tau is None or (1e-3 <= q.tau <= 1e3 and math.isfinite(q.tau))


@FAST
@given(st.binary(min_size=1, max_size=256))
def test_base64_images_round_trip(data):
    encoded = base64.b64encode(data).decode()
    assert ClassifyJSON.model_validate({"image": encoded}).image == data
    assert ClassifyJSON.model_validate({"image": f"data:image/png;base64,{encoded}"}).image == data


@FAST
@given(st.text(max_size=64))
def test_any_text_as_an_image_parses_or_is_a_validation_error(text):
    try:
        parsed = ClassifyJSON.model_validate({"image": text})
    except ValidationError:
        return
    # Bytes, possibly none: an empty image is refused when it is decoded, as that image's own failure.
    assert isinstance(parsed.image, bytes)


# ------------------------------------------------------------------ image decoding, fuzzed


def _seed_images() -> list[bytes]:
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8))
    out = []
    for fmt, kw in [("PNG", {}), ("JPEG", {}), ("GIF", {}), ("WEBP", {}), ("BMP", {}), ("TIFF", {})]:
        buf = io.BytesIO()
        img.save(buf, format=fmt, **kw)
        out.append(buf.getvalue())
    return out


SEEDS = _seed_images()


@st.composite
def mutated_images(draw):
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["flip", "cut", "insert"]))
        pos = draw(st.integers(0, len(data) - 1))
        if kind == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "cut":
            del data[pos:]
        else:
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        if not data:
            break
    return bytes(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(mutated_images(), st.binary(max_size=64)))
def test_any_bytes_decode_to_rgb_or_raise_image_decode_error(data):
    # The server turns ImageDecodeError into a 400; any other exception would be a 500.
    try:
        img = load_image(data)
    except ImageDecodeError:
        return
    except Exception as exc:  # pragma: no cover - the failure message is the point
        pytest.fail(f"{type(exc).__name__} escaped load_image: {exc}")
    assert img.mode == "RGB" and img.width >= 1 and img.height >= 1
