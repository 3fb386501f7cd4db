"""Each evaluation-set reader on tiny fabricated files laid out exactly as the real dataset ships."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import make_image

from eval.datasets import (
    DatasetFormat,
    align_labels,
    imagenet_wnids,
    read_classes_file,
    read_dataset,
)
from retrieval import DatasetError

WNIDS = imagenet_wnids()


def put(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(make_image())
    return path


def val_name(i: int) -> str:
    return f"ILSVRC2012_val_{i:08d}.JPEG"


def test_imagenet_wnids_are_the_sorted_1000():
    assert len(WNIDS) == 1000 and sorted(WNIDS) == WNIDS and WNIDS[0] == "n01440764"


@pytest.mark.parametrize("fmt", ["imagefolder", "imagenet-sketch"])
def test_imagefolder_layouts_read_synset_folders(tmp_path, fmt):
    put(tmp_path / "n01440764" / "a.JPEG")
    put(tmp_path / "n01443537" / "sub" / "b.png")
    ds = read_dataset(tmp_path, fmt)
    assert [(Path(it.source).name, it.label) for it in ds.items] == [("a.JPEG", "n01440764"), ("b.png", "n01443537")]
    assert ds.classes is None  # all classes take part


@pytest.mark.parametrize("fmt", ["imagenet-a", "imagenet-r"])
def test_200_class_sets_are_restricted_to_their_own_classes(tmp_path, fmt, caplog):
    for w in WNIDS[10:13]:
        put(tmp_path / w / "x.jpg")
    ds = read_dataset(tmp_path, fmt)
    assert ds.classes == WNIDS[10:13]
    # A partial copy narrows the restriction: it is used, and said.
    assert f"has 3 class folders, not {fmt}'s 200: predictions are restricted to the 3 present" in caplog.text


def test_imagenet_val_flat_with_kaggle_loc_solution_four_levels_up(tmp_path):
    val = tmp_path / "ILSVRC" / "Data" / "CLS-LOC" / "val"
    for i in (1, 2, 3):
        put(val / val_name(i))
    (tmp_path / "LOC_val_solution.csv").write_text(
        "ImageId,PredictionString\n"
        "ILSVRC2012_val_00000002,n01443537 10 20 30 40 n01443537 1 2 3 4\n"
        "ILSVRC2012_val_00000001,n01751748 0 0 5 5\n"
    )
    ds = read_dataset(val, "imagenet-val")
    assert [(Path(it.source).stem, it.label) for it in ds.items] == [
        ("ILSVRC2012_val_00000001", "n01751748"), ("ILSVRC2012_val_00000002", "n01443537")]
    assert [Path(s).name for s in ds.skipped] == [val_name(3)]  # not in the solution file


def test_imagenet_val_devkit_ground_truth_uses_devkit_ids_not_sorted_index(tmp_path):
    scipy_io = pytest.importorskip("scipy.io")
    val = tmp_path / "val"
    for i in (1, 2):
        put(val / val_name(i))
    devkit = tmp_path / "ILSVRC2012_devkit_t12" / "data"
    devkit.mkdir(parents=True)
    (devkit / "ILSVRC2012_validation_ground_truth.txt").write_text("2\n1\n")
    # The devkit orders ids by the WordNet hierarchy: id 1 is kit fox, id 2 English setter.
    rec = np.array([(1, "n02119789", "kit fox", 0), (2, "n02100735", "English setter", 0),
                    (1001, "n00001740", "entity", 3)],
                   dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O"), ("num_children", "O")])
    scipy_io.savemat(devkit / "meta.mat", {"synsets": rec})
    ds = read_dataset(val, "imagenet-val", labels_file=devkit / "ILSVRC2012_validation_ground_truth.txt")
    assert [it.label for it in ds.items] == ["n02100735", "n02119789"]


def test_imagenet_val_devkit_ids_from_a_text_mapping(tmp_path):
    put(tmp_path / "val" / val_name(1))
    (tmp_path / "gt.txt").write_text("2\n")
    (tmp_path / "ids.txt").write_text("n02119789\nn02100735\n")
    ds = read_dataset(tmp_path / "val", "imagenet-val", labels_file=tmp_path / "gt.txt",
                      devkit_synsets=tmp_path / "ids.txt")
    assert ds.items[0].label == "n02100735"


@pytest.mark.parametrize(("ground_truth", "says"), [
    ("0\n", "the label of image 1 is 0, not a devkit class id (1..2 in ids.txt)"),  # was read as the last class
    ("3\n", "the label of image 1 is 3, not a devkit class id"),
    ("two\n", "holds something that is no devkit class id"),
])
def test_imagenet_val_ground_truth_outside_the_devkit_ids_is_refused(tmp_path, ground_truth, says):
    put(tmp_path / "val" / val_name(1))
    (tmp_path / "gt.txt").write_text(ground_truth)
    (tmp_path / "ids.txt").write_text("n02119789\nn02100735\n")
    with pytest.raises(DatasetError) as err:
        read_dataset(tmp_path / "val", "imagenet-val", labels_file=tmp_path / "gt.txt",
                     devkit_synsets=tmp_path / "ids.txt")
    assert says in str(err.value)


@pytest.mark.parametrize("beside", ["ILSVRC2012_validation_ground_truth.txt", "LOC_val_solution.csv"])
def test_imagenet_val_takes_the_labels_file_nearest_its_images(tmp_path, beside):
    # A LOC_val_solution.csv a few folders up (another copy's, Kaggle's layout) had won over the ground truth
    # right beside the images, whatever the distance
    val = tmp_path / "kaggle" / "ILSVRC" / "Data" / "CLS-LOC" / "val"
    put(val / val_name(1))
    (tmp_path / "ids.txt").write_text("n02119789\nn02100735\n")
    files = {"ILSVRC2012_validation_ground_truth.txt": ("2\n", "n02100735"),  # devkit id 2 in ids.txt
             "LOC_val_solution.csv": ("ImageId,PredictionString\nILSVRC2012_val_00000001,n01751748 0 0 5 5\n",
                                      "n01751748")}
    for name, (text, _) in files.items():
        (val if name == beside else tmp_path / "kaggle").joinpath(name).write_text(text)  # the other 4 levels up
    ds = read_dataset(val, "imagenet-val", devkit_synsets=tmp_path / "ids.txt")
    assert [it.label for it in ds.items] == [files[beside][1]]


def test_imagenet_val_without_labels_file_says_what_is_missing(tmp_path):
    put(tmp_path / "val" / val_name(1))
    with pytest.raises(DatasetError, match=r"LOC_val_solution\.csv"):
        read_dataset(tmp_path / "val", "imagenet-val")


def test_imagenet_v2_folders_index_the_sorted_wnids(tmp_path):
    put(tmp_path / "0" / "7e5e.jpeg")
    put(tmp_path / "999" / "a1b2.jpeg")
    ds = read_dataset(tmp_path, "imagenet-v2")
    assert [it.label for it in ds.items] == [WNIDS[0], WNIDS[999]]


def test_imagenet_v2_rejects_non_index_folders(tmp_path):
    put(tmp_path / "n01440764" / "a.jpeg")
    with pytest.raises(DatasetError, match="class indices"):
        read_dataset(tmp_path, "imagenet-v2")


def test_real_json_lists_per_sorted_file_and_skips_empty(tmp_path):
    for i in (3, 1, 2):
        put(tmp_path / "val" / val_name(i))
    (tmp_path / "real.json").write_text(json.dumps([[5, 7], [], [1]]))
    ds = read_dataset(tmp_path / "val", "real")
    assert [(Path(it.source).name, it.correct_labels) for it in ds.items] == [
        (val_name(1), (WNIDS[5], WNIDS[7])), (val_name(3), (WNIDS[1],))]
    assert [Path(s).name for s in ds.skipped] == [val_name(2)]
    assert ds.multi_label


def test_real_json_length_must_match_the_images(tmp_path):
    put(tmp_path / "val" / val_name(1))
    (tmp_path / "real.json").write_text("[[1], [2]]")
    with pytest.raises(DatasetError, match="2 entries for 1 image "):
        read_dataset(tmp_path / "val", "real")


@pytest.mark.parametrize(("text", "says"), [
    ("[[1], [1000]]", "entry 1 (ILSVRC2012_val_00000002.JPEG) holds 1000, not a class index (0..999)"),
    ("[[1], [-1]]", "holds -1, not a class index"),  # was read as the last class
    ("[[1], [true]]", "holds True, not a class index"),
    ("[[1], [2]", "is not JSON"),
    ('{"a": [1]}', "is not ReaL's layout"),
])
def test_a_real_json_that_is_not_reals_layout_is_refused(tmp_path, text, says):
    for i in (1, 2):
        put(tmp_path / "val" / val_name(i))
    (tmp_path / "real.json").write_text(text)
    with pytest.raises(DatasetError) as err:
        read_dataset(tmp_path / "val", "real")
    assert says in str(err.value)


def test_csv_manifest_paths_relative_to_the_csv(tmp_path):
    put(tmp_path / "imgs" / "a.jpg")
    (tmp_path / "m.csv").write_text("path,label\nimgs/a.jpg,cat\n")
    ds = read_dataset(tmp_path / "m.csv", DatasetFormat.csv)
    assert [(Path(it.source).name, it.label) for it in ds.items] == [("a.jpg", "cat")]


def test_classes_file_tsv_and_loc_synset_mapping(tmp_path):
    (tmp_path / "classes.tsv").write_text("n02124075\tEgyptian cat\nn04067472\treel\n")
    (tmp_path / "LOC_synset_mapping.txt").write_text("n01440764 tench, Tinca tinca\n")
    assert read_classes_file(tmp_path / "classes.tsv") == {"n02124075": "Egyptian cat", "n04067472": "reel"}
    assert read_classes_file(tmp_path / "LOC_synset_mapping.txt") == {"n01440764": "tench"}


def test_align_labels_renames_wnids_when_the_memory_uses_names(tmp_path):
    put(tmp_path / "n02124075" / "a.jpg")
    ds = read_dataset(tmp_path, "imagenet-a")
    names = {"n02124075": "Egyptian cat"}
    assert align_labels(ds, ["Egyptian cat", "reel"], names).items[0].label == "Egyptian cat"
    assert align_labels(ds, ["Egyptian cat", "reel"], names).classes == ["Egyptian cat"]
    assert align_labels(ds, ["n02124075"], names).items[0].label == "n02124075"
