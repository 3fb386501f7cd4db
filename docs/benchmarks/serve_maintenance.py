"""Classify latency while `vmem serve` runs long operations on the same memory over HTTP.

A probe client classifies Tiny-ImageNet val images a few times a second, throughout; meanwhile the operations
an operator runs are sent one at a time, in rounds of 7 classes each: a backup, the label audit, label names, a
relabel of a whole class and one of two classes' points by id, a forget by label, by source prefix and by
likeness, an erase, four re-ranks waiting on a slow Gemini (the fake server on loopback,
`reranker.testing.FakeGemini`, with a delay); then an import of a large `.npz`. For each it prints the probe's
p50 / p99 / max latency over the requests in flight from its start to `--tail-s` after its answer, against the
idle phases, the errors, and answers that show an edit half made (a relabel's old and new labels among one
answer's neighbours) or not made yet once it returned (a relabelled or forgotten label cited by a request sent
after the edit answered). Percentiles pool the rounds' requests.

    python docs/benchmarks/serve_maintenance.py --memory /tmp/vmem-3000 \
        --queries ../shared/data/tiny-imagenet-200/val --import-rows 100000 > docs/benchmarks/serve-maintenance.json

The memory is copied first (the operations edit it) and needs 7 classes a round. The service runs in a child
process (client and server do not share a GIL), its answer cache off, so every request embeds and searches.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import random
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from reranker.testing import FakeGemini
from vmem.cli.bench_load import _free_port, stop_service
from vmem.cli.bench_search import machine_info


def start(memory: Path, backups: Path, gemini: str, key: str) -> tuple[subprocess.Popen[str], str]:
    port = _free_port()
    env = {**os.environ, "VMEM_API_KEY": key, "VMEM_RESULT_CACHE_SIZE": "0", "VMEM_BACKUP_DIR": str(backups),
           "GOOGLE_GEMINI_BASE_URL": gemini, "GEMINI_API_KEY": "fake"}
    proc = subprocess.Popen([sys.executable, "-c", "from vmem.cli import app; app()", "serve", "--memory",
                             str(memory), "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        if proc.poll() is not None:
            raise SystemExit(f"vmem serve exited: {proc.stderr.read() if proc.stderr else ''}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    stop_service(proc)
    raise SystemExit("vmem serve was not ready after 150 s")


class Probe:
    """Classifies at `rate` a second (at most `in_flight` at once), recording each answer."""

    def __init__(self, http: httpx.AsyncClient, queries: list[tuple[str, str, bytes]], rate: float,
                 in_flight: int) -> None:
        self.http, self.queries, self.rate = http, queries, rate
        self.slots = asyncio.Semaphore(in_flight)
        self.done: list[dict[str, Any]] = []
        self.tasks: set[asyncio.Task[None]] = set()
        self.stopped = False

    async def one(self, query: int) -> None:
        cls, name, data = self.queries[query]
        sent = time.perf_counter()
        rec: dict[str, Any] = {"sent": sent, "query": query}
        try:
            resp = await self.http.post("/v1/classify", params={"k": 20}, files={"image": (name, data)})
            rec["status"] = resp.status_code
            if resp.status_code == 200:
                rec["labels"] = [n["label"] for n in resp.json()["neighbors"]]
        except httpx.HTTPError as exc:
            rec["status"] = type(exc).__name__
        finally:
            self.slots.release()
        rec["ended"] = time.perf_counter()
        self.done.append(rec)

    async def run(self) -> None:
        order = random.Random(0)
        while not self.stopped:
            await self.slots.acquire()
            task = asyncio.create_task(self.one(order.randrange(len(self.queries))))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
            await asyncio.sleep(1 / self.rate)

    def during(self, t0: float, t1: float) -> list[dict[str, Any]]:
        return [r for r in self.done if r["sent"] <= t1 and r["ended"] >= t0]


def summary(recs: list[dict[str, Any]]) -> dict[str, Any]:
    ms = np.array([(r["ended"] - r["sent"]) * 1000 for r in recs if r["status"] == 200])
    pct = (lambda q: round(float(np.percentile(ms, q)), 1)) if len(ms) else (lambda q: None)
    errors = Counter(str(r["status"]) for r in recs if r["status"] != 200)
    return {"requests": len(recs), "errors": sum(errors.values()), "error_kinds": dict(errors),
            "p50_ms": pct(50), "p99_ms": pct(99), "max_ms": pct(100)}


def import_file(export: bytes, rows: int, seed: int = 0) -> bytes:
    """`rows` vectors made elsewhere: the export's vectors repeated with a little noise, unit length, labelled as
    their originals (no sources: each row is its own point)."""
    with np.load(io.BytesIO(export)) as f:
        vectors, labels = f["vectors"].astype(np.float32), f["labels"]
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(vectors), rows)
    out = vectors[pick] + rng.normal(0, 0.02, (rows, vectors.shape[1])).astype(np.float32)
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    buf = io.BytesIO()
    np.savez(buf, vectors=out, labels=labels[pick])
    return buf.getvalue()


async def main(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="vmem-maintenance-"))
    memory = work / "memory"
    shutil.copytree(args.memory, memory, ignore=shutil.ignore_patterns(".vmem-open.lock"))
    key = secrets.token_urlsafe(24)
    auth = {"X-API-Key": key}
    val = Path(args.queries)
    with FakeGemini() as fake:
        fake.latency_s = args.gemini_delay
        proc, url = start(memory, work / "backups", fake.url, key)
        try:
            async with httpx.AsyncClient(base_url=url, timeout=600) as http:
                stats = (await http.get("/v1/memory/stats")).json()
                classes = sorted(stats["per_label"])
                if len(classes) < 7 * args.rounds:
                    raise SystemExit(f"{args.rounds} rounds take 7 classes each: the memory has {len(classes)}")
                # Queries of the classes the edits take: their answers show what an answer cites meanwhile
                queries = [(c, p.name, p.read_bytes()) for c in classes[: 7 * args.rounds]
                           for p in sorted((val / c).rglob("*.JPEG"))[: args.per_class]]
                export = (await http.get("/v1/memory/export", headers=auth)).content
                big = import_file(export, args.import_rows) if args.import_rows else None
                probe = Probe(http, queries, args.rate, args.in_flight)
                runner = asyncio.create_task(probe.run())
                seen: dict[str, dict[str, Any]] = {}  # per operation, over the rounds

                async def phase(name: str, op: Awaitable[httpx.Response] | None, **check: Any) -> None:
                    t0 = time.perf_counter()
                    answer = await op if op is not None else await asyncio.sleep(args.idle_s)
                    t1 = time.perf_counter()
                    await asyncio.sleep(args.tail_s)
                    # In flight from its start to `tail_s` after its answer: the work an edit leaves behind (the
                    # novelty threshold calibrated again) counts too
                    recs = probe.during(t0, t1 + args.tail_s)
                    row = seen.setdefault(name, {"records": [], "seconds": [], "statuses": Counter(), "checks": {}})
                    checks = row["checks"]
                    row["records"] += recs
                    row["seconds"].append(t1 - t0)
                    if answer is not None:
                        row["statuses"][answer.status_code] += 1
                    if (olds := check.get("relabelled")) is not None:  # an answer citing old and new labels
                        checks["half_applied"] = checks.get("half_applied", 0) + sum(
                            bool(set(olds) & set(r.get("labels", ()))) and check["to"] in r.get("labels", ())
                            for r in recs)
                    if (gone := check.get("forgotten", olds)) is not None:  # cited by a request sent after
                        checks["stale_after"] = checks.get("stale_after", 0) + sum(
                            bool(set(gone) & set(r.get("labels", ()))) for r in probe.done if r["sent"] > t1)
                    if "gemini_calls" in check:
                        checks["gemini_calls"] = checks.get("gemini_calls", 0) + fake.count - check["gemini_calls"]
                    print(json.dumps({"operation": name, "seconds": round(t1 - t0, 2), **summary(recs)}),
                          file=sys.stderr, flush=True)

                async def audit() -> httpx.Response:
                    while (resp := await http.get("/v1/memory/suspects")).status_code == 202:
                        await asyncio.sleep(0.5)
                    return resp

                async def reranks(query: int) -> httpx.Response:
                    _, name, data = queries[query]
                    got = await asyncio.gather(*(http.post("/v1/classify", headers=auth,
                                                           params={"rerank": "true", "k": 20},
                                                           files={"image": (f"{i}-{name}", data)})
                                                 for i in range(4)))
                    return got[0]

                async def ids_of(labels: list[str]) -> list[str]:
                    return [p["id"] for c in labels for p in (await http.get(
                        "/v1/memory/points", params={"label": c, "limit": 1000})).json()["points"]]

                await asyncio.sleep(2)  # the probe's first requests open its connections
                asked: set[int] = set()
                for r in range(args.rounds):
                    # Seven classes a round: renamed, two relabelled by their points' ids, forgotten by label, by
                    # source prefix, one point and its copies by likeness
                    c = classes[7 * r : 7 * r + 7]
                    renamed, pair, by_label, by_prefix = c[0], c[1:3], c[3], c[4]
                    like = (await http.get("/v1/memory/points", params={"label": c[5], "limit": 1})).json()[
                        "points"][0]["id"]
                    folder = (await http.get("/v1/memory/points", params={"label": by_prefix, "limit": 1})).json()[
                        "points"][0]["source"]
                    await phase("idle", None)
                    await phase("backup", http.post("/v1/memory/backup", headers=auth))
                    await phase("label audit (suspects)", audit())
                    names = {lab: f"class {i} ({r})" for i, lab in enumerate(classes)}
                    await phase("label names", http.put("/v1/memory/label-names", headers=auth,
                                                                json={"names": names}))
                    await phase("relabel a class", http.post(
                        "/v1/memory/relabel", headers=auth, json={"to": f"{renamed}-renamed", "label": renamed}),
                        relabelled=[renamed], to=f"{renamed}-renamed")
                    two = await ids_of(pair)
                    await phase("relabel the points of 2 classes", http.post(
                        "/v1/memory/relabel", headers=auth, json={"to": f"merged-{r}", "ids": two}),
                        relabelled=pair, to=f"merged-{r}")
                    await phase("forget a label", http.delete(
                        "/v1/memory", headers=auth, params={"label": by_label}), forgotten=[by_label])
                    await phase("forget a source prefix", http.delete(
                        "/v1/memory", headers=auth, params={"source_prefix": str(Path(folder).parent) + "/"}),
                        forgotten=[by_prefix])
                    await phase("forget-like", http.post(f"/v1/memory/points/{like}/forget-like",
                                                                 headers=auth))
                    await phase("erase", http.post("/v1/memory/erase", headers=auth))
                    # A query whose neighbours hold several labels (with one, there is nothing to ask Gemini), and
                    # not asked before (the re-ranker's cache would answer it)
                    query = next((d["query"] for d in probe.done if len(set(d.get("labels", ()))) > 1
                                  and d["query"] not in asked), 0)
                    asked.add(query)
                    await phase(f"4 re-ranks, Gemini {args.gemini_delay:g} s", reranks(query),
                                gemini_calls=fake.count)
                if big is not None:
                    await phase(f"import {args.import_rows:,} points", http.post(
                        "/v1/memory/import", headers={**auth, "Content-Type": "application/octet-stream"},
                        params={"featurizer": stats["featurizer"]["name"], "filename": "big.npz"}, content=big))
                probe.stopped = True
                await runner
                await asyncio.gather(*probe.tasks)
        finally:
            stop_service(proc)
            shutil.rmtree(work, ignore_errors=True)
    return {"bench": "serve-maintenance", "machine": machine_info(),
            "settings": {"memory_points": stats["points"], "featurizer": stats["featurizer"]["name"],
                         "rate": args.rate, "in_flight": args.in_flight, "k": 20,
                         "gemini_delay_s": args.gemini_delay, "import_rows": args.import_rows,
                         "rounds": args.rounds, "idle_s": args.idle_s, "tail_s": args.tail_s},
            "operations": [{"operation": name, "rounds": len(row["seconds"]),
                            "seconds_median": round(statistics.median(row["seconds"]), 2),
                            **summary(row["records"]), "statuses": dict(row["statuses"]),
                            **row["checks"]}
                           for name, row in seen.items()]}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--memory", required=True, help="a built memory (copied first)")
    parser.add_argument("--queries", required=True, help="Tiny-ImageNet's val folder (val/<class>/*.JPEG)")
    parser.add_argument("--per-class", type=int, default=5, help="query images per class (of 7 a round)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the operations, 7 classes each")
    parser.add_argument("--rate", type=float, default=4.0, help="probe requests a second")
    parser.add_argument("--in-flight", type=int, default=8, help="probe requests in flight at most")
    parser.add_argument("--idle-s", type=float, default=10.0)
    parser.add_argument("--tail-s", type=float, default=1.0, help="probe time after each operation")
    parser.add_argument("--gemini-delay", type=float, default=5.0)
    parser.add_argument("--import-rows", type=int, default=100_000)
    print(json.dumps(asyncio.run(main(parser.parse_args())), indent=1))
