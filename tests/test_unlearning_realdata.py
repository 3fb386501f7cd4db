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


@pytest.mark.realdata
def test_a_photo_classified_through_a_dmn_stream_leaves_it_when_forgotten_by_its_path_or_id(tiny_imagenet, lite0,
                                                                                           tmp_path, monkeypatch):
    # A removal request names files: those photos had also been classified through a DMN stream (`--dmn-stream`),
    # which keeps each query's feature. Forgotten by path or id, not by likeness, they stayed there.
    from retrieval.dmn import DynamicMemory

    monkeypatch.setenv("VMEM_HOME", str(tmp_path / "home"))
    classes = sorted(p for p in (tiny_imagenet / "train").iterdir() if p.is_dir())[:3]
    photos = [sorted(c.iterdir())[:5] for c in classes]
    memory = VisualMemory(open_store(tmp_path / "memory", lite0.spec), lite0, reranker=None)
    for c, files in zip(classes, photos, strict=True):
        memory.add(files, c.name)
    by_path, by_id, kept = photos[0][0], photos[1][0], photos[2][0]
    memory.classify([by_path, by_id, kept], rule="dmn", dmn_stream="s")

    def like(stream: np.ndarray, photo: Path) -> int:
        f = lite0.embed([str(photo)])[0]
        return int(((stream @ f) / np.linalg.norm(stream, axis=1) / np.linalg.norm(f) >= 0.999).sum())

    def queries(stream: DynamicMemory) -> np.ndarray:
        return np.concatenate([stream.entries(label)[0] for label in stream.counts()])

    assert [like(queries(memory.dmn.stream("s")), p) for p in (by_path, by_id, kept)] == [1, 1, 1]
    assert memory.forget(source_prefix=str(by_path)) == 1
    assert memory.forget(ids=[memory.point_id_of_source(str(by_id.resolve()))]) == 1
    saved = DynamicMemory.load(memory.dmn.stream_path("s"))  # the stream's file, as a restart reads it
    for stream in (memory.dmn.stream("s"), saved):
        assert [like(queries(stream), p) for p in (by_path, by_id, kept)] == [0, 0, 1]
    memory.close()
