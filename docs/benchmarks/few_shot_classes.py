"""Adding a class with a few images to a memory of full classes: is it recognised, and what does it take from
the old classes? The measurement behind README "A class of a few images" and docs/results/eval.md "Adding a class
with a few images", and the note `vmem build`, `vmem info`, `vmem tune` and the add answer give for such a label.

    python docs/benchmarks/few_shot_classes.py [--old 100] [--new 10] [--shots 1,3,5,10,20] [--seeds 3]
                                               [--featurizer efficientnet-lite0] [--cache DIR] [--out FILE.json]

Memory: every train image (100 each) of `--old` Tiny-ImageNet classes chosen at random, in a real embedded
memory. Then, for each seed, `--new` other classes get n train images each (nested: 1, then 2 more, ...), added
as points to that memory, and after each step every val image of the new classes (50 each) and 20 val images
of each old class are classified: one search of 100 neighbours through the memory's index, voted by every rule
at every k (as `vmem eval`), and the `dmn` rule (its static readout, `mem.classify_dmn`). After a seed the new
classes are forgotten. Reported per rule, k and n, averaged over seeds: `new` the new classes' recall, `stolen`
the share of old-class queries answered with a new label, `old` the old classes' accuracy. Features come from
the feature cache (`--cache`), computed once. Prints a Markdown table and writes the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path

import numpy as np

from eval.harness import default_feature_cache_dir
from eval.scoring import neighbors_from_store, predictions
from retrieval import VoteRule, load_featurizer
from retrieval.feature_cache import FeatureCache
from retrieval.voting import fewest_to_win
from vmem import VisualMemory

DATA = Path(os.environ.get("VMEM_TINY_IMAGENET", Path(__file__).resolve().parents[3] / "shared" / "data"
                           / "tiny-imagenet-200"))
KS = (1, 3, 5, 10, 20, 30, 50, 100)
K_MAX = max(KS)


def _images(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.iterdir() if p.suffix.lower() in (".jpeg", ".jpg", ".png"))


def choose(data: Path, old: int = 100, new: int = 10, new_train: int = 50, old_val: int = 20,
           seed: int = 0) -> dict[str, list]:
    """The classes and images of one run (the same for a given seed, so the feature cache serves reruns)."""
    classes = sorted(p.name for p in (data / "train").iterdir() if p.is_dir())
    rng = random.Random(seed)
    rng.shuffle(classes)
    old_c, new_c = sorted(classes[:old]), sorted(classes[old:old + new])

    def pick(paths: list[str], n: int) -> list[str]:
        return sorted(rng.sample(paths, min(n, len(paths))))

    return {
        "old_classes": old_c, "new_classes": new_c,
        "base": [(p, c) for c in old_c for p in _images(data / "train" / c)],
        "new_train": [(p, c) for c in new_c for p in pick(_images(data / "train" / c), new_train)],
        "new_val": [(p, c) for c in new_c for p in _images(data / "val" / c)],
        "old_val": [(p, c) for c in old_c for p in pick(_images(data / "val" / c), old_val)],
    }


def _rates(pred: np.ndarray, truth: np.ndarray, is_new_query: np.ndarray, new_ids: np.ndarray) -> dict[str, float]:
    """new-class recall, old queries answered with a new label, old-class accuracy (pred: class ids)."""
    right = pred == truth
    return {"new": float(right[is_new_query].mean()), "stolen": float(np.isin(pred[~is_new_query], new_ids).mean()),
            "old": float(right[~is_new_query].mean())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--old", type=int, default=100)
    ap.add_argument("--new", type=int, default=10)
    ap.add_argument("--shots", default="1,3,5,10,20")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--dmn-seeds", type=int, default=1, help="seeds the dmn rule is measured on (it is slower)")
    ap.add_argument("--featurizer", default="efficientnet-lite0")
    ap.add_argument("--cache", default=None, help="feature cache folder (default: vmem's)")
    ap.add_argument("--out", default=str(Path(__file__).with_name("few-shot-classes.json")))
    args = ap.parse_args()
    shots = sorted(int(s) for s in args.shots.split(","))
    t0 = time.perf_counter()
    sel = choose(DATA, args.old, args.new, new_train=max(shots) * 2 + 10)
    feat = load_featurizer(args.featurizer)
    cache = FeatureCache(args.cache or default_feature_cache_dir(), feat)

    def features(pairs: list) -> np.ndarray:
        vecs, ok, failed = cache.features_for([p for p, _ in pairs])
        assert not failed and len(ok) == len(pairs), failed
        return np.asarray(vecs, dtype=np.float32)

    base, new_train = features(sel["base"]), features(sel["new_train"])
    queries_pairs = sel["new_val"] + sel["old_val"]
    queries = features(queries_pairs)
    classes = sorted(sel["old_classes"] + sel["new_classes"])
    pos = {c: i for i, c in enumerate(classes)}
    truth = np.array([pos[c] for _, c in queries_pairs])
    is_new_query = np.arange(len(queries_pairs)) < len(sel["new_val"])
    new_ids = np.array([pos[c] for c in sel["new_classes"]])
    featurized = time.perf_counter() - t0
    rows: dict[tuple[str, int, int], list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        mem = VisualMemory.open(Path(tmp) / "memory", featurizer=args.featurizer, create=True, reranker=None)
        mem.store.add(base, [c for _, c in sel["base"]], [p for p, _ in sel["base"]])

        def measure(n: int, seed: int) -> None:
            t = time.perf_counter()
            table = neighbors_from_store(mem.store, queries, classes, K_MAX)
            for rule in VoteRule:
                pred = predictions(table, rule)
                for k in KS:
                    rows.setdefault((rule.value, k, n), []).append(_rates(pred[:, k - 1], truth, is_new_query,
                                                                         new_ids))
            searched = time.perf_counter() - t
            if seed < args.dmn_seeds:
                dmn = np.array([pos[r.label] for r in mem.classify_dmn(queries)])
                rows.setdefault(("dmn", 256, n), []).append(_rates(dmn, truth, is_new_query, new_ids))
            print(f"seed {seed}, {n} images a new class: search and votes {searched:.1f} s, "
                  f"dmn {time.perf_counter() - t - searched:.1f} s", flush=True)

        measure(0, 0)  # the old classes alone
        by_class: dict[str, list[int]] = {}
        for i, (_, c) in enumerate(sel["new_train"]):
            by_class.setdefault(c, []).append(i)
        for seed in range(args.seeds):
            rng = np.random.default_rng(seed)
            order = {c: rng.permutation(rows_of).tolist() for c, rows_of in by_class.items()}
            have = 0
            for n in shots:
                idx = [i for c in sel["new_classes"] for i in order[c][have:n]]
                mem.store.add(new_train[idx], [sel["new_train"][i][1] for i in idx],
                              [sel["new_train"][i][0] for i in idx])
                have = n
                measure(n, seed)
            for c in sel["new_classes"]:
                mem.forget(label=c)
        mem.close()
    table_rows = []
    for (rule, k, n), runs in sorted(rows.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2])):
        table_rows.append({"rule": rule, "k": k, "shots": n, "runs": len(runs),
                           **{m: round(float(np.mean([r[m] for r in runs])), 4) for m in ("new", "stolen", "old")}})
    out = {"featurizer": args.featurizer, "old_classes": len(sel["old_classes"]), "old_points": len(base),
           "new_classes": sel["new_classes"], "new_queries": int(is_new_query.sum()),
           "old_queries": int((~is_new_query).sum()), "seeds": args.seeds, "shots": shots,
           "search": f"the memory's index, {K_MAX} neighbours, every rule at every k", "dmn": "static readout, "
           "static_k 256, 16 entries a class", "seconds_featurizing": round(featurized, 1),
           "seconds": round(time.perf_counter() - t0, 1),
           # what vmem add, build and info warn below: the points that win against one class of 100 (rank, plurality)
           "fewest_to_win": {f"{rule}@{k}": fewest_to_win(k, rule, rival=100) for rule in ("rank", "plurality")
                             for k in KS},
           "rows": table_rows}
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    print(markdown(out))


def markdown(out: dict) -> str:
    """new-class recall (old classes' accuracy; old queries taken by a new label) per rule and k, by shots."""
    shots = out["shots"]
    lines = ["| rule | k | " + " | ".join(f"{n} image{'s' * (n > 1)}" for n in shots) + " | old classes alone |",
             "|---|---|" + "---|" * (len(shots) + 1)]
    by = {(r["rule"], r["k"], r["shots"]): r for r in out["rows"]}
    for rule, k in sorted({(r["rule"], r["k"]) for r in out["rows"]}):
        cells = [f"{100 * by[rule, k, n]['new']:.1f} % ({100 * by[rule, k, n]['old']:.1f}; "
                 f"{100 * by[rule, k, n]['stolen']:.1f})" for n in shots]
        lines.append(f"| {rule} | {k} | " + " | ".join(cells) + f" | {100 * by[rule, k, 0]['old']:.1f} % |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
