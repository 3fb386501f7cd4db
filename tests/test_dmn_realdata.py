"""The dmn rule on real data: a fixed subset of Tiny-ImageNet train as the memory (the first 30 images of each
class, 6,060 points: tests/realdata.py), a fixed val sample as a stream (memory-only mode).

Guards, on this smaller memory, the result in docs/results/dmn.md (measured there with all 20,200 train images and
all of val): the DMN static readout beats rank voting at k = 50, and the dynamic memory (written before it is
read, as in the paper) stays within a point of it.
"""

from __future__ import annotations

import numpy as np
import pytest

from retrieval import open_store
from tests.conftest import FEATURE_CACHE
from tests.realdata import cached_features, train_subset, val_sample
from vmem import VisualMemory, VoteSettings

N_QUERIES = 600


@pytest.mark.realdata
@pytest.mark.slow
def test_dmn_memory_only_on_tiny_imagenet(tiny_imagenet, lite0, tmp_path):
    train = cached_features(FEATURE_CACHE, lite0, train_subset(tiny_imagenet))
    queries = cached_features(FEATURE_CACHE, lite0, val_sample(tiny_imagenet, N_QUERIES, seed=0))
    store = open_store(tmp_path / "memory", lite0.spec)
    for start in range(0, len(train.items), 2048):
        chunk = train.items[start : start + 2048]
        store.add(train.features[start : start + 2048], [it.label for it in chunk], [it.source for it in chunk])
    store.optimize()
    memory = VisualMemory(store, lite0, reranker=None)

    def accuracy(results) -> float:
        return 100 * float(np.mean([r.label == t for r, t in zip(results, queries.labels, strict=True)]))

    rank = accuracy(memory.classify_vectors(queries.features, VoteSettings(rule="rank", k=50), exact=True))
    with_stream = memory.classify_dmn(queries.features, stream="val", exact=True)
    dynamic = accuracy(with_stream)
    # Each query's pseudo-label is the static readout's answer (memory-only: nothing else is read before the
    # stream), read from this run rather than a second classification of the 600 queries; the first 60 are
    # classified without a stream too, and answered so.
    static_only = memory.classify_dmn(queries.features[:60], exact=True)
    assert [r.label for r in static_only] == [r.dmn.pseudo_label for r in with_stream[:60]]
    static = 100 * float(np.mean([r.dmn.pseudo_label == t for r, t in zip(with_stream, queries.labels, strict=True)]))
    print(f"\nTiny-ImageNet, EfficientNet-Lite0, {N_QUERIES} val queries: rank k=50 {rank:.2f}%, "
          f"dmn static {static:.2f}%, dmn static + dynamic {dynamic:.2f}%")
    # +9.2 on this sample (57.8 % against 48.7 %; other seeded 600-query samples: +2.0, +7.2, +5.2). Prototypes
    # left unnormalised, a softmax vote in effect, reach +4.5 here. With all of train: +5.2 here, +4.5 on all of val.
    assert static >= rank + 5.0
    assert abs(dynamic - static) <= 1.0  # equal here
    assert memory.dmn.stream("val").updates == N_QUERIES
