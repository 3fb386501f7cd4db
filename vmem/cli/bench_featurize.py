"""`vmem bench featurize`: images/s from JPEG files through the whole pipeline against the raw forward.

The pipeline is decode + preprocess (in DataLoader worker processes, overlapped with the forward, where
the forward leaves cores free; otherwise in-process between forwards) and the model's forward pass; the
raw forward runs on crops already prepared (on the device), and decode-only runs the loader without the
forward. Pipeline over raw says whether decoding starves the model; pipeline over the slower of the two
says how well the two overlap. `--workers auto,1` compares the two ways of decoding in one run;
`--decode-chunks 16,0` compares workers decoding small chunks with a whole batch each, `--decode-threads
auto,1` in-process decoding by a pool of threads with one image at a time, and `--jpeg-decoders
simplejpeg,pillow` the two JPEG decoders. DINOv2-S runs with random weights (speed does not depend on the
weights).
"""

from __future__ import annotations

import itertools
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
import typer

from retrieval import images as image_decoding
from retrieval import scan_imagefolder

if TYPE_CHECKING:
    from retrieval import Featurizer

from .bench_search import machine_info


def random_dinov2_small(workdir: Path) -> Featurizer:
    """DINOv2 ViT-S/14's architecture with random weights, saved and loaded like a checkpoint."""
    from transformers import Dinov2Config, Dinov2Model

    from retrieval import Dinov2Featurizer

    path = workdir / "dinov2-small-random"
    if not path.exists():
        config = Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536,
                              patch_size=14, image_size=518)
        Dinov2Model(config).save_pretrained(path)
    return Dinov2Featurizer(str(path), name="dinov2-small (random weights)")


def _images(dataset: Path | None, n: int, workdir: Path, size: tuple[int, int] = (500, 375)) -> list[str]:
    if dataset is not None:
        return [it.source for it in scan_imagefolder(dataset)][:n]
    from PIL import Image

    # Smooth shapes with grain, not pure noise: pure noise makes 170 KB files that decode 1.5x slower than
    # photos; these are ~70 KB at ImageNet's typical 500x375 (ImageNet's JPEGs average ~110 KB).
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        p = workdir / f"{i}.jpg"
        coarse = Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8))
        smooth = np.asarray(coarse.resize(size, Image.Resampling.BICUBIC), dtype=np.int16)
        grain = rng.integers(-16, 17, smooth.shape, dtype=np.int16)
        Image.fromarray((smooth + grain).clip(0, 255).astype(np.uint8)).save(p, quality=90)
        out.append(str(p))
    return out


def _photo_size(text: str) -> tuple[int, int]:
    w, _, h = text.lower().partition("x")
    if not (w.isdigit() and h.isdigit() and int(w) > 0 and int(h) > 0):
        raise typer.BadParameter(f"{text!r}: give WIDTHxHEIGHT, e.g. 4032x3024", param_hint="--photo-size")
    return int(w), int(h)


def _listed(text: str) -> list[str]:
    """The items of a comma-separated option, stripped, empty ones dropped."""
    return [t.strip() for t in text.split(",") if t.strip()]


def _positive(text: str, hint: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise typer.BadParameter(f"{text.strip()!r}: give auto or a whole number >= 1", param_hint=hint)
    return int(text)


def _choice(text: str, choices: dict[str, Any], hint: str) -> Any:
    if text.strip() not in choices:
        raise typer.BadParameter(f"{text.strip()!r} is not one of {', '.join(choices)}", param_hint=hint)
    return choices[text.strip()]


def measure(feat: Featurizer, paths: list[str], batch_size: int, workers: int | None, repeats: int) -> dict[str, Any]:
    # The raw forward's input is what the pipeline hands the model: uint8 crops, here already on the device
    # (so a GPU's figure is the model's, not the host-to-device copy's); normalising is part of both.
    import torch  # here, not at the module's top: every vmem command loads this module

    x = torch.stack([feat.preprocessing.load(p) for p in paths[:batch_size]]).to(feat.device)
    # Warm-up: on CPU the first calls allocate and pick kernels (a first batch is slower), on CUDA cuDNN chooses
    # its kernels; three calls, untimed, as a long run's forward has made them.
    feat.warm_up()
    for _ in range(3):
        feat.embed_tensors(x)
    batches = -(-len(paths) // batch_size)

    def raw_forward() -> None:  # as many forwards as the pipeline makes, so both span the same time
        for _ in range(batches):
            feat.embed_tensors(x)

    def pipeline() -> None:
        res = feat.embed_many(paths, batch_size=batch_size, num_workers=workers)
        assert len(res.indices) == len(paths), res.failures[:2]

    def decode_only() -> None:  # the same loader with the forward replaced by nothing: decoding's ceiling
        feat.embed_tensors = lambda xs: np.zeros((len(xs), feat.dim), np.float32)
        try:
            feat.embed_many(paths, batch_size=batch_size, num_workers=workers)
        finally:
            del feat.embed_tensors  # the class's method again

    # The three interleaved, repeat by repeat: a machine that slows down for a while (a shared host, a
    # throttled CPU) slows all three alike, and pipeline/raw is the median of the paired ratios.
    raw: list[float] = []
    pipe: list[float] = []
    dec: list[float] = []
    for _ in range(repeats):
        for run, times in ((raw_forward, raw), (pipeline, pipe), (decode_only, dec)):
            t = time.perf_counter()
            run()
            times.append(time.perf_counter() - t)
    raw_ips = batches * len(x) / statistics.median(raw)
    pipe_ips = len(paths) / statistics.median(pipe)
    decode_ips = len(paths) / statistics.median(dec)
    paired = statistics.median(len(paths) / p / (batches * len(x) / r) for p, r in zip(pipe, raw, strict=True))
    return {"featurizer": feat.name, "device": str(feat.device), "dtype": str(feat.dtype).removeprefix("torch."),
            "batch_size": batch_size,
            "decode_workers": feat.loader_workers(len(paths), batch_size, workers),
            "raw_forward_img_s": round(raw_ips, 1),
            "decode_only_img_s": round(decode_ips, 1),
            "pipeline_img_s": round(pipe_ips, 1), "pipeline_vs_raw": round(paired, 3),
            "pipeline_vs_slower_stage": round(pipe_ips / min(raw_ips, decode_ips), 3)}


def featurize(
    dataset: Annotated[Path | None, typer.Option(
        help="ImageFolder of JPEGs (default: synthetic 500x375 JPEGs)")] = None,
    images: Annotated[int, typer.Option(min=1, help="images per pipeline run")] = 256,
    batch_sizes: Annotated[str, typer.Option(help="comma-separated batch sizes")] = "16,64",
    models: Annotated[str, typer.Option(
        help="comma-separated: efficientnet-lite0/1/2 (real weights), dinov2-small (random weights)")] = (
        "efficientnet-lite0,dinov2-small"),
    workers: Annotated[str, typer.Option(
        help="comma-separated DataLoader worker counts to compare; auto: the featurizer's default")] = "auto",
    repeats: Annotated[int, typer.Option(min=1, help="timed repeats; medians are reported")] = 3,
    decode_chunks: Annotated[str, typer.Option(
        help="comma-separated images per worker task to compare; 0: a whole batch per worker (before 2026-12)")] = "16",
    resamplers: Annotated[str, typer.Option(
        help="comma-separated resize kernels to compare: torch (the default), pil (before 2026-12)")] = "torch",
    photo_size: Annotated[str, typer.Option(
        help="WxH of the synthetic JPEGs (4032x3024: a 12 MP phone photo)")] = "500x375",
    jpeg_draft: Annotated[str, typer.Option(
        help="comma-separated: on (the default: big JPEGs decode at a reduced scale), off; compared")] = "on",
    decode_threads: Annotated[str, typer.Option(
        help="comma-separated threads decoding in-process (where no worker processes do) to compare; "
             "auto: the featurizer's default, 1: one at a time (before 2026-12)")] = "auto",
    jpeg_decoders: Annotated[str, typer.Option(
        help="comma-separated decoders of plain JPEGs to compare: simplejpeg (the default), pillow (before "
             "2026-12)")] = "simplejpeg",
) -> None:
    """Featurisation throughput: whole JPEG pipeline against the raw forward, per model and batch size."""
    size = _photo_size(photo_size)
    drafts = [_choice(d, {"on": True, "off": False}, "--jpeg-draft") for d in _listed(jpeg_draft)]
    kernels = [_choice(r, {"torch": "torch", "pil": "pil"}, "--resamplers") for r in _listed(resamplers)]
    threads = [None if t == "auto" else _positive(t, "--decode-threads") for t in _listed(decode_threads)]
    decoders = [_choice(j, {"simplejpeg": "simplejpeg", "pillow": "pillow"}, "--jpeg-decoders")
                for j in _listed(jpeg_decoders)]
    # Every option read before any work: a typo must not end a long run halfway.
    sizes = [_positive(b, "--batch-sizes") for b in _listed(batch_sizes)]
    chunks = [0 if c.strip() == "0" else _positive(c, "--decode-chunks") for c in _listed(decode_chunks)]
    worker_counts = [None if w == "auto" else 0 if w == "0" else _positive(w, "--workers") for w in _listed(workers)]
    known = ("efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2", "dinov2-small")
    names = [_choice(m, {k: k for k in known}, "--models") for m in _listed(models)]
    if not (sizes and chunks and worker_counts and names):
        raise typer.BadParameter("--batch-sizes, --decode-chunks, --workers and --models each need a value")
    from retrieval import featurizers, load_featurizer

    machine = machine_info()
    typer.echo(f"machine: {json.dumps(machine)}", err=True)
    with tempfile.TemporaryDirectory(prefix="vmem-bench-") as tmp:
        paths = _images(dataset, images, Path(tmp), size)
        typer.echo(f"settings: {len(paths)} images from {dataset or 'synthetic JPEGs'}, workers={workers}", err=True)
        rows = []
        # The rows change module settings (a process-wide choice in normal use); put them back after.
        saved = featurizers.DECODE_CHUNK, image_decoding.JPEG_DECODER
        try:
            for name in names:
                feat = random_dinov2_small(Path(tmp)) if name == "dinov2-small" else load_featurizer(name)
                default_preprocessing = feat.preprocessing
                for bs in sizes:
                    for w, c, r, d, t, j in itertools.product(worker_counts, chunks, kernels, drafts, threads,
                                                              decoders):
                        featurizers.DECODE_CHUNK = c or bs
                        image_decoding.JPEG_DECODER = j
                        feat.preprocessing = default_preprocessing.model_copy(update={"resampler": r, "jpeg_draft": d})
                        feat.decode_threads = t
                        row = measure(feat, paths, bs, w, repeats)
                        in_process = row["decode_workers"] == 0
                        row |= {"decode_chunk": c or bs, "resampler": r, "jpeg_draft": d, "jpeg_decoder": j,
                                "decode_threads": (t or featurizers.decode_threads()) if in_process else 0}
                        typer.echo(f"  {row}", err=True)
                        rows.append(row)
        finally:
            featurizers.DECODE_CHUNK, image_decoding.JPEG_DECODER = saved
    typer.echo(json.dumps({"machine": machine, "images": len(paths),
                           "photo_size": None if dataset else photo_size, "results": rows}))
