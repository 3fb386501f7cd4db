"""What looking an upload up by its bytes costs an add, in a memory of many uploaded points.

`VisualMemory.add_images` finds a point holding an upload's bytes under another name (`upload:sha256:<digest>`
prefix of its source, on the source's prefix index) before it embeds the upload. This script fills an embedded
memory with N points whose sources are uploads (random vectors, as many random digests), then times, in
alternating rounds on the one open memory:

- the lookup alone, for bytes held (a hit) and bytes not held (a miss);
- a whole add of one new image (embedded by EfficientNet-Lite0 on the CPU, then forgotten again), with the
  lookup and with it replaced by one that finds nothing, as before it existed.

    python docs/benchmarks/upload_dupes.py [--points 100000] [--rounds 7] [--folder DIR]

Prints one JSON line, medians in milliseconds.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from retrieval import load_featurizer, open_store
from vmem import VisualMemory, upload_content, upload_source


def photo(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--points", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--folder", help="where to make the memory (default: a temporary folder)")
    args = ap.parse_args()
    feat = load_featurizer("efficientnet-lite0", device="cpu")
    feat.warm_up()
    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(str(Path(args.folder or tmp) / "memory"), feat.spec)
        rng = np.random.default_rng(0)
        t = time.perf_counter()
        for start in range(0, args.points, 10_000):
            n = min(10_000, args.points - start)
            v = rng.standard_normal((n, feat.spec.dim)).astype(np.float32)
            v /= np.linalg.norm(v, axis=1, keepdims=True)
            sources = [upload_source(b"", f"p{i}.jpg", hashlib.sha256(str(i).encode()).hexdigest())
                       for i in range(start, start + n)]
            store.add(v, [f"c{i % 200}" for i in range(start, start + n)], sources)
        fill_s = time.perf_counter() - t
        mem = VisualMemory(store, feat, reranker=None)
        held = upload_content(upload_source(b"", None, hashlib.sha256(str(args.points // 2).encode()).hexdigest()))
        missing = upload_content(upload_source(b"not held"))
        assert held and missing and mem._upload_holders({held: "c0"}) and not mem._upload_holders({missing: "c0"})
        looked_up = mem._upload_holders
        ms: dict[str, list[float]] = {"lookup_hit": [], "lookup_miss": [], "add_with_lookup": [],
                                      "add_without_lookup": []}
        for r in range(args.rounds + 1):  # the first round warms up
            for way, content in (("lookup_hit", held), ("lookup_miss", missing)):
                t = time.perf_counter()
                for _ in range(100):
                    looked_up({content: "c0"})
                ms[way].append((time.perf_counter() - t) * 1000 / 100)
            for way in ("add_with_lookup", "add_without_lookup"):
                mem._upload_holders = looked_up if way == "add_with_lookup" else (lambda _labels: {})  # type: ignore[method-assign]
                image = photo(1000 * r + len(ms[way]))
                t = time.perf_counter()
                [pid], _ = mem.add([image], ["c0"], sources=[upload_source(image, "new.png")])
                ms[way].append((time.perf_counter() - t) * 1000)
                mem.store.delete_ids([pid])
        mem._upload_holders = looked_up  # type: ignore[method-assign]
        print(json.dumps({"points": store.count(), "fill_s": round(fill_s, 1), "rounds": args.rounds,
                          **{f"{way}_ms": round(statistics.median(v[1:]), 3) for way, v in ms.items()}}))
        store.close()


if __name__ == "__main__":
    main()
