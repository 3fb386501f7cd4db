"""Features are computed once per file content and reused; a changed file is embedded again."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from retrieval import Featurizer, Preprocessing
from retrieval.feature_cache import FeatureCache
from tests.conftest import make_image


class MeanColour(Featurizer):
    """A 3-d 'encoder' (mean RGB) that counts how many images it embedded."""

    name = "mean-colour"
    dim = 3
    preprocessing = Preprocessing(resize=8, crop=8, mean=(0, 0, 0), std=(1, 1, 1))

    def __init__(self) -> None:
        super().__init__("cpu")
        self.embedded = 0

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        self.embedded += len(batch)
        return batch.mean(dim=(2, 3)) + 1e-3


def test_cache_reuses_features_and_re_embeds_changed_files(tmp_path):
    files = []
    for i, colour in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255)]):
        f = tmp_path / f"{i}.png"
        f.write_bytes(make_image(colour, fmt="PNG"))
        files.append(f)
    enc = MeanColour()
    cache_root = tmp_path / "cache"

    feats, ok, failures = FeatureCache(cache_root, enc).features_for(files, num_workers=0)
    assert ok == [0, 1, 2] and not failures and enc.embedded == 3
    assert np.argmax(feats, axis=1).tolist() == [0, 1, 2]

    # A new process (a new cache object) finds everything on disk: nothing is embedded again.
    again, ok2, _ = FeatureCache(cache_root, enc).features_for(files, num_workers=0)
    assert enc.embedded == 3 and ok2 == ok and np.array_equal(again, feats)

    # A moved file is still a hit (keyed by content); a changed file is embedded again.
    moved = tmp_path / "moved.png"
    files[0].rename(moved)
    files[1].write_bytes(make_image((255, 255, 0), fmt="PNG"))
    after, _, _ = FeatureCache(cache_root, enc).features_for([moved, files[1]], num_workers=0)
    assert enc.embedded == 4
    assert np.array_equal(after[0], feats[0]) and not np.array_equal(after[1], feats[1])


def test_failures_are_reported_and_never_cached(tmp_path):
    good, bad = tmp_path / "good.png", tmp_path / "bad.jpg"
    good.write_bytes(make_image(fmt="PNG"))
    bad.write_bytes(b"garbage")
    enc = MeanColour()
    feats, ok, failures = FeatureCache(tmp_path / "c", enc).features_for([bad, good], num_workers=0)
    assert ok == [1] and feats.shape == (1, 3)
    assert [f.index for f in failures] == [0] and "not a recognised image" in failures[0].reason
    bad.write_bytes(make_image(fmt="PNG", color=(1, 2, 3)))  # fixed on disk: now it embeds
    _, ok, failures = FeatureCache(tmp_path / "c", enc).features_for([bad, good], num_workers=0)
    assert ok == [0, 1] and not failures


def test_a_missing_file_is_a_failure_like_an_undecodable_one_not_an_error(tmp_path):
    good, gone = tmp_path / "good.png", tmp_path / "gone.jpg"
    good.write_bytes(make_image(fmt="PNG"))
    feats, ok, failures = FeatureCache(tmp_path / "c", MeanColour()).features_for([gone, good, gone],
                                                                                  num_workers=0)
    assert ok == [1] and feats.shape == (1, 3)
    assert [(f.index, f.reason) for f in failures] == [(0, f"{gone}: no such file"), (2, f"{gone}: no such file")]


def test_caches_of_different_featurizers_do_not_mix(tmp_path):
    f = tmp_path / "x.png"
    f.write_bytes(make_image(fmt="PNG"))
    a, b = MeanColour(), MeanColour()
    b.name = "mean-colour-v2"
    FeatureCache(tmp_path / "c", a).features_for([f], num_workers=0)
    FeatureCache(tmp_path / "c", b).features_for([f], num_workers=0)
    assert a.embedded == 1 and b.embedded == 1


def test_a_second_memory_builds_from_cached_features(tmp_path):
    from retrieval import open_store, scan_imagefolder
    from vmem import VisualMemory

    for label, colour in {"red": (250, 0, 0), "blue": (0, 0, 250)}.items():
        (tmp_path / "data" / label).mkdir(parents=True)
        for i in range(3):
            shade = (colour[0] - i, 0, colour[2] - i)
            (tmp_path / "data" / label / f"{i}.png").write_bytes(make_image(shade, fmt="PNG"))
    (tmp_path / "data" / "red" / "broken.png").write_bytes(b"nope")
    items = scan_imagefolder(tmp_path / "data")
    enc = MeanColour()
    for name in ("first", "second"):
        mem = VisualMemory(open_store(tmp_path / name, enc.spec), enc, reranker=None)
        report = mem.build(items, num_workers=0, feature_cache=tmp_path / "cache")
        assert report.added == 6 and len(report.failed) == 1
        assert mem.classify([make_image((240, 0, 0), fmt="PNG")], k=3)[0].label == "red"
        mem.close()
    # 6 images embedded by the first build, none by the second, plus one query per classify call.
    assert enc.embedded == 6 + 2


def test_a_cache_under_the_home_folder_is_taken_with_a_tilde(tmp_path, monkeypatch):
    # `feature_cache="~/cache"` from Python, or `--feature-cache=~/cache` (no shell expands ~ after the =), made
    # a folder named ~ in the working directory and cached there
    from retrieval import open_store, scan_imagefolder
    from vmem import VisualMemory
    from vmem.cli._common import feature_cache_root

    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    _colour_files(work / "data" / "red", [(250, 0, 0), (240, 0, 0)])
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    enc = MeanColour()
    with VisualMemory(open_store(tmp_path / "memory", enc.spec), enc, reranker=None) as mem:
        assert mem.build(scan_imagefolder(work / "data"), num_workers=0, feature_cache="~/cache").added == 2
    assert [p.name for p in (home / "cache").iterdir()] == [FeatureCache(home / "cache", enc).dir.name]
    assert not (work / "~").exists()
    assert feature_cache_root(Path("~/features")) == home / "features"  # eval, tune and experiment's --cache


def _colour_files(folder, colours) -> list:
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i, colour in enumerate(colours):
        f = folder / f"{i}.png"
        f.write_bytes(make_image(colour, fmt="PNG"))
        files.append(f)
    return files


def test_new_features_are_appended_never_rewritten_and_read_through_a_map(tmp_path):
    enc = MeanColour()
    first = _colour_files(tmp_path / "a", [(250, 0, 0), (0, 250, 0)])
    second = _colour_files(tmp_path / "b", [(0, 0, 250), (250, 250, 0), (0, 250, 250)])
    cache = FeatureCache(tmp_path / "cache", enc)
    cache.features_for(first, num_workers=0)
    rows_file = cache.dir / "features.f32"
    before = rows_file.read_bytes()
    inode = rows_file.stat().st_ino
    cache.features_for(second, num_workers=0)
    # The same file, grown by exactly the new rows: a 1.28M-image build no longer rewrites its whole cache.
    assert rows_file.stat().st_ino == inode and rows_file.stat().st_size == 5 * 3 * 4
    assert rows_file.read_bytes()[: len(before)] == before
    assert (cache.dir / "hashes.txt").read_text().count("\n") == 5
    assert isinstance(cache.features, np.memmap) and cache.features.shape == (5, 3)


def test_a_torn_append_is_cut_off_and_nothing_else_is_lost(tmp_path):
    enc = MeanColour()
    files = _colour_files(tmp_path / "x", [(250, 0, 0), (0, 250, 0), (0, 0, 250)])
    cache = FeatureCache(tmp_path / "cache", enc)
    want, _, _ = cache.features_for(files[:2], num_workers=0)
    # A process killed mid-append: half a row, and a hash line without its row.
    with open(cache.dir / "features.f32", "ab") as fh:
        fh.write(b"\x00" * 5)
    with open(cache.dir / "hashes.txt", "a", encoding="utf-8") as fh:
        fh.write("f" * 64 + "\n" + "e" * 20)
    reopened = FeatureCache(tmp_path / "cache", enc)
    got, ok, _ = reopened.features_for(files[:2], num_workers=0)
    assert ok == [0, 1] and np.array_equal(got, want) and enc.embedded == 2 and len(reopened.index) == 2
    got3, ok3, _ = reopened.features_for(files, num_workers=0)  # the next append cuts the torn tail first
    assert ok3 == [0, 1, 2] and enc.embedded == 3
    assert (reopened.dir / "features.f32").stat().st_size == 3 * 3 * 4
    assert np.array_equal(FeatureCache(tmp_path / "cache", enc).features_for(files, num_workers=0)[0], got3)


def test_two_writers_on_one_cache_see_each_others_rows(tmp_path):
    enc = MeanColour()
    files = _colour_files(tmp_path / "x", [(250, 0, 0), (0, 250, 0), (0, 0, 250), (9, 9, 9)])
    a, b = FeatureCache(tmp_path / "cache", enc), FeatureCache(tmp_path / "cache", enc)
    a.features_for(files[:2], num_workers=0)
    b.features_for(files[1:3], num_workers=0)  # finds file 1 after re-reading; embeds only file 2
    a.features_for(files, num_workers=0)  # embeds only file 3
    assert enc.embedded == 4
    assert len(FeatureCache(tmp_path / "cache", enc).index) == 4


def test_a_cache_in_the_old_whole_file_layout_is_upgraded_once_with_its_rows(tmp_path):
    import json

    enc = MeanColour()
    files = _colour_files(tmp_path / "x", [(250, 0, 0), (0, 250, 0)])
    want, _, _ = FeatureCache(tmp_path / "fresh", enc).features_for(files, num_workers=0)
    old = FeatureCache(tmp_path / "cache", enc).dir
    for name in ("features.f32", "hashes.txt"):
        (old / name).unlink(missing_ok=True)
    from retrieval.feature_cache import file_sha256

    # What vmem wrote before 2026-12: the whole array, and {sha256: row} (rows in another order than files).
    np.save(old / "features.npy", want[::-1].astype(np.float32))
    (old / "index.json").write_text(json.dumps({file_sha256(files[0]): 1, file_sha256(files[1]): 0}))
    embedded = enc.embedded
    got, ok, _ = FeatureCache(tmp_path / "cache", enc).features_for(files, num_workers=0)
    assert ok == [0, 1] and np.array_equal(got, want) and enc.embedded == embedded  # nothing embedded again
    assert sorted(p.name for p in old.iterdir() if not p.name.startswith(".")) == ["features.f32", "hashes.txt"]


def test_an_upgrade_cut_short_resumes_without_losing_or_doubling_a_row(tmp_path):
    import json

    from retrieval.feature_cache import file_sha256

    enc = MeanColour()
    files = _colour_files(tmp_path / "x", [(250, 0, 0), (0, 250, 0), (0, 0, 250)])
    want, _, _ = FeatureCache(tmp_path / "cache", enc).features_for(files, num_workers=0)
    folder = FeatureCache(tmp_path / "cache", enc).dir
    # Killed after converting the first row: the new files hold it, the old ones (still there) hold all three.
    np.save(folder / "features.npy", want.astype(np.float32))
    (folder / "index.json").write_text(json.dumps({file_sha256(f): i for i, f in enumerate(files)}))
    (folder / "features.f32").write_bytes(want[:1].astype(np.float32).tobytes())
    (folder / "hashes.txt").write_text(file_sha256(files[0]) + "\n")
    embedded = enc.embedded
    cache = FeatureCache(tmp_path / "cache", enc)
    got, ok, _ = cache.features_for(files, num_workers=0)
    assert ok == [0, 1, 2] and np.array_equal(got, want) and enc.embedded == embedded
    assert len(cache.features) == 3 and not (folder / "features.npy").exists()


def _settled(files, seconds: float = 10.0) -> None:
    """Files last modified a while ago, as a dataset on disk is: their hashes may be remembered."""
    import os
    import time

    for f in files:
        past = time.time() - seconds
        os.utime(f, (past, past))


def test_unchanged_files_are_not_read_again_to_find_their_features(tmp_path, monkeypatch):
    from retrieval import feature_cache

    enc = MeanColour()
    files = _colour_files(tmp_path / "x", [(250, 0, 0), (0, 250, 0), (0, 0, 250)])
    _settled(files)
    read: list[str] = []
    real = feature_cache.file_sha256
    monkeypatch.setattr(feature_cache, "file_sha256", lambda p: (read.append(str(p)), real(p))[1])
    want, _, _ = FeatureCache(tmp_path / "cache", enc).features_for(files, num_workers=0)
    assert len(read) == 3
    # Another process, later: same paths, sizes, times and inodes, so no file is read to hash it.
    got, ok, _ = FeatureCache(tmp_path / "cache", enc).features_for(files, num_workers=0)
    assert len(read) == 3 and ok == [0, 1, 2] and np.array_equal(got, want) and enc.embedded == 3
    # Changed in place (new contents, new time): read, and embedded again.
    files[1].write_bytes(make_image((9, 9, 250), fmt="PNG"))
    _settled(files[1:2], seconds=5)
    changed, _, _ = FeatureCache(tmp_path / "cache", enc).features_for(files, num_workers=0)
    assert read[3:] == [str(files[1])] and enc.embedded == 4 and not np.array_equal(changed[1], want[1])
    # Rewritten in place with as many bytes, its modification time put back (cp --preserve=timestamps does):
    # only the change time tells, and it is read and embedded again all the same.
    import os

    before = os.stat(files[2])
    same_size = next(data for c in range(256) if len(data := make_image((c, 250, 9), fmt="PNG")) == before.st_size)
    files[2].write_bytes(same_size)
    os.utime(files[2], ns=(before.st_atime_ns, before.st_mtime_ns))
    again, _, _ = FeatureCache(tmp_path / "cache", enc).features_for(files, num_workers=0)
    assert read[4:] == [str(files[2])] and enc.embedded == 5 and not np.array_equal(again[2], want[2])


def test_a_file_modified_moments_ago_is_hashed_every_time(tmp_path, monkeypatch):
    from retrieval import feature_cache

    enc = MeanColour()
    [fresh] = _colour_files(tmp_path / "x", [(250, 0, 0)])  # just written: a rewrite could keep its mtime
    read: list[str] = []
    real = feature_cache.file_sha256
    monkeypatch.setattr(feature_cache, "file_sha256", lambda p: (read.append(str(p)), real(p))[1])
    for _ in range(2):
        FeatureCache(tmp_path / "cache", enc).features_for([fresh], num_workers=0)
    assert len(read) == 2 and enc.embedded == 1


def test_odd_file_names_are_remembered_too(tmp_path, monkeypatch):
    from retrieval import feature_cache

    enc = MeanColour()
    folder = tmp_path / "x"
    folder.mkdir()
    odd = [folder / "tab\there.png", folder / "line\u2028sep.png", folder / "caf\u00e9.png"]
    for i, f in enumerate(odd):
        f.write_bytes(make_image((40 * i, 200, 9), fmt="PNG"))
    _settled(odd)
    read: list[str] = []
    real = feature_cache.file_sha256
    monkeypatch.setattr(feature_cache, "file_sha256", lambda p: (read.append(str(p)), real(p))[1])
    for _ in range(2):
        _, ok, _ = FeatureCache(tmp_path / "cache", enc).features_for(odd, num_workers=0)
        assert ok == [0, 1, 2]
    assert len(read) == 3 and enc.embedded == 3


def test_each_copy_of_a_broken_file_fails_for_its_own_reason(tmp_path):
    # A copy's reason was its first file's with the name swapped: the HEIC hint of `photo.heic` was said of the
    # same bytes saved as `photo.jpg`, which no conversion of a HEIC is needed to read
    files = [tmp_path / "photo.heic", tmp_path / "photo.jpg", tmp_path / "photo copy.heic"]
    for f in files:
        f.write_bytes(b"the bytes of a photo the phone sent")
    _, ok, failures = FeatureCache(tmp_path / "cache", MeanColour()).features_for(files, num_workers=0)
    unknown = "not a recognised image format (JPEG, PNG, WebP, GIF, BMP, TIFF, ICO or AVIF)"
    hint = ": vmem does not decode .heic photos; convert them to JPEG"
    assert not ok and [f.reason for f in failures] == [f"{files[0]}: {unknown}{hint}", f"{files[1]}: {unknown}",
                                                       f"{files[2]}: {unknown}{hint}"]


def test_the_table_of_file_hashes_is_compacted_when_changed_files_fill_it(tmp_path, monkeypatch):
    from retrieval import feature_cache

    monkeypatch.setattr(feature_cache, "_COMPACT_MIN_RECORDS", 4)
    enc = MeanColour()
    files = _colour_files(tmp_path / "x", [(250, 0, 0), (0, 250, 0)])
    table = lambda: (tmp_path / "cache").glob("*/file-hashes.txt").__next__()  # noqa: E731
    for seconds in (30, 20, 10):  # the same two files changed (new times) twice: 6 records, 2 paths
        _settled(files, seconds=seconds)
        FeatureCache(tmp_path / "cache", enc).features_for(files, num_workers=0)
    assert len(table().read_text().splitlines()) == 6
    other = FeatureCache(tmp_path / "cache", enc)  # a process with the whole table read, before the rewrite
    other._load_file_hashes()
    read: list[str] = []
    real = feature_cache.file_sha256
    monkeypatch.setattr(feature_cache, "file_sha256", lambda p: (read.append(str(p)), real(p))[1])
    got, ok, _ = FeatureCache(tmp_path / "cache", enc).features_for(files, num_workers=0)
    lines = table().read_text().splitlines()
    assert len(lines) == 2 and ok == [0, 1] and read == []  # each path's last record kept: nothing re-read
    # The process that read the old table notices the new file and reads it anew, not from its old offset.
    files.append(_colour_files(tmp_path / "y", [(9, 9, 9)])[0])
    _settled(files[2:])
    FeatureCache(tmp_path / "cache", enc).features_for(files, num_workers=0)
    again, ok, _ = other.features_for(files, num_workers=0)
    assert ok == [0, 1, 2] and read == [str(files[2])] and np.array_equal(again[:2], got)


def test_a_local_models_features_are_cached_per_weights_not_per_folder_name(tmp_path):
    # dinov2:/path names a folder: retrained weights saved there must not be answered with the old features.
    from retrieval import load_featurizer
    from retrieval.feature_cache import featurizer_key
    from tests._reliability_fixtures import save_tiny_dinov2

    name = save_tiny_dinov2(tmp_path / "model")
    before = featurizer_key(load_featurizer(name, device="cpu"))
    assert featurizer_key(load_featurizer(name, device="cpu")) == before  # the same weights: the same key
    model = load_featurizer(name, device="cpu").model
    model.save_pretrained(tmp_path / "model")  # the same weights written again (a copy, a touch): still the same
    assert featurizer_key(load_featurizer(name, device="cpu")) == before
    with torch.no_grad():
        next(model.parameters()).add_(0.01)
    model.save_pretrained(tmp_path / "model")  # "retrained", same folder
    assert featurizer_key(load_featurizer(name, device="cpu")) != before
    # A built-in model's key is as it was before local weights were told apart: its caches stay valid.
    assert featurizer_key(load_featurizer("efficientnet-lite0")) == "efficientnet-lite0-236657c26544"


def test_a_cache_of_the_same_model_that_is_not_read_is_named(tmp_path, caplog):
    # An upgrade whose preprocessing settings changed form re-embedded a whole dataset without a word.
    enc = MeanColour()
    FeatureCache(tmp_path, enc)
    (tmp_path / "mean-colour-0123456789ab").mkdir()  # an older vmem's cache of the same model
    (tmp_path / "mean-colour-0123456789ab" / "features.f32").write_bytes(b"\0" * 2_000_000)
    (tmp_path / "other-model-0123456789ab").mkdir()  # another model's: none of this one's business
    with caplog.at_level("WARNING"):
        FeatureCache(tmp_path, enc)
    assert "mean-colour-0123456789ab: made by another vmem version" in caplog.text
    assert "other-model" not in caplog.text and "free 2 MB" in caplog.text


def test_a_cache_the_disk_takes_no_more_of_still_gives_every_feature(tmp_path, monkeypatch, caplog):
    # The cache is a speed-up: full, it had ended an evaluation with a traceback once every query was embedded.
    import errno

    files = []
    for i, colour in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255)]):
        files.append(tmp_path / f"{i}.png")
        files[-1].write_bytes(make_image(colour, fmt="PNG"))
    enc = MeanColour()
    cache = FeatureCache(tmp_path / "cache", enc)
    cache.features_for(files[:1], num_workers=0)  # one already cached

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(FeatureCache, "_write_rows", disk_full)
    feats, ok, failures = cache.features_for(files, num_workers=0)
    assert ok == [0, 1, 2] and not failures and np.argmax(feats, axis=1).tolist() == [0, 1, 2]
    assert "takes no more (No space left on device): features computed now are used, not kept" in caplog.text
    monkeypatch.undo()
    FeatureCache(tmp_path / "cache", enc).features_for(files, num_workers=0)
    assert enc.embedded == 1 + 2 + 2  # the two not kept are embedded again, once there is room


def test_each_copy_of_a_broken_file_fails_under_its_own_name(tmp_path):
    # A content is embedded once, for its first file: the copies of a broken one were neither answered nor failed,
    # and vanished from an evaluation's count (6 broken queries, 1 failed) and a cached build's report
    files = [tmp_path / "ok.png", tmp_path / "broken.jpg", tmp_path / "copy of broken.jpg", tmp_path / "again.jpg"]
    files[0].write_bytes(make_image(fmt="PNG"))
    for f in files[1:]:
        f.write_bytes(b"the same broken download")
    feats, ok, failures = FeatureCache(tmp_path / "cache", MeanColour()).features_for(files, num_workers=0)
    assert ok == [0] and len(feats) == 1
    assert [(f.index, f.source) for f in failures] == [(i, str(files[i])) for i in (1, 2, 3)]
    assert [f.reason for f in failures] == [f"{files[i]}: not a recognised image format (JPEG, PNG, WebP, GIF, BMP, "
                                            "TIFF, ICO or AVIF)" for i in (1, 2, 3)]
