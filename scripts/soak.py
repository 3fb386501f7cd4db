"""Soak test: classify, add, forget and relabel at the same time against a live vmem service, then check the
invariants.

    python scripts/soak.py --seconds 60                   # starts its own service on loopback (tiny encoder)
    python scripts/soak.py --seconds 60 --featurizer efficientnet-lite0
    python scripts/soak.py --url http://127.0.0.1:8000 --api-key $VMEM_API_KEY --seconds 60

Invariants, each counted and printed (the exit status is 1 when one is broken):

* no 5xx and no transport error;
* a point is never returned (as a neighbour) by a classify request sent after its delete call returned;
* a relabelled point is never returned with its old label by a classify request sent after its relabel call
  returned, and has its new label at the end;
* every acknowledged add that was not deleted is still there at the end (and every deleted one is gone).

Classify queries re-send images that were added (some since deleted), so a deleted point would be
the query's nearest neighbour if the memory still held it.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

LABELS = ("ant", "bee", "cat")
RELABELLED = "relabelled"  # the label relabellers give; no add uses it


def noise_png(seed: int, size: int = 16) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, format="PNG")
    return buf.getvalue()


@dataclass
class Added:
    id: str
    seed: int
    acked_at: float
    deleted_at: float | None = None  # when the delete call returned
    relabelled_at: float | None = None  # when the relabel call returned (-1: claimed, in flight)


@dataclass
class SoakReport:
    seconds: float
    requests: dict[str, int] = field(default_factory=dict)
    statuses: dict[str, int] = field(default_factory=dict)
    latencies: dict[str, list[float]] = field(default_factory=dict)
    server_errors: list[str] = field(default_factory=list)  # 5xx and transport errors
    stale_neighbours: list[str] = field(default_factory=list)  # deleted points returned after the delete
    stale_labels: list[str] = field(default_factory=list)  # relabelled points returned with the old label
    unrelabelled: list[str] = field(default_factory=list)  # relabelled points without the new label at the end
    lost_adds: list[str] = field(default_factory=list)
    undeleted: list[str] = field(default_factory=list)
    acked_adds: int = 0
    deletes: int = 0
    relabels: int = 0

    @property
    def ok(self) -> bool:
        return not (self.server_errors or self.stale_neighbours or self.lost_adds or self.undeleted
                    or self.stale_labels or self.unrelabelled)

    def summary(self) -> dict:
        lat = {op: {"n": len(v), "p50_ms": round(1000 * float(np.percentile(v, 50)), 1),
                    "p99_ms": round(1000 * float(np.percentile(v, 99)), 1)} for op, v in self.latencies.items() if v}
        return {"seconds": round(self.seconds, 1), "latency": lat, "statuses": self.statuses,
                "acked_adds": self.acked_adds, "deletes": self.deletes, "relabels": self.relabels,
                "5xx_or_transport_errors": len(self.server_errors), "stale_neighbours": len(self.stale_neighbours),
                "stale_labels": len(self.stale_labels), "lost_adds": len(self.lost_adds),
                "deleted_but_present": len(self.undeleted), "relabelled_but_not": len(self.unrelabelled),
                "ok": self.ok}


class _Soak:
    def __init__(self, url: str, api_key: str | None, seed: int) -> None:
        self.url = url
        self.headers = {"X-API-Key": api_key} if api_key else {}
        self.lock = threading.Lock()
        self.added: list[Added] = []
        self.report = SoakReport(0.0)
        self.stop = threading.Event()
        self.rng = random.Random(seed)
        self.next_seed = 10_000_000 + seed * 1_000_000

    def record(self, op: str, resp: httpx.Response | None, seconds: float, error: str | None = None) -> None:
        with self.lock:
            r = self.report
            r.requests[op] = r.requests.get(op, 0) + 1
            key = f"{op} {resp.status_code if resp is not None else 'transport-error'}"
            r.statuses[key] = r.statuses.get(key, 0) + 1
            r.latencies.setdefault(op, []).append(seconds)
            if resp is None or resp.status_code >= 500:
                r.server_errors.append(f"{op}: {error or resp.text[:200]}")

    def call(self, http: httpx.Client, op: str, method: str, path: str, **kw) -> httpx.Response | None:
        start = time.perf_counter()
        try:
            resp = http.request(method, path, **kw)
        except httpx.TransportError as exc:
            self.record(op, None, time.perf_counter() - start, f"{type(exc).__name__}: {exc}")
            return None
        self.record(op, resp, time.perf_counter() - start)
        return resp

    def adder(self) -> None:
        with httpx.Client(base_url=self.url, timeout=60, headers=self.headers) as http:
            while not self.stop.is_set():
                with self.lock:
                    seed = self.next_seed
                    self.next_seed += 1
                resp = self.call(http, "add", "POST", "/v1/memory", data={"label": LABELS[seed % 3]},
                                 files={"images": (f"{seed}.png", noise_png(seed))})
                if resp is not None and resp.status_code == 201:
                    [point] = resp.json()["added"]
                    with self.lock:
                        self.added.append(Added(point["id"], seed, time.monotonic()))
                        self.report.acked_adds += 1

    def forgetter(self) -> None:
        with httpx.Client(base_url=self.url, timeout=60, headers=self.headers) as http:
            while not self.stop.is_set():
                with self.lock:
                    live = [a for a in self.added if a.deleted_at is None]
                    target = self.rng.choice(live) if len(live) > 4 else None
                    if target is not None:
                        target.deleted_at = -1.0  # claimed: no one else deletes it
                if target is None:
                    time.sleep(0.02)
                    continue
                resp = self.call(http, "forget", "DELETE", f"/v1/memory/points/{target.id}")
                with self.lock:
                    if resp is not None and resp.status_code == 200:
                        target.deleted_at = time.monotonic()
                        self.report.deletes += 1
                    else:
                        target.deleted_at = None

    def relabeller(self) -> None:
        """Relabels live points, each once, to RELABELLED (no add uses that label)."""
        with httpx.Client(base_url=self.url, timeout=60, headers=self.headers) as http:
            while not self.stop.is_set():
                with self.lock:
                    fresh = [a for a in self.added if a.deleted_at is None and a.relabelled_at is None]
                    target = self.rng.choice(fresh) if len(fresh) > 4 else None
                    if target is not None:
                        target.relabelled_at = -1.0  # claimed
                if target is None:
                    time.sleep(0.02)
                    continue
                resp = self.call(http, "relabel", "PATCH", f"/v1/memory/points/{target.id}",
                                 json={"label": RELABELLED})
                with self.lock:
                    if resp is not None and resp.status_code == 200:
                        target.relabelled_at = time.monotonic()
                        self.report.relabels += 1
                    else:  # forgotten meanwhile (404): never relabelled
                        target.relabelled_at = None

    def classifier(self) -> None:
        with httpx.Client(base_url=self.url, timeout=60) as http:
            while not self.stop.is_set():
                with self.lock:
                    pool = self.added[-64:]
                    target = self.rng.choice(pool) if pool else None
                    deleted_before = {a.id for a in self.added if a.deleted_at is not None and a.deleted_at > 0}
                    relabelled_before = {a.id for a in self.added if a.relabelled_at is not None
                                         and a.relabelled_at > 0}
                seed = target.seed if target else self.rng.randrange(1_000_000)
                resp = self.call(http, "classify", "POST", "/v1/classify", params={"k": 10},
                                 files={"image": ("q.png", noise_png(seed))})
                if resp is not None and resp.status_code == 200:
                    neighbors = resp.json()["neighbors"]
                    stale = [n["id"] for n in neighbors if n["id"] in deleted_before]
                    old_label = [n["id"] for n in neighbors if n["id"] in relabelled_before
                                 and n["label"] != RELABELLED]
                    if stale or old_label:
                        with self.lock:
                            self.report.stale_neighbours += stale
                            self.report.stale_labels += old_label

    def verify(self) -> None:
        """Every acknowledged add is there unless deleted; every deleted point is gone; every relabelled point
        that is still there has its new label."""
        with httpx.Client(base_url=self.url, timeout=60) as http:
            for a in self.added:
                status = http.get(f"/v1/memory/points/{a.id}/thumbnail").status_code
                if a.deleted_at is None and status != 200:
                    self.report.lost_adds.append(a.id)
                elif a.deleted_at is not None and a.deleted_at > 0 and status != 404:
                    self.report.undeleted.append(a.id)
                if a.relabelled_at is not None and a.relabelled_at > 0 and a.deleted_at is None:
                    point = http.get(f"/v1/memory/points/{a.id}")
                    if point.status_code != 200 or point.json()["label"] != RELABELLED:
                        self.report.unrelabelled.append(a.id)


def run_soak(url: str, seconds: float, api_key: str | None = None, adders: int = 2, forgetters: int = 1,
             classifiers: int = 3, relabellers: int = 0, seed: int = 0) -> SoakReport:
    """Run the mixed workload against `url` for `seconds`, then check the invariants."""
    soak = _Soak(url, api_key, seed)
    roles = ([soak.adder] * adders + [soak.forgetter] * forgetters + [soak.classifier] * classifiers
             + [soak.relabeller] * relabellers)
    threads = [threading.Thread(target=role, daemon=True) for role in roles]
    start = time.monotonic()
    for t in threads:
        t.start()
    soak.stop.wait(seconds)
    soak.stop.set()
    for t in threads:
        t.join(timeout=120)
    soak.report.seconds = time.monotonic() - start
    soak.verify()
    return soak.report


# ------------------------------------------------------------------ standalone: a service of its own


def tiny_encoder(path: Path) -> str:
    import torch
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                             patch_size=14, image_size=224)).save_pretrained(path)
    return f"dinov2:{path}"


@contextmanager
def own_service(workdir: Path, featurizer: str, threads: int) -> Iterator[str]:
    """An embedded memory of 30 images and the service over it, under uvicorn on a free loopback port."""
    import socket

    import uvicorn

    from retrieval import load_featurizer, open_store
    from server import Settings, create_app
    from vmem import VisualMemory

    feat = load_featurizer(featurizer)
    store = open_store(workdir / "memory", feat.spec)
    store.add(feat.embed([noise_png(i) for i in range(30)]), [LABELS[i % 3] for i in range(30)],
              [f"mem:seed/{i}" for i in range(30)])
    mem = VisualMemory(store, feat, reranker=None)
    app = create_app(Settings(memory=str(workdir / "memory"), auth_disabled=True, featurize_threads=threads),
                     memory=mem)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        mem.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--url", help="a running service (default: start one on loopback)")
    ap.add_argument("--api-key", help="the service's API key, for add and forget")
    ap.add_argument("--featurizer", default="tiny", help="encoder of the service started here "
                    "('tiny': a random 1-layer DINOv2, so the run measures the service, not the encoder)")
    ap.add_argument("--threads", type=int, default=2, help="embedding threads of the service started here")
    ap.add_argument("--adders", type=int, default=2)
    ap.add_argument("--forgetters", type=int, default=1)
    ap.add_argument("--classifiers", type=int, default=3)
    ap.add_argument("--relabellers", type=int, default=1)
    args = ap.parse_args()
    workload = {"adders": args.adders, "forgetters": args.forgetters, "classifiers": args.classifiers,
                "relabellers": args.relabellers}
    if args.url:
        report = run_soak(args.url, args.seconds, args.api_key, **workload)
    else:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="vmem-soak-") as tmp:
            featurizer = tiny_encoder(Path(tmp) / "enc") if args.featurizer == "tiny" else args.featurizer
            with own_service(Path(tmp), featurizer, args.threads) as url:
                report = run_soak(url, args.seconds, **workload)
    print(json.dumps(report.summary(), indent=2))
    for name in ("server_errors", "stale_neighbours", "stale_labels", "lost_adds", "undeleted", "unrelabelled"):
        for item in getattr(report, name)[:5]:
            print(f"{name}: {item}", file=sys.stderr)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
