"""Disk cost and add time of keeping uploads as sent (VMEM_KEEP_UPLOADS): the same Tiny-ImageNet val JPEGs added
over HTTP (a TestClient over `create_app`) to two new EfficientNet-Lite0 memories, one service with the setting and
one without, in requests of 32 taken in turn. Prints one JSON object: bytes on disk per point of `uploads/` and
`thumbnails/` (`disk_usage`, 4 KiB blocks as `du` counts them), bytes sent, and each service's median seconds per
request.

    python docs/benchmarks/kept_uploads_disk.py --val VAL_DIR [--images 320]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

from fastapi.testclient import TestClient

from server import create_app
from server.settings import Settings
from vmem import VisualMemory

KEY = "bench-key-0123456789abcdef"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--val", required=True)
    ap.add_argument("--images", type=int, default=320)
    args = ap.parse_args()
    files = sorted(Path(args.val).glob("*/*.JPEG"))[:: 7][: args.images]
    batches = [[(f.parent.name, f.read_bytes()) for f in files[i:i + 32]] for i in range(0, len(files), 32)]
    with tempfile.TemporaryDirectory() as tmp:
        clients, mems, seconds = {}, {}, {True: [], False: []}
        for keep in (True, False):
            mem = VisualMemory.open(f"{tmp}/memory-{keep}", featurizer="efficientnet-lite0", create=True, reranker=None)
            mems[keep] = mem
            clients[keep] = TestClient(create_app(Settings(memory=f"{tmp}/memory-{keep}", api_key=KEY,
                                                           keep_uploads=keep), memory=mem)).__enter__()
        for i, batch in enumerate(batches):
            for keep in (True, False) if i % 2 else (False, True):  # in turn, so that neither always goes first
                files_ = [("images", (f"{j}.jpg", data, "image/jpeg")) for j, (_, data) in enumerate(batch)]
                t0 = time.perf_counter()
                resp = clients[keep].post("/v1/memory", headers={"X-API-Key": KEY}, files=files_,
                                          data={"label": batch[0][0]})
                seconds[keep].append(time.perf_counter() - t0)
                assert resp.status_code == 201, resp.text
        usage = mems[True].disk_usage() or {}
        points = mems[True].store.count()
        sent = sum(len(data) for batch in batches for _, data in batch)
        for keep in (True, False):
            clients[keep].__exit__(None, None, None)
            mems[keep].close()
    print(json.dumps({
        "machine": platform.node(), "images": len(files), "points": points,
        "bytes_sent_per_point": round(sent / points),
        "uploads_on_disk_per_point": round(usage.get("uploads", 0) / points),
        "thumbnails_on_disk_per_point": round(usage.get("thumbnails", 0) / points),
        "memory_on_disk_per_point": round(usage["total"] / points),
        "median_s_per_request_of_32": {"keep_uploads": round(statistics.median(seconds[True]), 3),
                                       "thumbnail_only": round(statistics.median(seconds[False]), 3)},
        "requests": len(batches)}, indent=1))


if __name__ == "__main__":
    main()
