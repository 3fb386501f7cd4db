"""Evaluation sets in the layouts they ship in: ImageNet val and its out-of-distribution variants.

Every reader returns an `EvalDataset`: images with their true class (a WordNet id for the ImageNet
family, the folder or CSV label otherwise), optionally several accepted classes per image (ImageNet-ReaL),
and optionally the class subset the dataset is restricted to (ImageNet-A and -R cover 200 classes).

Formats (`DatasetFormat`):

    imagefolder      ROOT/<class>/<image>  (ImageNet train/val prepared this way, any labelled folder)
    imagenet-sketch  ROOT/<wnid>/<image>   (1000 classes)
    imagenet-a       ROOT/<wnid>/<image>   (200 classes: predictions are restricted to them)
    imagenet-r       ROOT/<wnid>/<image>   (200 classes: predictions are restricted to them)
    imagenet-val     ROOT/ILSVRC2012_val_00000001.JPEG ... flat, with LOC_val_solution.csv, or
                     ILSVRC2012_validation_ground_truth.txt plus the devkit's meta.mat (its ids are
                     the devkit's ILSVRC2012_ID, *not* the sorted-wnid index)
    imagenet-v2      ROOT/<0..999>/<image>  (folder = index into the sorted 1000 wnids)
    real             ImageNet val images + real.json (one list of sorted-wnid indices per image, in
                     sorted file-name order; images with an empty list are skipped)
    csv              a `path,label` manifest
"""

from __future__ import annotations

import csv
import json
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from importlib import resources
from pathlib import Path

from retrieval import DatasetError, normalize_source, read_label_names, read_manifest, scan_imagefolder
from retrieval.images import is_image_path
from retrieval.text import as_held, counted

LOC_SOLUTION = "LOC_val_solution.csv"
GROUND_TRUTH = "ILSVRC2012_validation_ground_truth.txt"
DEVKIT_META = "meta.mat"
REAL_JSON = "real.json"


log = logging.getLogger(__name__)


class DatasetFormat(StrEnum):
    imagefolder = "imagefolder"
    imagenet_val = "imagenet-val"
    imagenet_v2 = "imagenet-v2"
    imagenet_a = "imagenet-a"
    imagenet_r = "imagenet-r"
    imagenet_sketch = "imagenet-sketch"
    real = "real"
    csv = "csv"


# Formats whose classes are a subset of ImageNet's: report restricted to them and unrestricted.
RESTRICTED_FORMATS = frozenset({DatasetFormat.imagenet_a, DatasetFormat.imagenet_r})


@dataclass(frozen=True)
class EvalImage:
    """One query: its file, its true class, and (ImageNet-ReaL) every class that counts as right."""

    source: str
    label: str
    accepted: tuple[str, ...] = ()

    @property
    def correct_labels(self) -> tuple[str, ...]:
        return self.accepted or (self.label,)


@dataclass
class EvalDataset:
    name: str
    format: DatasetFormat
    items: list[EvalImage]
    # The dataset's own class set when predictions should be restricted to it (ImageNet-A/-R).
    classes: list[str] | None = None
    skipped: list[str] = field(default_factory=list)  # sources left out, e.g. ReaL images with no label

    @property
    def multi_label(self) -> bool:
        return any(it.accepted for it in self.items)

    def labels(self) -> list[str]:
        return sorted({lab for it in self.items for lab in it.correct_labels})

    def map_labels(self, mapping: dict[str, str]) -> EvalDataset:
        """The same dataset with labels renamed (e.g. wnid -> class name); unknown labels stay."""
        def m(lab: str) -> str:
            return mapping.get(lab, lab)

        items = [EvalImage(it.source, m(it.label), tuple(m(a) for a in it.accepted)) for it in self.items]
        classes = [m(c) for c in self.classes] if self.classes is not None else None
        return EvalDataset(self.name, self.format, items, classes, list(self.skipped))


def imagenet_wnids() -> list[str]:
    """The 1000 ImageNet-1k WordNet ids in sorted order: the class index used by torchvision, V2, ReaL."""
    text = resources.files("retrieval").joinpath("data/imagenet_synsets.txt").read_text()
    wnids = [line.split()[0] for line in text.splitlines() if line.strip()]
    if len(wnids) != 1000:
        raise DatasetError(f"expected 1000 ImageNet synsets, found {len(wnids)}")
    return wnids


def read_classes_file(path: str | Path) -> dict[str, str]:
    """wnid -> class name: `retrieval.read_label_names` (classes.tsv, words.txt, LOC_synset_mapping.txt)."""
    return read_label_names(path)


def _images_flat(root: Path) -> list[Path]:
    if not root.is_dir():
        raise DatasetError(f"{root} is not a directory")
    files = sorted((p for p in root.rglob("*") if p.is_file() and is_image_path(p)), key=lambda p: p.name)
    if not files:
        raise DatasetError(f"{root} holds no images")
    return files


def _find_upwards(root: Path, *names: str, levels: int = 4) -> Path | None:
    """The nearest file of one of `names` in `root` or one of its parents (Kaggle puts LOC_val_solution.csv 4 levels
    above val/), the first name first where one folder holds two: a file beside the images is theirs, one further up
    may be another copy's."""
    for d in [root, *list(root.resolve().parents)[:levels]]:
        for name in names:
            if (d / name).is_file():
                return d / name
    return None


# ImageNet-A and -R each cover 200 of ImageNet's classes; predictions are restricted to those present.
RESTRICTED_CLASS_COUNT = 200


def read_imagefolder(root: str | Path, fmt: DatasetFormat = DatasetFormat.imagefolder) -> EvalDataset:
    root = Path(root)
    items = [EvalImage(it.source, it.label) for it in scan_imagefolder(root)]
    classes = sorted({it.label for it in items}) if fmt in RESTRICTED_FORMATS else None
    if classes is not None and len(classes) != RESTRICTED_CLASS_COUNT:
        # The restriction is the class folders found: a partial copy narrows it, and the score is not the
        # published setting's. Said, not refused (a subset is a fair experiment when meant).
        log.warning("%s has %d class folders, not %s's %d: predictions are restricted to the %d present, so "
                    "scores are not comparable with the published ones", root, len(classes), fmt.value,
                    RESTRICTED_CLASS_COUNT, len(classes))
    return EvalDataset(root.name, fmt, items, classes)


def _loc_solution_labels(path: Path) -> dict[str, str]:
    """ImageId -> wnid from Kaggle's LOC_val_solution.csv (the first token of PredictionString)."""
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or not {"ImageId", "PredictionString"} <= set(reader.fieldnames):
            raise DatasetError(f"{path}: expected columns ImageId,PredictionString; got {reader.fieldnames}")
        return {row["ImageId"]: row["PredictionString"].split()[0] for row in reader if row["PredictionString"]}


def read_devkit_synsets(path: str | Path) -> list[str]:
    """wnids in devkit ILSVRC2012_ID order (id 1 first), from `meta.mat` or a text file, one wnid a line.

    `ILSVRC2012_validation_ground_truth.txt` holds these ids, which follow the WordNet hierarchy and
    differ from the sorted-wnid index everybody else uses, so the devkit's mapping is required.
    """
    path = Path(path)
    if path.suffix != ".mat":
        return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    try:
        from scipy.io import loadmat
    except ImportError as exc:  # only this one layout needs scipy
        raise DatasetError(f"reading {path} needs scipy (pip install scipy), or pass the ids as a text "
                           "file with one wnid per line in ILSVRC2012_ID order") from exc
    synsets = loadmat(str(path), squeeze_me=True)["synsets"]
    by_id = {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in synsets
             if "num_children" not in synsets.dtype.names or int(s["num_children"]) == 0}
    return [by_id[i] for i in sorted(by_id)]


def read_imagenet_val(root: str | Path, labels_file: str | Path | None = None,
                      devkit_synsets: str | Path | None = None) -> EvalDataset:
    """ImageNet val as shipped: a flat folder of `ILSVRC2012_val_*.JPEG` and a labels file.

    Args:
        root: the folder of images.
        labels_file: `LOC_val_solution.csv` or `ILSVRC2012_validation_ground_truth.txt`; when not given, the
            nearest of them in `root` or its parents (up to 4 levels), the first where one folder holds both.
        devkit_synsets: for the ground-truth file, the devkit's `meta.mat` (or a text file of wnids in
            ILSVRC2012_ID order); looked for next to the ground-truth file when not given.
    """
    root = Path(root)
    files = _images_flat(root)
    if labels_file is None:
        labels_file = _find_upwards(root, LOC_SOLUTION, GROUND_TRUTH)
        if labels_file is None:
            raise DatasetError(f"no {LOC_SOLUTION} or {GROUND_TRUTH} found in {root} or its parents")
    labels_file = Path(labels_file)
    if labels_file.suffix == ".csv":
        by_id = _loc_solution_labels(labels_file)
        items, skipped = [], []
        for f in files:
            wnid = by_id.get(f.stem)
            if wnid is None:
                skipped.append(normalize_source(f))
            else:
                items.append(EvalImage(normalize_source(f), wnid))
        if not items:
            raise DatasetError(f"none of the images in {root} is listed in {labels_file}")
        return EvalDataset(root.name, DatasetFormat.imagenet_val, items, None, skipped)
    try:
        ids = [int(x) for x in labels_file.read_text().split()]
    except ValueError as exc:
        raise DatasetError(f"{labels_file} holds something that is no devkit class id ({exc})") from None
    if len(ids) != len(files):
        raise DatasetError(f"{labels_file} has {counted(len(ids), 'label')} for {counted(len(files), 'image')} in "
                           f"{root}")
    meta = Path(devkit_synsets) if devkit_synsets else (_find_upwards(labels_file.parent, DEVKIT_META, levels=1))
    if meta is None:
        raise DatasetError(f"{labels_file.name} holds devkit ids: give the devkit's {DEVKIT_META} "
                           "(--devkit-synsets) to map them to wnids")
    wnids = read_devkit_synsets(meta)
    # Ids count from 1: 0 would read as the last class (wnids[-1]) and 1,001 fail deep inside.
    if bad := next(((n, i) for n, i in enumerate(ids, start=1) if not 1 <= i <= len(wnids)), None):
        raise DatasetError(f"{labels_file}: the label of image {bad[0]} is {bad[1]}, not a devkit class id "
                           f"(1..{len(wnids)} in {meta.name})")
    items = [EvalImage(normalize_source(f), wnids[i - 1]) for f, i in zip(files, ids, strict=True)]
    return EvalDataset(root.name, DatasetFormat.imagenet_val, items)


def read_imagenet_v2(root: str | Path) -> EvalDataset:
    """ImageNetV2: folders `0`..`999` indexing the sorted ImageNet wnids."""
    root = Path(root)
    wnids = imagenet_wnids()
    items = []
    for it in scan_imagefolder(root):
        if not it.label.isdigit() or not 0 <= int(it.label) < 1000:
            raise DatasetError(f"ImageNetV2 folders are class indices 0..999; found {it.label!r} in {root}")
        items.append(EvalImage(it.source, wnids[int(it.label)]))
    return EvalDataset(root.name, DatasetFormat.imagenet_v2, items)


def read_real(root: str | Path, real_json: str | Path | None = None) -> EvalDataset:
    """ImageNet-ReaL: val images (flat or in class folders) and `real.json`.

    real.json holds, for each val image in sorted file-name order, the list of sorted-wnid indices
    that are correct for it; images with an empty list are skipped (the usual protocol). An image's
    `label` is its first ReaL label; any label of its list counts as right.
    """
    root = Path(root)
    real_json = Path(real_json) if real_json else _find_upwards(root, REAL_JSON)
    if real_json is None:
        raise DatasetError(f"no {REAL_JSON} found in {root} or its parents")
    try:
        real = json.loads(Path(real_json).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{real_json} is not JSON ({exc})") from None
    if not isinstance(real, list) or not all(isinstance(labs, list) for labs in real):
        raise DatasetError(f"{real_json} is not ReaL's layout: a list of label lists, one per val image")
    files = _images_flat(root)
    if len(real) != len(files):
        raise DatasetError(f"{real_json} has {counted(len(real), 'entry', 'entries')} for "
                           f"{counted(len(files), 'image')} in {root}")
    wnids = imagenet_wnids()
    items, skipped = [], []
    for n, (f, labs) in enumerate(zip(files, real, strict=True)):
        if not labs:
            skipped.append(normalize_source(f))
            continue
        # Indices of the sorted wnids: -1 would read as the last one, 1,000 fail deep inside.
        if bad := [i for i in labs if isinstance(i, bool) or not (isinstance(i, int) and 0 <= i < len(wnids))]:
            raise DatasetError(f"{real_json}: entry {n} ({f.name}) holds {bad[0]!r}, not a class index "
                               f"(0..{len(wnids) - 1})")
        accepted = tuple(wnids[i] for i in labs)
        items.append(EvalImage(normalize_source(f), accepted[0], accepted))
    return EvalDataset(root.name, DatasetFormat.real, items, None, skipped)


def read_csv(path: str | Path) -> EvalDataset:
    path = Path(path)
    items = [EvalImage(it.source, it.label) for it in read_manifest(path)]
    return EvalDataset(path.stem, DatasetFormat.csv, items)


def read_dataset(
    path: str | Path,
    fmt: DatasetFormat | str,
    labels_file: str | Path | None = None,
    devkit_synsets: str | Path | None = None,
) -> EvalDataset:
    """Read an evaluation set in one of the `DatasetFormat` layouts.

    Args:
        path: the dataset's folder (a `.csv` file for `csv`).
        fmt: its layout.
        labels_file: imagenet-val's labels file, or real's `real.json` (found automatically if left out).
        devkit_synsets: imagenet-val with the devkit ground truth: `meta.mat` or a wnid-per-line file.

    Example:
        >>> ds = read_dataset("imagenet-a", "imagenet-a")
        >>> len(ds.classes)
        200
    """
    fmt = DatasetFormat(fmt)
    if fmt is DatasetFormat.imagenet_val:
        return read_imagenet_val(path, labels_file, devkit_synsets)
    if fmt is DatasetFormat.imagenet_v2:
        return read_imagenet_v2(path)
    if fmt is DatasetFormat.real:
        return read_real(path, labels_file)
    if fmt is DatasetFormat.csv:
        return read_csv(path)
    return read_imagefolder(path, fmt)


def align_labels(dataset: EvalDataset, memory_labels: Sequence[str], classes: dict[str, str] | None) -> EvalDataset:
    """Name the dataset's classes the way the memory does.

    A memory built from ImageNet folders is labelled by wnid; one built from a CSV may use class names.
    When fewer of the dataset's labels are memory labels than their names (through `classes`), the
    dataset is renamed. A label the memory spells otherwise (an older memory's decomposed "café", its " cat "
    with outer spaces; folders are read canonical now) is taken as the memory spells it.
    """
    have = set(memory_labels)
    spelled = {lab: held for lab, held in as_held(dataset.labels(), have).items() if held != lab}
    if spelled:
        dataset = dataset.map_labels(spelled)
    if not classes:
        return dataset
    labels = dataset.labels()
    as_is = sum(lab in have for lab in labels)
    renamed = sum(classes.get(lab, lab) in have for lab in labels)
    return dataset.map_labels(classes) if renamed > as_is else dataset


def sample_items(items: Sequence[EvalImage], limit: int | None, seed: int = 0) -> list[EvalImage] | None:
    """A fixed random sample of `limit` items (the same for the same items and seed), sorted by source; None when
    `limit` draws none (no limit, or one at or above the items' count): `vmem eval` and `vmem experiment` record
    a sample only when one was drawn."""
    if limit is None or limit >= len(items):
        return None
    return sorted(random.Random(seed).sample(list(items), limit), key=lambda it: it.source)
