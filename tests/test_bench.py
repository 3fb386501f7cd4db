"""`vmem bench search`, `forget` and `featurize`, small: the JSON a benchmark run is read from."""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from tests._lite0_once import lite0_loaded_once  # noqa: F401 - autouse: one Lite0 load for the module
from vmem.cli import app
from vmem.cli.bench_search import recall_at


@pytest.fixture(autouse=True)
def _small_sgemm(monkeypatch):
    """`bench search` rates the machine's sgemm on 512 x 512 products here, not 2048 x 2048: the same code and
    JSON at a 64th of the work (3.4 s of each search run's on 2 cores); only that the figure is given is tested."""
    from vmem.cli import bench_search

    monkeypatch.setattr(bench_search, "sgemm_gflops", functools.partial(bench_search.sgemm_gflops, 512))


def bench(*args: str) -> dict:
    result = CliRunner().invoke(app, ["bench", *args], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_bench_search_reports_the_issue_keys_with_baselines_in_the_same_run():
    res = bench("search", "--n", "3000", "--queries", "50", "--repeats", "1", "--quantization", "int8",
                "--ef-sweep", "256")
    for key in ("n", "dim", "build_s", "qps_single", "qps_batch", "recall_at_50", "exact_qps_batch",
                "faiss_hnsw_qps_batch", "faiss_hnsw_recall_at_50", "rss_mb", "exact_matmul_efficiency"):
        assert key in res, key
    assert res["index"]["quantization"] == "int8" and res["n"] == 3000
    # 3,000 x 384 is under the engine's indexing threshold: the run says how much of it the index holds.
    assert res["indexed_vectors"] == 0 and res["machine"]["cpu"] not in ("x86_64", "")
    assert res["machine"]["load_1min"] >= 0  # how busy the machine was: figures from a loaded one are not comparable
    assert res["faiss_hnsw_settings"]["m"] == 32 and 0 < res["ef_sweep"][0]["recall_at_50_batch"] <= 1
    assert res["recall_at_50"] >= 0.95 and res["faiss_hnsw_recall_at_50"] >= 0.95
    assert res["ef_sweep"][0]["hnsw_ef"] == 256
    assert res["returned_after_delete"] == 0
    # exact search through each product library, against the better library's sgemm in the same repeat
    assert res["exact_product"] in ("numpy", "torch", "bfloat16")
    assert res["exact_qps_batch"] == res[f"exact_qps_batch_{res['exact_product']}"]
    assert res["sgemm_gflops"] >= min(res["sgemm_gflops_numpy"], res["sgemm_gflops_torch"]) > 0
    assert res["serving_rss_mb"] > 0  # a fresh process opened the built memory and answered queries
    # ... and says how much of that is page cache of the original vectors (read only to rescore)
    assert 0 <= res["serving_rss_originals_mb"] <= res["serving_rss_file_mb"]
    assert res["serving_rss_without_originals_mb"] == pytest.approx(
        res["serving_rss_mb"] - res["serving_rss_originals_mb"], abs=0.2)


def test_bench_search_compares_float_and_int8_indexes_on_the_same_vectors():
    res = bench("search", "--n", "2000", "--queries", "30", "--repeats", "1", "--no-faiss",
                "--quantization", "none", "--quantization", "int8")
    assert [ix["index"]["quantization"] for ix in res["indexes"]] == ["none", "int8"]
    for ix in res["indexes"]:
        assert ix["recall_at_50"] >= 0.95 and ix["build_s"] > 0 and ix["store_rss_anon_mb"] is not None
    assert res["qps_single"] == res["indexes"][0]["qps_single"]  # the top level is the first index


def test_bench_search_refuses_an_unknown_quantization():
    result = CliRunner().invoke(app, ["bench", "search", "--quantization", "int4"], env={"COLUMNS": "250"})
    assert result.exit_code == 2 and "int4" in result.output


@pytest.mark.parametrize(("args", "says"), [
    (["search", "--n", "30", "--queries", "10"], "more than the memory's 30 points"),
    (["search", "--queries", "0"], "--queries"),
    (["search", "--k", "10"], "--k"),
    (["search", "--repeats", "0"], "--repeats"),
    (["forget", "--n", "2000", "--forgets", "5000"], "need more than 2000 points"),
    (["forget", "--rounds", "0"], "--rounds"),
    (["featurize", "--batch-sizes", "0"], "--batch-sizes"),
    (["featurize", "--models", "foo"], "'foo' is not one of"),
    (["featurize", "--workers", "x"], "--workers"),
])
def test_bench_options_that_cannot_be_measured_are_refused_before_any_work(args, says):
    # Each used to end in a traceback, or exit 0 with a NaN or a silently changed setting.
    result = CliRunner().invoke(app, ["bench", *args], env={"COLUMNS": "250"})
    assert result.exit_code == 2 and says in " ".join(result.output.split()), result.output


def test_recall_counts_only_the_true_neighbours_there_are():
    truth = np.array([[3, 1, 2, -1, -1]])  # a memory of 3 points, k = 5: exact search pads with -1
    assert recall_at([[1, 2, 3]], truth, 5) == 1.0
    assert recall_at([[1, 7, 8]], truth, 5) == pytest.approx(1 / 3)


def test_bench_forget_never_returns_a_deleted_point():
    res = bench("forget", "--n", "3000", "--forgets", "50", "--rounds", "2")
    assert res["forgets"] == 50 and isinstance(res["forgets"], int)
    assert res["rounds"] == len(res["per_round"]) == 2 and res["returned_after_delete"] == 0
    # Forgotten but still in the engine's segment files, until erased (20 looked for each round).
    assert res["copies_in_files_before_erase"] == res["copies_looked_for"] == 40
    assert res["copies_in_files_after_erase"] == 0 and res["points_after_erase"] == 2900 and res["erase_s"] >= 0
    assert res["recall_at_50_before"] > 0.9 and res["recall_at_50_after_erase"] > 0.9
    assert res["delete_ms_p50"] > 0


def test_bench_featurize_compares_decoding_in_workers_and_in_process_in_one_run():
    from retrieval.featurizers import decode_workers

    # Two batches of two: enough for the run to start worker processes where asked (fewer images than two
    # batches decode in-process), at half the forwards of two batches of four.
    res = bench("featurize", "--images", "4", "--batch-sizes", "2", "--models", "efficientnet-lite0",
                "--workers", "auto,1", "--repeats", "1")
    rows = res["results"]
    assert [r["decode_workers"] for r in rows] == [decode_workers(torch.device("cpu")), 1]
    for r in rows:
        assert r["raw_forward_img_s"] > 0 and r["pipeline_img_s"] > 0
        # The ratio is of the unrounded rates; the rates are printed to 0.1 image/s (a few images/s on a busy machine)
        assert r["pipeline_vs_raw"] == pytest.approx(r["pipeline_img_s"] / r["raw_forward_img_s"], rel=0.05)


def test_bench_featurize_compares_resize_kernels_and_jpeg_drafts_on_phone_size_photos():
    res = bench("featurize", "--images", "2", "--batch-sizes", "2", "--models", "efficientnet-lite0",
                "--photo-size", "1200x1100", "--resamplers", "torch,pil", "--jpeg-draft", "on,off", "--repeats", "1")
    assert res["photo_size"] == "1200x1100"
    assert [(r["resampler"], r["jpeg_draft"]) for r in res["results"]] == [
        ("torch", True), ("torch", False), ("pil", True), ("pil", False)]
    assert all(r["decode_only_img_s"] > 0 for r in res["results"])


def test_bench_featurize_compares_decode_threads_and_jpeg_decoders_and_restores_the_decoder():
    from retrieval import featurizers, images

    res = bench("featurize", "--images", "4", "--batch-sizes", "2", "--models", "efficientnet-lite0",
                "--workers", "0", "--decode-threads", "auto,1", "--jpeg-decoders", "simplejpeg,pillow",
                "--repeats", "1")
    assert [(r["decode_threads"], r["jpeg_decoder"]) for r in res["results"]] == [
        (featurizers.decode_threads(), "simplejpeg"), (featurizers.decode_threads(), "pillow"),
        (1, "simplejpeg"), (1, "pillow")]
    assert all(r["pipeline_img_s"] > 0 for r in res["results"])
    assert images.JPEG_DECODER == "simplejpeg" and featurizers.DECODE_CHUNK == 16


def _memory_cgroups_available() -> bool:
    from vmem.cli.bench_ram_limit import CgroupUnavailable, MemoryCgroup

    try:
        MemoryCgroup.create(2**30).remove()
    except CgroupUnavailable:
        return False
    return True


@pytest.mark.skipif(not _memory_cgroups_available(), reason="creating a memory cgroup needs root on Linux")
def test_bench_search_serves_the_memory_within_a_hard_ram_limit_and_says_when_it_does_not_fit():
    res = bench("search", "--n", "3000", "--queries", "50", "--repeats", "1", "--no-faiss",
                "--ram-limit", "40", "--ram-limit", "0.05")
    roomy, tight = res["ram_limits"]
    # 40 x the raw vectors (18 MB) is room enough: the same answers, and the kernel kept it under the limit.
    assert roomy["ram_limit_x"] == 40 and roomy["oom_killed"] is False
    assert roomy["recall_at_50"] == pytest.approx(res["recall_at_50"], abs=0.02)
    assert roomy["qps_batch"] > 0 and roomy["qps_single"] > 0 and roomy["major_faults_per_query"] >= 0
    assert roomy["peak_mb"] <= roomy["limit_mb"]
    # 0.05 x (under 1 MB) is not: the run reports the kill instead of failing or inventing figures.
    assert tight["oom_killed"] is True and "qps_batch" not in tight


@pytest.mark.skipif(not _memory_cgroups_available(), reason="creating a memory cgroup needs root on Linux")
def test_a_limited_run_can_warm_the_memory_as_prefetch_does_or_by_reading_its_files_whole(tmp_path):
    from retrieval import FeaturizerSpec, Preprocessing, open_store
    from vmem.cli.bench_ram_limit import serve_within_limit
    from vmem.cli.bench_search import add_synthetic, fresh_queries, synthetic_features

    vecs, labels, centres = synthetic_features(2000, 64, 4, 0)
    spec = FeaturizerSpec(name="synthetic", dim=64, preprocessing=Preprocessing(resize=1, crop=1))
    with open_store(tmp_path / "memory", spec) as store:
        add_synthetic(store, vecs, labels)
    queries = vecs[:20]
    truth = np.argsort(-(queries @ vecs.T), axis=1)[:, :50]
    fresh = fresh_queries(centres, 80, 0)
    for warmup in ("prefetch", "whole-files"):
        run = serve_within_limit(tmp_path / "memory", queries, truth, fresh, 50, 2**30, warmup=warmup)
        assert run["recall_at_50"] >= 0.95 and len(run["qps_batch_rounds"]) == 3
        assert run["qps_batch"] in run["qps_batch_rounds"] and run["qps_single"] > 0


def test_bench_rerank_writes_one_json_line_with_the_machine_and_settings_on_stderr():
    result = CliRunner().invoke(app, ["bench", "rerank", "--neighbors", "4", "--cold-reps", "1", "--warm-reps", "2",
                                      "--requests", "4", "--concurrency", "2"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    [line] = result.stdout.strip().splitlines()  # was 40 lines of indented JSON
    assert json.loads(line)["bench"] == "rerank"
    assert result.stderr.startswith("machine: ") and "\nsettings: " in result.stderr


def test_benchmarks_describe_the_machine_where_there_is_no_proc(monkeypatch):
    # macOS has no /proc: every `vmem bench` command read /proc/meminfo first and stopped there.
    from pathlib import Path

    from vmem.cli import bench_search

    real_read_text = Path.read_text

    def no_proc(self: Path, *args, **kwargs):
        if str(self).startswith("/proc/"):
            raise FileNotFoundError(2, "No such file or directory", str(self))
        return real_read_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", no_proc)
    info = bench_search.machine_info()
    assert info["ram_gb"] > 0  # from sysconf, as on a Mac
    assert info["cpu"]
    assert np.isnan(bench_search.rss_mb()) and np.isnan(bench_search.mapped_rss_mb("x"))
