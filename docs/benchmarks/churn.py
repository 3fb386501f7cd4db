"""A memory that lives for months: daily adds, forgets, copies forgotten by likeness, relabels and classifies.

    vmem export train.npz --memory TRAIN && vmem export val.npz --memory VAL   # EfficientNet-Lite0 features
    python docs/benchmarks/churn.py --train train.npz --val val.npz --months 12 --out churn.json

Starts a memory from the `train` export (through `import_points`, as `vmem import` does), then lives DAYS days a
month: each day adds ADDS new photos through `VisualMemory.add` (as the service's uploads do: one point each,
sources named by day; a photo is a train photo of its class taken again, its features the real ones plus noise of
norm 0.5, cosine ~0.89; one in ten is a re-upload of a photo added before, cosine ~0.999), forgets FORGETS points
by id (unlearning requests) and two by likeness (`forget_like(point_id=...)`, which takes the re-uploads too),
relabels RELABELS points to another label and back the next day (corrections), and classifies 20 `val` queries,
checking that no forgotten point is ever among the neighbours. The features come from the exports, so the
encoder is not run: `add` embeds through a stand-in that hands out the prepared vectors in order.

After each month, with the memory as the month left it: the disk of its folder by part (engine segments and
write-ahead log, journal, thumbnails) against `VisualMemory.disk_usage` and `du`, the process's RSS, the engine's
segments and how many of its points are indexed (and `index_upkeep`: how many of the index's vectors are
deleted, as `vmem info` says), recall@50 of 200 `val` queries against exact search on the same memory and the
queries' batched and single times (medians of 3), the time to close and open it again, and the 20 newest edits
of its journal. Every MONTHS_FRESH months (and at the end) the same points are exported and imported
into a fresh memory, and its recall and answers compared. At the end the forgotten points are erased
(`erase_forgotten`) and the same figures taken again. One JSON object on stdout (and in --out).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from vmem import VisualMemory
from vmem.import_points import read_points_file


class PreparedFeatures:
    """Stands in for the encoder inside `VisualMemory.add`: each call takes the next prepared vectors."""

    def __init__(self, spec: Any) -> None:
        self.spec = spec
        self.pending: list[np.ndarray] = []

    def embed_as_stored(self) -> None:
        pass

    def embed(self, images: list[Any]) -> np.ndarray:
        out, self.pending = self.pending[: len(images)], self.pending[len(images):]
        assert len(out) == len(images), "add asked for more images than were prepared"
        return np.stack(out).astype(np.float32)


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def du_bytes(folder: Path) -> int:
    return int(subprocess.run(["du", "-sB1", str(folder)], capture_output=True, text=True).stdout.split()[0])


def blocks(path: Path) -> int:
    if not path.exists():
        return 0
    if path.is_file():
        return path.stat().st_blocks * 512
    return sum(f.stat().st_blocks * 512 for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text(encoding="utf-8").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def median_time(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def recall(approx: list[list[Any]], exact: list[list[Any]]) -> float:
    hits = sum(len({n.id for n in a} & {n.id for n in e}) for a, e in zip(approx, exact, strict=True))
    return hits / sum(len(e) for e in exact)


def search_figures(mem: VisualMemory, queries: np.ndarray, k: int = 50) -> dict[str, Any]:
    approx = mem.search(queries, k)
    exact = mem.search(queries, k, exact=True)
    return {
        "recall_at_50": round(recall(approx, exact), 4),
        "batch_200_s": round(median_time(lambda: mem.search(queries, k)), 4),
        "single_ms_p50": round(1000 * median_time(lambda: [mem.search(q[None], k) for q in queries[:50]]) / 50, 3),
        "labels": [mem._decide(n, mem.vote_settings(), None).label for n in approx],
        "exact_labels": [mem._decide(n, mem.vote_settings(), None).label for n in exact],
    }


def measure(mem: VisualMemory, folder: Path, queries: np.ndarray, forgotten: set[str]) -> dict[str, Any]:
    shard = mem.store.shard
    info = shard.info()
    figures = search_figures(mem, queries)
    returned = sum(n.id in forgotten for ns in mem.search(queries, 50) for n in ns)
    usage = mem.disk_usage() or {}
    t0 = time.perf_counter()
    recent = mem.history(limit=20)
    history_s = time.perf_counter() - t0
    out = {
        "points": mem.store.count(),
        "segments": info.segments_count,
        "engine_points": info.points_count,
        "indexed": info.indexed_vectors_count,
        "upkeep": upkeep.as_dict() if (upkeep := mem.store.index_upkeep()) is not None else None,
        "disk": {
            "segments": blocks(folder / "shard" / "segments"),
            "wal": blocks(folder / "shard" / "wal"),
            "journal": blocks(folder / "journal.jsonl"),
            "journal_lines": (folder / "journal.jsonl").read_bytes().count(b"\n"),
            "thumbnails": blocks(folder / "thumbnails"),
            "info_total": usage.get("total"),
            "du": du_bytes(folder),
        },
        "rss_mb": round(rss_mb(), 1),
        "forgotten_returned": returned,
        "history_20_s": round(history_s, 4),
        "history_shown": len(recent),
        **{k: v for k, v in figures.items() if not k.endswith("labels")},
        "exact_agreement": round(float(np.mean([a == b for a, b in zip(figures["labels"], figures["exact_labels"],
                                                                       strict=True)])), 4),
    }
    return out


def reopen(mem: VisualMemory, folder: Path, spec_holder: PreparedFeatures) -> tuple[VisualMemory, float]:
    mem.close()
    t0 = time.perf_counter()
    mem = VisualMemory.open(folder, reranker=None)
    seconds = time.perf_counter() - t0
    mem._featurizer = spec_holder  # type: ignore[assignment]
    return mem, seconds


def fresh_comparison(mem: VisualMemory, queries: np.ndarray, work: Path) -> dict[str, Any]:
    npz = work / "same-points.npz"
    fresh_dir = work / "fresh"
    shutil.rmtree(fresh_dir, ignore_errors=True)
    mem.export_points(npz, overwrite=True)
    points = read_points_file(npz)
    t0 = time.perf_counter()
    fresh = VisualMemory.open_for_import(fresh_dir, points, reranker=None)
    fresh.import_points(points)
    build_s = time.perf_counter() - t0
    try:
        mine = search_figures(mem, queries)
        theirs = search_figures(fresh, queries)
        info = fresh.store.shard.info()
        return {
            "fresh_import_s": round(build_s, 2),
            "fresh_segments": info.segments_count,
            "fresh_recall_at_50": theirs["recall_at_50"],
            "fresh_batch_200_s": theirs["batch_200_s"],
            "fresh_single_ms_p50": theirs["single_ms_p50"],
            "fresh_disk": du_bytes(fresh_dir),
            "churned_recall_at_50": mine["recall_at_50"],
            "churned_batch_200_s": mine["batch_200_s"],
            "churned_single_ms_p50": mine["single_ms_p50"],
            "answers_agree": round(float(np.mean([a == b for a, b in zip(mine["labels"], theirs["labels"],
                                                                         strict=True)])), 4),
        }
    finally:
        fresh.close()
        shutil.rmtree(fresh_dir, ignore_errors=True)
        npz.unlink(missing_ok=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", required=True, help="vmem export of the memory's first points")
    parser.add_argument("--val", required=True, help="vmem export whose vectors are the queries")
    parser.add_argument("--months", type=int, default=12)
    parser.add_argument("--days", type=int, default=30, help="days a month")
    parser.add_argument("--adds", type=int, default=60, help="photos added a day")
    parser.add_argument("--forgets", type=int, default=40, help="points forgotten by id a day")
    parser.add_argument("--relabels", type=int, default=10, help="points relabelled a day (and back the next)")
    parser.add_argument("--fresh-every", type=int, default=3, help="compare with a fresh memory every N months")
    parser.add_argument("--erase-monthly", action="store_true", help="erase_forgotten at each month's end")
    parser.add_argument("--memory", help="folder for the memory (default: a temporary one)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out")
    args = parser.parse_args()

    load_at_start = round(os.getloadavg()[0], 2)  # 2 shared cores: the times depend on it, recall does not
    rng = np.random.default_rng(args.seed)
    pick = random.Random(args.seed)
    train = np.load(args.train)
    base_vectors = unit(train["vectors"].astype(np.float32))
    base_labels = [str(x) for x in train["labels"]]
    base_sources = [str(x) for x in train["sources"]]
    val = np.load(args.val)
    qsel = rng.choice(len(val["vectors"]), size=min(200, len(val["vectors"])), replace=False)
    queries = unit(val["vectors"][qsel].astype(np.float32))
    daily_queries = unit(val["vectors"].astype(np.float32))

    work = Path(tempfile.mkdtemp(prefix="vmem-churn-"))
    folder = Path(args.memory) if args.memory else work / "memory"
    shutil.rmtree(folder, ignore_errors=True)
    points = read_points_file(args.train)
    t0 = time.perf_counter()
    mem = VisualMemory.open_for_import(folder, points, reranker=None)
    mem.import_points(points)
    first_import_s = time.perf_counter() - t0
    stand_in = PreparedFeatures(mem.store.meta.featurizer)
    mem._featurizer = stand_in  # type: ignore[assignment]
    labels_all = sorted(set(base_labels))

    alive: dict[str, str] = {}  # id -> label
    for batch in mem.point_batches():
        alive.update(zip(batch.ids, batch.labels, strict=True))
    recent_adds: list[tuple[np.ndarray, str, str]] = []  # (vector, label, image) of photos added lately
    relabelled_yesterday: dict[str, str] = {}
    forgotten: set[str] = set()
    counts = {"added": 0, "forgotten_by_id": 0, "forgotten_by_likeness": 0, "relabelled": 0, "classified": 0}
    leaks = 0
    months: list[dict[str, Any]] = []
    start = time.perf_counter()
    first = measure(mem, folder, queries, forgotten)
    first["first_import_s"] = round(first_import_s, 2)
    months.append({"month": 0, **first})
    print(json.dumps(months[-1]), file=sys.stderr)
    day = 0
    for month in range(1, args.months + 1):
        month_start = time.perf_counter()
        for _ in range(args.days):
            day += 1
            # Adds: new photos, one in ten a re-upload of one added before (a near-copy).
            sources, images, labels, vectors = [], [], [], []
            for i in range(args.adds):
                if recent_adds and i % 10 == 9:
                    vec, lab, image = pick.choice(recent_adds)
                    vec = unit(vec + rng.normal(0, 0.05 / np.sqrt(vec.size), vec.size).astype(np.float32))
                else:
                    row = pick.randrange(len(base_vectors))
                    lab, image = base_labels[row], base_sources[row]
                    vec = unit(base_vectors[row] + rng.normal(0, 0.5 / np.sqrt(base_vectors.shape[1]),
                                                              base_vectors.shape[1]).astype(np.float32))
                sources.append(f"cam/day{day:04d}/{i:03d}.jpg")
                images.append(image)
                labels.append(lab)
                vectors.append(vec)
            stand_in.pending = list(vectors)
            ids, failed = mem.add(images, labels, sources=sources)
            assert not failed, failed
            for pid, vec, lab, image in zip(ids, vectors, labels, images, strict=True):
                alive[pid] = lab
                recent_adds.append((vec, lab, image))
            recent_adds = recent_adds[-2000:]
            counts["added"] += len(ids)
            # Yesterday's relabels put back (the correction of a correction), then today's.
            for pid, was in relabelled_yesterday.items():
                if pid in alive:
                    mem.relabel(was, ids=[pid])
                    alive[pid] = was
                    counts["relabelled"] += 1
            relabelled_yesterday = {}
            for pid in pick.sample(sorted(alive), args.relabels):
                to = pick.choice([lab for lab in labels_all if lab != alive[pid]])
                relabelled_yesterday[pid] = alive[pid]
                mem.relabel(to, ids=[pid])
                alive[pid] = to
                counts["relabelled"] += 1
            # Unlearning requests: by id, and two by likeness (the point and its copies).
            gone = pick.sample(sorted(alive), args.forgets)
            counts["forgotten_by_id"] += mem.forget(ids=gone)
            for pid in gone:
                alive.pop(pid)
                relabelled_yesterday.pop(pid, None)
            forgotten.update(gone)
            for pid in pick.sample(sorted(alive), 2):
                if pid not in alive:
                    continue
                found = mem.forget_like(point_id=pid)
                counts["forgotten_by_likeness"] += len(found)
                for d in found:
                    alive.pop(d.id, None)
                    relabelled_yesterday.pop(d.id, None)
                    forgotten.add(d.id)
            # The day's questions.
            asked = daily_queries[rng.choice(len(daily_queries), size=20, replace=False)]
            for res in mem.classify_vectors(asked):
                leaks += sum(n.id in forgotten for n in res.neighbors)
            counts["classified"] += len(asked)
        days_s = time.perf_counter() - month_start
        row: dict[str, Any] = {"month": month, "days_s": round(days_s, 1), **dict(counts), "leaks": leaks}
        if args.erase_monthly:
            t0 = time.perf_counter()
            mem.erase_forgotten()
            row["erase_s"] = round(time.perf_counter() - t0, 2)
        mem, reopen_s = reopen(mem, folder, stand_in)
        row["reopen_s"] = round(reopen_s, 3)
        row.update(measure(mem, folder, queries, forgotten))
        assert row["points"] == len(alive), (row["points"], len(alive))
        if month % args.fresh_every == 0 or month == args.months:
            row.update(fresh_comparison(mem, queries, work))
        months.append(row)
        print(json.dumps(row), file=sys.stderr)

    t0 = time.perf_counter()
    mem.erase_forgotten()
    erase_s = time.perf_counter() - t0
    mem, reopen_s = reopen(mem, folder, stand_in)
    after = {"erase_s": round(erase_s, 2), "reopen_s": round(reopen_s, 3), **measure(mem, folder, queries, forgotten),
             **fresh_comparison(mem, queries, work)}
    mem.close()
    result = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform(),
                    "load_1min": load_at_start},
        "settings": {k: v for k, v in vars(args).items() if k not in {"out", "memory"}},
        "edits": sum(counts.values()) - counts["classified"],
        "seconds": round(time.perf_counter() - start, 1),
        "months": months,
        "after_erase": after,
        "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    if not args.memory:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
