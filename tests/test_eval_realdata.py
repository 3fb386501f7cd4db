"""The harness on real Tiny-ImageNet features (EfficientNet-Lite0): numbers land where independent runs put them.

Memory: all 20,200 train images; queries: a fixed sample of 600 val images. Features come from the shared
cache (tests/realdata.py), so this is fast once the cache is warm.

On the full 10,100 val queries (exact search, k = 50; docs/results/tiny-imagenet-lite0) we measured plurality 55.0,
distance 55.0, softmax 56.8, rank 55.5, confirmed there by a query-by-query loop over `retrieval.vote` and by the
Qdrant Edge index. A 600-query sample has a standard error near 2 points.
"""

from __future__ import annotations

import pytest
from conftest import FEATURE_CACHE
from realdata import cached_features, val_sample

from eval.harness import QuerySet, RunInfo, evaluate
from eval.scoring import MemoryArrays
from retrieval import scan_imagefolder

pytestmark = pytest.mark.realdata

FULL_VAL_K50 = {"plurality": 0.550, "distance": 0.550, "softmax": 0.568, "rank": 0.555}


@pytest.fixture(scope="module")
def report(tiny_imagenet, lite0):
    train = cached_features(FEATURE_CACHE, lite0, scan_imagefolder(tiny_imagenet / "train"))
    val = cached_features(FEATURE_CACHE, lite0, val_sample(tiny_imagenet, 600, seed=0))
    memory = MemoryArrays(train.features, train.labels, [it.source for it in train.items])
    queries = QuerySet(val.features, [it.source for it in val.items], [(lab,) for lab in val.labels], [])
    run = RunInfo(dataset="tiny-imagenet val (600)", format="imagefolder", queries=600, memory="tiny-imagenet train",
                  memory_points=len(memory), featurizer=lite0.name, search="exact")
    return evaluate(memory, queries, run)


def test_accuracy_at_k50_is_close_to_the_full_val_measurement(report):
    acc = report.variants["all"].accuracy
    assert report.run.memory_points == 20_200
    for rule, ref in FULL_VAL_K50.items():
        assert acc[rule][49] == pytest.approx(ref, abs=0.06), rule


def test_neighbours_get_less_reliable_with_rank_and_hits_grow_with_k(report):
    s = report.variants["all"]
    assert s.neighbor_accuracy[0] > s.neighbor_accuracy[99] + 0.1
    assert s.hit_rate[99] > s.hit_rate[9] > s.hit_rate[0]
    assert s.hit_rate[0] == pytest.approx(s.accuracy["plurality"][0])  # 1-NN is the first neighbour's label
    # Calibration: the more neighbours agree with the plurality label, the more often it is right.
    bins = [b for b in s.calibration if b.queries >= 20]
    assert bins[-1].accuracy > bins[0].accuracy + 0.3
