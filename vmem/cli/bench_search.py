"""`vmem bench search`: the embedded memory against exact BLAS search and faiss, in one run.

Synthetic class-clustered unit vectors stand in for image features (same-class cosine about
0.6, other-class about 0; fixed seed). Reports build time, RAM and disk, single and batched
QPS, and recall@50 against exact search.
"""

from __future__ import annotations

import gc
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import typer

from retrieval import FeaturizerSpec, IndexSettings, Preprocessing, open_store, point_id_for

from ._common import Quantization, VectorsDtype
from .bench_ram_limit import fresh_queries_needed, serve_within_limit


def machine_info() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "ram_gb": round(physical_memory_bytes() / 2**30, 1),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        # Other work on the machine when the run began: on 2 shared cores it moved single-image latency 10x.
        "load_1min": round(os.getloadavg()[0], 2),
        # How long idle OpenMP threads spin (retrieval/_openmp.py): under load it moved p99 latency 9x.
        "gomp_spincount": os.environ.get("GOMP_SPINCOUNT"),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
    }
    if torch.cuda.is_available():
        info["cuda_memory_gb"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    return info


def cpu_model() -> str:
    """The CPU's model name (platform.processor() says only "x86_64", which tells no two machines apart)."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def physical_memory_bytes() -> int:
    """The machine's RAM (0 if unknown): sysconf answers on Linux and macOS, where /proc/meminfo is Linux's."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # no such name here (Windows has no sysconf)
        return 0


def rss_mb(field: str = "VmRSS") -> float:
    """Resident memory in MB: VmRSS (all), RssAnon (the process's own) or RssFile (mapped file pages).

    NaN where /proc is not (macOS): the benchmarks still run, their memory figures unknown."""
    try:
        lines = Path("/proc/self/status").read_text(encoding="utf-8").splitlines()
    except OSError:
        return float("nan")
    for line in lines:
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def dir_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def synthetic_features(n: int, dim: int, n_classes: int, seed: int, same_class_cos: float = 0.6,
                       chunk: int = 200_000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit vectors v = sqrt(c)·centre + sqrt(1-c)·noise: same-class cosine ≈ c, other-class ≈ 0."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_classes, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = rng.integers(0, n_classes, size=n)
    out = np.empty((n, dim), np.float32)
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        noise = rng.standard_normal((e - s, dim)).astype(np.float32)
        noise /= np.linalg.norm(noise, axis=1, keepdims=True)
        v = np.sqrt(same_class_cos) * centres[labels[s:e]] + np.sqrt(1 - same_class_cos) * noise
        out[s:e] = v / np.linalg.norm(v, axis=1, keepdims=True)
    return out, labels, centres


def fresh_queries(centres: np.ndarray, count: int, seed: int, same_class_cos: float = 0.6) -> np.ndarray:
    """More unit vectors around the same centres as `synthetic_features`: queries never asked before."""
    rng = np.random.default_rng([seed, 1])
    noise = rng.standard_normal((count, centres.shape[1])).astype(np.float32)
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    labels = rng.integers(0, len(centres), size=count)
    v = np.sqrt(same_class_cos) * centres[labels] + np.sqrt(1 - same_class_cos) * noise
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def add_synthetic(store, vecs: np.ndarray, labels: np.ndarray, step: int = 20_000) -> None:
    """Insert vector i as the point `synthetic:i` labelled `c<class>`, `step` points per call."""
    for s in range(0, len(vecs), step):
        e = min(len(vecs), s + step)
        store.add(vecs[s:e], [f"c{c}" for c in labels[s:e]], [f"synthetic:{i}" for i in range(s, e)])


def synthetic_indices(hits) -> list[int]:
    """The vector indices behind the hits of one query on a memory filled by `add_synthetic`."""
    return [int(h.source.split(":")[1]) for h in hits]


def recall_at(found: list[list[int]] | np.ndarray, truth: np.ndarray, k: int) -> float:
    """Mean share of each query's true k nearest that were found. A memory of fewer than k points has fewer
    true neighbours (exact search pads with -1): the share is of those, so finding them all is 1."""
    def share(f, t) -> float:
        wanted = {i for i in t[:k].tolist() if i >= 0}
        return len(set(list(f)[:k]) & wanted) / max(1, len(wanted))

    return float(np.mean([share(f, t) for f, t in zip(found, truth, strict=True)]))


def sgemm_gflops(size: int = 2048, repeats: int = 5, library: Literal["numpy", "torch"] = "numpy") -> float:
    """The machine's float32 matrix-multiply throughput through numpy or torch (median of repeats)."""
    import torch

    a = np.random.default_rng(0).standard_normal((size, size), dtype=np.float32)
    b = a.T.copy()
    if library == "torch":
        a, b = torch.from_numpy(a), torch.from_numpy(b)
    a @ b
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return 2 * size**3 / statistics.median(times) / 1e9


def exact_search_efficiency(queries: np.ndarray, vecs: np.ndarray, k: int, repeats: int) -> dict[str, Any]:
    """Exact search multiplying each way it can here, against the machine's sgemm, timed side by side.

    Each repeat measures the square float32 sgemm (the better of numpy and torch: the machine's
    throughput, not one library's) and then one search per product (numpy, torch, and bfloat16
    where the CPU has bfloat16 instructions), so a change in the machine's state between them cancels
    in the ratio. The ratio counts the float32 search's FLOPs (2·n·dim per query) whatever the
    product's type: above 1 for bfloat16 means an exact search faster than float32 products could
    be. Figures are medians over repeats; the unsuffixed ones are the product `exact_search` uses here.
    """
    from eval.exact import exact_search, measured_products, product_for

    flop = 2 * len(vecs) * vecs.shape[1] * len(queries)
    libraries: tuple[Literal["numpy", "torch"], ...] = ("numpy", "torch")
    products = measured_products()
    sgemm: dict[str, list[float]] = {lib: [] for lib in libraries}
    qps: dict[str, list[float]] = {p: [] for p in products}
    ratio: dict[str, list[float]] = {p: [] for p in products}
    for _ in range(repeats):
        for lib in libraries:
            sgemm[lib].append(sgemm_gflops(repeats=3, library=lib))
        best = max(sgemm[lib][-1] for lib in libraries)
        for p in products:
            t = timed(lambda p=p: exact_search(queries, vecs, k, product=p), 1)
            qps[p].append(len(queries) / t)
            ratio[p].append(flop / t / 1e9 / best)
    used = product_for(len(vecs))
    res: dict[str, Any] = {
        "exact_product": used,
        "exact_qps_batch": round(statistics.median(qps[used]), 1),
        "exact_matmul_efficiency": round(statistics.median(ratio[used]), 3),
        "sgemm_gflops": round(statistics.median(map(max, *sgemm.values())), 1),
    }
    for p in products:
        res[f"exact_qps_batch_{p}"] = round(statistics.median(qps[p]), 1)
        res[f"exact_matmul_efficiency_{p}"] = round(statistics.median(ratio[p]), 3)
    for lib in libraries:
        res[f"sgemm_gflops_{lib}"] = round(statistics.median(sgemm[lib]), 1)
    return res


def timed(fn, repeats: int) -> float:
    """Median seconds of `repeats` calls."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def forget_latency(store, vecs: np.ndarray, n: int, first: int = 0) -> dict[str, Any]:
    """Delete points `synthetic:first..first+n-1` one by one; query for each right after its delete returns."""
    lat, after = [], []
    returned_after_delete = 0
    for i in range(first, first + n):
        pid = point_id_for(f"synthetic:{i}")
        t = time.perf_counter()
        store.delete_ids([pid])
        t_deleted = time.perf_counter()
        lat.append(t_deleted - t)
        # The very next query, issued the moment delete returned, must not see it.
        returned_after_delete += any(h.id == pid for h in store.query(vecs[i], 5))
        after.append(time.perf_counter() - t_deleted)
    return {"forgets": n, "delete_ms_p50": round(1000 * float(np.percentile(lat, 50)), 3),
            "delete_ms_p99": round(1000 * float(np.percentile(lat, 99)), 3),
            "returned_after_delete": returned_after_delete,
            # An upper bound on the time until a deleted point can no longer be returned: 0 ms after delete
            # returns, proven by a query that completed within this many ms.
            "invisible_within_ms_p99": round(1000 * float(np.percentile(after, 99)), 3)}


def copies_in_files(memory: Path, vectors: np.ndarray) -> int:
    """How many of these vectors' stored bytes (float16 or float32) are in the memory's files, write-ahead
    log aside. Each vector is looked for by its 32 values with the most non-zeros (real features are sparse)."""
    blobs = b"".join(f.read_bytes() for f in memory.rglob("*") if f.is_file() and "wal" not in f.parts)

    def window(v: np.ndarray) -> slice:
        start = int(np.argmax(np.convolve(v != 0, np.ones(32), "valid")))
        return slice(start, start + 32)

    return sum(any(v[window(v)].astype(t).tobytes() in blobs for t in ("<f2", "<f4")) for v in vectors)


def erase_after_forgetting(store, memory: Path, forgotten: np.ndarray) -> dict[str, Any]:
    """Time `erase_forgotten` once points were forgotten, and look for a sample of them in the files before
    and after (20 vectors: each look reads every file)."""
    sample = forgotten[np.linspace(0, len(forgotten) - 1, min(20, len(forgotten))).astype(int)]
    store.flush()
    before = copies_in_files(memory, sample)
    t = time.perf_counter()
    store.erase_forgotten()
    return {"erase_s": round(time.perf_counter() - t, 2), "copies_in_files_before_erase": before,
            "copies_in_files_after_erase": copies_in_files(memory, sample), "copies_looked_for": len(sample)}


def run_search_bench(n: int, dim: int, queries: int, k: int, settings: IndexSettings | list[IndexSettings],
                     seed: int, repeats: int, batch: int, faiss_baseline: bool, workdir: Path, echo=print,
                     ef_sweep: tuple[int, ...] = (), ram_limits: tuple[float, ...] = ()) -> dict[str, Any]:
    """Exact search, then each index in turn on the same vectors, then faiss: one run, one machine state.

    With several index settings, the top-level keys describe the first and `indexes` lists every one.
    """
    # Here, not at the top: this module is imported by every vmem command (its bench group), and `eval` is the
    # whole measuring package (80 ms of each `vmem info`, `vmem labels`...).
    from eval.exact import exact_search

    all_settings = settings if isinstance(settings, list) else [settings]
    n_classes = max(2, n // 1000)
    echo(f"generating {n:,} x {dim} vectors in {n_classes} classes (seed {seed})")
    # Queries come from the same classes as the memory (fresh samples around the same centres).
    allv, all_labels, centres = synthetic_features(n + queries, dim, n_classes, seed)
    vecs, labels, qv = allv[:n], all_labels[:n], allv[n:]
    res: dict[str, Any] = {"n": n, "dim": dim, "queries": queries, "k": k,
                           "raw_vector_mb": round(vecs.nbytes / 2**20, 1)}

    echo("exact search (blocked BLAS) for ground truth")
    truth = exact_search(qv, vecs, k)[0]
    res.update(exact_search_efficiency(qv, vecs, k, repeats))

    # Queries never asked before, for serving within RAM limits: three batched rounds, then single queries.
    fresh = fresh_queries(centres, fresh_queries_needed(queries), seed) if ram_limits else None
    per_index = []
    for i, index in enumerate(all_settings):
        echo(f"index {i + 1} of {len(all_settings)}: {index.model_dump()}")
        per_index.append(_bench_store(vecs, labels, qv, truth, k, index, repeats, batch, workdir / f"memory-{i}",
                                      echo, ef_sweep, ram_limits, fresh))
    res.update(per_index[0])
    if len(per_index) > 1:
        res["indexes"] = per_index

    if faiss_baseline:
        import faiss
        import torch

        # As many threads as vmem's own searches use (torch's), so the two are compared on the same cores.
        faiss.omp_set_num_threads(torch.get_num_threads())
        echo("faiss baselines")
        flat = faiss.IndexFlatIP(dim)
        flat.add(vecs)
        t = timed(lambda: flat.search(qv, k), repeats)
        res["faiss_flat_qps_batch"] = round(queries / t, 1)
        t0 = time.perf_counter()
        hnsw = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = 128
        hnsw.add(vecs)
        res["faiss_hnsw_build_s"] = round(time.perf_counter() - t0, 1)
        hnsw.hnsw.efSearch = max(128, 2 * k)
        _, found = hnsw.search(qv, k)
        t = timed(lambda: hnsw.search(qv, k), repeats)
        res["faiss_hnsw_qps_batch"] = round(queries / t, 1)
        res["faiss_hnsw_recall_at_50"] = round(recall_at(found, truth, min(50, k)), 4)
        # Its own operating point (denser graph than vmem's m=16), all queries in one call: read its recall
        # beside its speed.
        res["faiss_hnsw_settings"] = {"m": 32, "ef_construction": 128, "ef_search": hnsw.hnsw.efSearch,
                                      "queries_per_call": queries, "threads": torch.get_num_threads()}
    return res


def _bench_store(vecs: np.ndarray, labels: np.ndarray, qv: np.ndarray, truth: np.ndarray, k: int,
                 settings: IndexSettings, repeats: int, batch: int, path: Path, echo,
                 ef_sweep: tuple[int, ...], ram_limits: tuple[float, ...] = (),
                 fresh: np.ndarray | None = None) -> dict[str, Any]:
    """Build one embedded memory with `settings`, then time its queries and deletes."""
    n, dim, queries = len(vecs), vecs.shape[1], len(qv)
    res: dict[str, Any] = {"index": settings.model_dump()}
    spec = FeaturizerSpec(name="synthetic", dim=dim, preprocessing=Preprocessing(resize=1, crop=1))
    gc.collect()
    rss0, anon0, file0 = rss_mb(), rss_mb("RssAnon"), rss_mb("RssFile")
    echo("inserting into the embedded memory")
    t0 = time.perf_counter()
    store = open_store(path, spec, index=settings)
    add_synthetic(store, vecs, labels)
    t_insert = time.perf_counter() - t0
    echo("building the index")
    store.optimize()
    res["insert_s"] = round(t_insert, 1)
    res["build_s"] = round(time.perf_counter() - t0, 1)
    info = store.shard.info()  # type: ignore[attr-defined]  # an embedded memory's engine (EdgeMemoryStore)
    res["segments"] = info.segments_count
    # The engine indexes a segment only past its size threshold (about 20 MB of vectors): below it, a search
    # scans every vector, and the figures are a scan's, whatever the index settings say.
    res["indexed_vectors"] = info.indexed_vectors_count
    if info.indexed_vectors_count < n:
        echo(f"note: only {info.indexed_vectors_count:,} of {n:,} vectors are in the HNSW index (the engine "
             "indexes a segment once it holds about 20 MB of vectors): this run measures a scan of the rest")
    store.flush()
    gc.collect()
    res["rss_mb"] = round(rss_mb(), 1)
    res["store_rss_mb"] = round(rss_mb() - rss0, 1)
    # Mapped file pages (on-disk vectors, the graph) count in RSS but are page cache the kernel can
    # reclaim; anonymous memory cannot be.
    res["store_rss_anon_mb"] = round(rss_mb("RssAnon") - anon0, 1)
    res["store_rss_file_mb"] = round(rss_mb("RssFile") - file0, 1)
    res["disk_mb"] = round(dir_mb(path), 1)

    echo("single queries")
    n_single = min(queries, 500)
    singles = [synthetic_indices(store.query(q, k)) for q in qv[:n_single]]  # warm-up and recall
    t_single = timed(lambda: [store.query(q, k) for q in qv[:n_single]], repeats)
    res["qps_single"] = round(n_single / t_single, 1)
    res["recall_at_50_single"] = round(recall_at(singles, truth[:n_single], min(50, k)), 4)

    for ef in ef_sweep:
        # hnsw_ef is a search-time setting: one built index answers the whole sweep.
        store.meta.index = settings.model_copy(update={"hnsw_ef": ef})
        found = [synthetic_indices(store.query(q, k)) for q in qv[:n_single]]
        t_ef = timed(lambda: [store.query(q, k) for q in qv[:n_single]], repeats)
        recall = recall_at(found, truth[:n_single], min(50, k))
        res.setdefault("ef_sweep", []).append({"hnsw_ef": max(ef, 2 * k), "qps_single": round(n_single / t_ef, 1),
                                               "recall_at_50": round(recall, 4)})
        # Batched as the main figures are (`batch` queries a call), with its own recall: the two can differ.
        def in_batches():
            return [hits for s in range(0, queries, batch) for hits in store.query_batch(qv[s : s + batch], k)]
        swept = [synthetic_indices(h) for h in in_batches()]
        t_ef_batch = timed(in_batches, repeats)
        res["ef_sweep"][-1]["qps_batch"] = round(queries / t_ef_batch, 1)
        res["ef_sweep"][-1]["recall_at_50_batch"] = round(recall_at(swept, truth, min(50, k)), 4)
    store.meta.index = settings

    echo("batched queries")
    def run_batches():
        return [hits for s in range(0, queries, batch) for hits in store.query_batch(qv[s : s + batch], k)]
    rows_before = getattr(store, "rows_read", 0)
    batched = [synthetic_indices(h) for h in run_batches()]
    rows_read = getattr(store, "rows_read", 0) - rows_before
    t_batch = timed(run_batches, repeats)
    res["qps_batch"] = round(queries / t_batch, 1)
    res["recall_at_50"] = round(recall_at(batched, truth, min(50, k)), 4)
    if settings.doubtful:
        res["rows_read_per_query"] = round(rows_read / queries, 2)
        # The same index answering from its codes alone, alternating with the doubtful re-ranking.
        store.meta.index = settings.model_copy(update={"rescore_doubtful": False})
        codes = [synthetic_indices(h) for h in run_batches()]
        res["codes_only_recall_at_50"] = round(recall_at(codes, truth, min(50, k)), 4)
        times: dict[bool, list[float]] = {True: [], False: []}
        for _ in range(repeats):
            for on in (False, True):
                store.meta.index = settings.model_copy(update={"rescore_doubtful": on})
                times[on].append(timed(run_batches, 1))
        res["codes_only_qps_batch"] = round(queries / statistics.median(times[False]), 1)
        res["doubtful_qps_batch_alternating"] = round(queries / statistics.median(times[True]), 1)
        store.meta.index = settings

    echo("exact search through the store (exact=True)")
    n_ex = min(queries, 100)
    t_store_exact = timed(lambda: store.query_batch(qv[:n_ex], k, exact=True), 1)
    res["store_exact_qps_batch"] = round(n_ex / t_store_exact, 1)

    # Fresh processes open the memory while it is still whole (the engine locks it: closed here first).
    store.close()
    echo("memory of a fresh process serving the built memory")
    res.update(serving_rss(path, qv[:n_single], k))
    for factor in ram_limits:
        echo(f"a fresh process serving the built memory within {factor} x the raw vector bytes of RAM")
        limited = serve_within_limit(path, qv, truth, fresh, k, int(factor * vecs.nbytes))  # type: ignore[arg-type]  # made with ram_limits
        res.setdefault("ram_limits", []).append({"ram_limit_x": factor, **limited})

    echo("forget: delete latency, then whether the point can still be returned")
    store = open_store(path)
    res.update(forget_latency(store, vecs, min(n, 200)))
    store.close()
    return res


_SERVING_PROBE = """
import json, sys
import numpy as np
import qdrant_edge  # noqa: F401 - its library's pages are not the memory's
from retrieval import open_store
from retrieval.store import ORIGINAL_VECTORS_FILE
from vmem.cli.bench_search import mapped_rss_mb, rss_mb
before = {f: rss_mb(f) for f in ("VmRSS", "RssAnon", "RssFile")}
store = open_store(sys.argv[1])
for _ in range(2):
    store.query_batch(np.load(sys.argv[2]), int(sys.argv[3]))
grown = {f: rss_mb(f) - before[f] for f in before}
grown["originals"] = mapped_rss_mb(ORIGINAL_VECTORS_FILE)
print(json.dumps(grown))
"""


def mapped_rss_mb(path_suffix: str) -> float:
    """Resident MB of this process's mappings of files whose path ends with `path_suffix`."""
    kb, counting = 0, False
    try:
        lines = Path("/proc/self/smaps").read_text(encoding="utf-8").splitlines()
    except OSError:  # not Linux
        return float("nan")
    for line in lines:
        if line[:1] in "0123456789abcdef" and "-" in line.split(" ", 1)[0]:
            counting = line.rstrip().endswith(path_suffix)
        elif counting and line.startswith("Rss:"):
            kb += int(line.split()[1])
    return kb / 1024


def serving_rss(path: Path, queries: np.ndarray, k: int) -> dict[str, float]:
    """Resident memory a fresh process adds by opening the memory and answering `queries`.

    The building process's RSS also holds what the build left behind (the engine's merge buffers peak
    at several GB at 1.28M points); a server that opens a built memory does not pay for that.
    """
    query_file = path.parent / f"{path.name}-queries.npy"
    np.save(query_file, queries)
    out = subprocess.run([sys.executable, "-c", _SERVING_PROBE, str(path), str(query_file), str(k)],
                         capture_output=True, text=True, check=True)
    grown = json.loads(out.stdout.strip().splitlines()[-1])
    return {"serving_rss_mb": round(grown["VmRSS"], 1), "serving_rss_anon_mb": round(grown["RssAnon"], 1),
            "serving_rss_file_mb": round(grown["RssFile"], 1),
            # Page cache of the original vectors (mapped on disk, read to rescore); the rest is the index.
            "serving_rss_originals_mb": round(grown["originals"], 1),
            "serving_rss_without_originals_mb": round(grown["VmRSS"] - grown["originals"], 1)}


def search(
    n: Annotated[int, typer.Option(min=1, help="memory size")] = 100_000,
    dim: Annotated[int, typer.Option(min=2, help="vector dimension")] = 384,
    queries: Annotated[int, typer.Option(min=1, help="query vectors")] = 1000,
    k: Annotated[int, typer.Option(min=50, help="neighbours per query (recall@50 is measured: at least 50)")] = 50,
    m: Annotated[int, typer.Option(help="HNSW m")] = IndexSettings().m,
    ef_construct: Annotated[int, typer.Option(help="HNSW ef_construct")] = IndexSettings().ef_construct,
    hnsw_ef: Annotated[int, typer.Option(help="HNSW search ef")] = IndexSettings().hnsw_ef,
    quantization: Annotated[list[Quantization] | None, typer.Option(
        help="int8 (scalar) or turboquant8 codes, rescored unless --no-rescore; give it more than once (none, "
             "int8, turboquant8) to compare them in one run")] = None,
    oversampling: Annotated[float, typer.Option(help="quantized: oversampling")] = IndexSettings().oversampling,
    rescore: Annotated[bool, typer.Option(
        help="quantized: re-rank candidates by the original vectors; --no-rescore answers from the codes alone"),
    ] = IndexSettings().rescore,
    rescore_doubtful: Annotated[bool, typer.Option(
        help="with --no-rescore: re-rank the candidates too close to the k-th best to call, from vmem's own copy "
             "of the originals (also times the same index on its codes alone)")] = False,
    vectors_on_disk: Annotated[bool, typer.Option(help="keep the original vectors on disk (mmap)")] = (
        IndexSettings().vectors_on_disk),
    vectors_dtype: Annotated[list[VectorsDtype] | None, typer.Option(
        help="storage type of the original vectors; give it twice (float32, float16) to compare both in one run"),
    ] = None,
    batch: Annotated[int, typer.Option(min=1, help="queries per query_batch call")] = 100,
    repeats: Annotated[int, typer.Option(min=1, help="timed repeats (medians are reported)")] = 3,
    seed: Annotated[int, typer.Option()] = 0,
    faiss: Annotated[bool, typer.Option(help="include faiss flat and HNSW baselines")] = True,
    ef_sweep: Annotated[str, typer.Option(help="also measure these search ef values on the same index")] = "",
    workdir: Annotated[Path | None, typer.Option(help="where to build the memory (default: a temp dir)")] = None,
    keep: Annotated[bool, typer.Option(help="keep the built memories (their path is printed)")] = False,
    ram_limit: Annotated[list[float] | None, typer.Option(
        help="also serve each built memory in a fresh process limited (memory cgroup; needs root) to this many "
             "times the raw vector bytes of RAM, e.g. 0.5; repeatable")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print only the JSON result")] = False,
) -> None:
    """Search speed and recall of the embedded memory, with exact and faiss baselines in the same run."""
    if k > n:
        raise typer.BadParameter(f"--k {k} is more than the memory's {n} points: give --n of at least {k}",
                                 param_hint="--k")
    if faiss:  # before any work: a run that fails at its end loses every figure
        try:
            import faiss as _  # noqa: F401
        except ImportError:
            raise typer.BadParameter("faiss-cpu is not installed: pip install 'vmem[bench]' (or faiss-cpu), or run "
                                     "with --no-faiss", param_hint="--faiss") from None
    settings = [IndexSettings(m=m, ef_construct=ef_construct, hnsw_ef=hnsw_ef, quantization=q.value,
                              oversampling=oversampling, rescore=rescore, rescore_doubtful=rescore_doubtful,
                              vectors_on_disk=vectors_on_disk, vectors_dtype=t.value)
                for q in quantization or [Quantization(IndexSettings().quantization)]
                for t in vectors_dtype or [VectorsDtype(IndexSettings().vectors_dtype)]]
    machine = machine_info()
    def say(msg: str) -> None:
        typer.echo(msg, err=True)
    if not json_out:
        say(f"machine: {json.dumps(machine)}")
        say(f"settings: n={n} dim={dim} queries={queries} k={k} batch={batch} "
            f"{[index.model_dump() for index in settings]}")
    tmp = Path(tempfile.mkdtemp(dir=workdir, prefix="vmem-bench-"))
    try:
        sweep = tuple(int(x) for x in ef_sweep.split(",") if x.strip())
        res = run_search_bench(n, dim, queries, k, settings, seed, repeats, batch, faiss, tmp, say, sweep,
                               tuple(ram_limit or ()))
    finally:
        if keep:
            say(f"kept the built memories under {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    typer.echo(json.dumps({"machine": machine, **res}))


def forget(
    n: Annotated[int, typer.Option(min=100, help="memory size")] = 100_000,
    dim: Annotated[int, typer.Option(min=2, help="vector dimension")] = 384,
    forgets: Annotated[int, typer.Option(min=1, help="points deleted one by one, each round")] = 500,
    rounds: Annotated[int, typer.Option(min=1, help="rounds of forgetting then erasing, on the same memory")] = 3,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Unlearning latency: delete p50/p99, whether a deleted point is ever returned afterwards, and the time
    to erase the deleted points' vectors from the memory's files (`erase_forgotten`)."""
    from eval.exact import exact_search

    machine = machine_info()
    typer.echo(f"machine: {json.dumps(machine)}", err=True)
    typer.echo(f"settings: n={n} dim={dim} forgets={forgets} rounds={rounds} {IndexSettings().model_dump()}",
               err=True)
    if rounds * forgets > n - 50:  # recall@50 is measured over the points left
        raise typer.BadParameter(f"{rounds} rounds of {forgets} forgets need more than {n} points: give --n of "
                                 f"at least {rounds * forgets + 50}", param_hint="--forgets")
    vecs, labels, centres = synthetic_features(n, dim, max(2, n // 1000), seed)
    queries = fresh_queries(centres, 200, seed)
    spec = FeaturizerSpec(name="synthetic", dim=dim, preprocessing=Preprocessing(resize=1, crop=1))

    def recall_over_points_from(first_kept: int) -> float:
        """recall@50 of the memory's search against exact search over the points not forgotten."""
        truth = exact_search(queries, vecs[first_kept:], 50)[0] + first_kept
        found = [[int(h.source.removeprefix("synthetic:")) for h in hits] for hits in store.query_batch(queries, 50)]
        return round(recall_at(found, truth, 50), 4)

    with tempfile.TemporaryDirectory(prefix="vmem-bench-") as tmp:
        store = open_store(Path(tmp) / "memory", spec)
        add_synthetic(store, vecs, labels)
        store.optimize()
        recall_before = recall_over_points_from(0)
        per_round = []
        for r in range(rounds):
            first = r * forgets
            one = forget_latency(store, vecs, forgets, first)
            typer.echo(f"round {r + 1} of {rounds}: erasing the forgotten points from the memory's files", err=True)
            one.update(erase_after_forgetting(store, Path(tmp) / "memory", vecs[first : first + forgets]))
            one["points_after_erase"] = store.count()
            per_round.append(one)
        # Does search find as well in the rewritten segments?
        recall_after = recall_over_points_from(rounds * forgets)
        store.close()
    # Medians over the rounds; counts summed; every round's figures kept.
    res: dict[str, Any] = {"forgets": forgets, "rounds": rounds}
    for key in per_round[0]:
        values = [one[key] for one in per_round]
        res[key] = (sum(values) if key in {"returned_after_delete", "copies_in_files_before_erase",
                                           "copies_in_files_after_erase", "copies_looked_for"}
                    else values[-1] if key in {"points_after_erase", "forgets"} else statistics.median(values))
    res["recall_at_50_before"], res["recall_at_50_after_erase"] = recall_before, recall_after
    typer.echo(json.dumps({"machine": machine, "n": n, "dim": dim, **res, "per_round": per_round}))
