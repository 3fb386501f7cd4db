"""Unlearning a photo by what it looks like, on real photos: a fixed subset of Tiny-ImageNet train as the memory
(the first 30 images of each class, 6,060 points: tests/realdata.py).

Guards, on the hardest photo of that memory, what README "Forgetting" measured over 300
(docs/benchmarks/near_copies.py): a copy recompressed as JPEG and stored under another path, and an enlarged one
uploaded, are within the default threshold of the original, while the most similar *other* photo of the memory is
not; so `forget_like` takes the photo and its copies and leaves that photo.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from retrieval import open_store
from tests.conftest import FEATURE_CACHE, reencoded
from tests.realdata import cached_features, train_subset
from vmem import COPY_SIMILARITY, VisualMemory, upload_source


@pytest.mark.realdata
def test_copies_under_other_names_are_forgotten_and_the_most_similar_other_photo_stays(tiny_imagenet, lite0,
                                                                                       tmp_path):
    train = cached_features(FEATURE_CACHE, lite0, train_subset(tiny_imagenet))
    memory = VisualMemory(open_store(tmp_path / "memory", lite0.spec), lite0, reranker=None)
    memory.store.add(train.features, train.labels, [it.source for it in train.items])
    # The hardest case the memory holds: the photo with the most similar other photo (n01984695_0.JPEG, a lobster
    # 0.888 like another; all 20,200 train images hold none closer than 0.919, files stored twice aside).
    nearest = np.empty(len(train.items))
    nearest_at = np.empty(len(train.items), dtype=int)
    for start in range(0, len(train.items), 2048):
        block = train.features[start : start + 2048] @ train.features.T
        block[np.arange(len(block)), np.arange(start, start + len(block))] = -1
        nearest[start : start + len(block)], nearest_at[start : start + len(block)] = block.max(1), block.argmax(1)
    i = int(np.argmax(nearest))
    photo, other = train.items[i], train.items[nearest_at[i]]
    assert nearest[i] < COPY_SIMILARITY

    # The person's photo was also saved as a JPEG into another folder, and uploaded enlarged twice.
    data = Path(photo.source).read_bytes()
    (tmp_path / "downloads").mkdir()
    copy = tmp_path / "downloads" / "IMG_0042.jpg"
    copy.write_bytes(reencoded(data, "JPEG", quality=90))
    enlarged = reencoded(data, "JPEG", scale=2, quality=90)
    memory.add([copy, enlarged], photo.label)

    found = memory.near_duplicates(photo.source)
    assert {d.source for d in found} == {photo.source, str(copy.resolve()), upload_source(enlarged)}
    assert found[0].source == photo.source and min(d.similarity for d in found) >= 0.95  # 0.985 and 0.986 here

    gone = memory.forget_like(photo.source)
    assert gone == found and memory.store.count() == len(train.items) - 1
    assert memory.point(memory.point_id_of_source(other.source)) is not None  # the most similar other photo stays
    assert memory.near_duplicates(copy) == []  # nothing of it is left, asked by the copy too
    memory.close()
