"""Featurizers: the DINOv2 load path with a tiny random model, and EfficientNet-Lite's real ImageNet weights."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from retrieval import Dinov2Featurizer, FeaturizerError, Preprocessing, load_featurizer
from retrieval.featurizers import build_efficientnet_lite
from tests.conftest import make_image
from tests.realdata import val_sample


@pytest.fixture(scope="module")
def tiny_dinov2_dir(tmp_path_factory):
    """A random DINOv2 saved like a downloaded checkpoint: loaded through the same from_pretrained path."""
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    config = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                          patch_size=14, image_size=224)
    path = tmp_path_factory.mktemp("dinov2-tiny")
    Dinov2Model(config).save_pretrained(path)
    return path


def test_dinov2_loads_from_a_local_directory_and_embeds_cls_tokens(tiny_dinov2_dir):
    feat = load_featurizer(f"dinov2:{tiny_dinov2_dir}", device="cpu")
    assert isinstance(feat, Dinov2Featurizer)
    assert feat.dim == 32
    assert feat.preprocessing == Preprocessing(resize=256, crop=224)  # DINOv2's kNN-eval transform
    images = [make_image((255, 0, 0)), make_image((0, 0, 255), size=(300, 90)), make_image((0, 0, 255))]
    vecs = feat.embed(images)
    assert vecs.shape == (3, 32) and vecs.dtype == np.float32
    assert np.linalg.norm(vecs, axis=1) == pytest.approx(np.ones(3), abs=1e-5)
    assert vecs[1] @ vecs[2] > vecs[0] @ vecs[2]  # the two blue images are nearer each other

    # The CLS token of the last layer (after the final layernorm), L2-normalised.
    x = torch.stack([feat.preprocessing(Image.open(io.BytesIO(images[0])).convert("RGB"))])
    with torch.inference_mode():
        cls = feat.model(pixel_values=x).last_hidden_state[:, 0]
    assert vecs[0] == pytest.approx(torch.nn.functional.normalize(cls, dim=1)[0].numpy(), abs=1e-5)


def test_a_missing_dinov2_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FeaturizerError, match="dinov2:/path/to/dir"):
        load_featurizer(f"dinov2:{tmp_path / 'absent'}", device="cpu")


def test_a_hub_model_with_no_hub_to_reach_is_a_clear_error_at_once(monkeypatch):
    # transformers retried for ~30 s, logging every retry twice, before saying the Hub was out of reach.
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.vmem-test.invalid")  # a name that resolves nowhere
    with pytest.raises(FeaturizerError, match=r"not in the local Hugging Face cache, and the Hub "
                                              r"\(hub.vmem-test.invalid\) cannot be reached.*dinov2:/path/to/dir"):
        load_featurizer("dinov2:facebook/dinov2-vmem-test-absent", device="cpu")


def test_the_default_encoder_with_no_hub_names_the_encoder_that_needs_none(monkeypatch):
    # vmem build's default is dinov2-small, from the Hub: offline, a new user's first build stopped at "download the
    # model elsewhere", though efficientnet-lite0's weights came with vmem's dependencies all along.
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.vmem-test.invalid")
    with pytest.raises(FeaturizerError, match=r"a new memory can use --featurizer efficientnet-lite0 instead"):
        load_featurizer("dinov2:facebook/dinov2-vmem-test-absent", device="cpu")


def test_a_memory_refuses_retrained_weights_saved_where_its_model_was(tmp_path):
    # `dinov2:/path` names a folder: new weights saved there would give features unlike the memory's own.
    from transformers import Dinov2Config, Dinov2Model

    from retrieval import FeaturizerMismatchError
    from vmem import VisualMemory

    def save_model(seed: int) -> None:
        torch.manual_seed(seed)
        Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                 patch_size=14, image_size=224)).save_pretrained(tmp_path / "model")

    save_model(0)
    name = f"dinov2:{tmp_path / 'model'}"
    with VisualMemory.open(tmp_path / "memory", featurizer=name, create=True) as memory:
        memory.add([make_image((255, 0, 0))], ["red"])
    with VisualMemory.open(tmp_path / "memory") as memory:  # the same weights, copied back: still fine
        assert memory.classify([make_image((250, 0, 0))])[0].label == "red"
    save_model(1)  # "retrained"
    retrained = pytest.raises(FeaturizerMismatchError, match="other weights")
    with VisualMemory.open(tmp_path / "memory") as memory, retrained:
        memory.classify([make_image((250, 0, 0))])
    with pytest.raises(FeaturizerMismatchError, match="build a new memory"):
        VisualMemory.open(tmp_path / "memory", featurizer=name)


def test_unknown_featurizer_lists_the_known_ones():
    with pytest.raises(FeaturizerError, match="efficientnet-lite0"):
        load_featurizer("resnet-9000")


def test_preprocessing_resizes_shorter_side_then_centre_crops():
    pre = Preprocessing(resize=256, crop=224)
    for size in [(64, 64), (1000, 300), (1, 1), (4000, 20)]:
        x = pre(Image.new("RGB", size, (10, 20, 30)))
        assert x.shape == (3, 224, 224)


@pytest.mark.parametrize("size", [(64, 64), (128, 128), (512, 512), (64, 80), (500, 375), (57, 61)])
@pytest.mark.parametrize(("resize", "crop"), [(256, 224), (274, 240)])
def test_a_crop_is_the_same_bytes_as_resizing_the_whole_image_then_cropping(size, resize, crop):
    # Pillow's resampler: where the crop falls on whole source pixels only its box is resized; the bytes must
    # not change.
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    w, h = size
    scale = resize / min(w, h)
    big = (max(crop, round(w * scale)), max(crop, round(h * scale)))
    left, top = (big[0] - crop) // 2, (big[1] - crop) // 2
    whole = img.resize(big, Image.Resampling.BICUBIC, reducing_gap=None).crop((left, top, left + crop, top + crop))
    got = Preprocessing(resize=resize, crop=crop, resampler="pil").resize_crop(img)
    assert torch.equal(got, torch.from_numpy(np.asarray(whole).copy()).permute(2, 0, 1))


@pytest.mark.parametrize("resampler", ["torch", "pil"])
@pytest.mark.parametrize("size", [(2400, 120), (90, 1800)])
def test_a_very_wide_or_tall_image_is_cropped_from_its_box_as_if_resized_whole(resampler, size):
    # Beyond 8:1 only the crop's source box is resized; Pillow maps the same pixels, so the crop is what
    # resizing the whole image gives, to within rounding (a fifth of the values differ, by one or two levels).
    img = photo(*size, np.random.default_rng(1))
    pre = Preprocessing(resize=256, crop=224, resampler=resampler)
    (w, h), box = pre.crop_box(*size)
    whole = img.resize((w, h), Image.Resampling.BICUBIC, reducing_gap=None).crop(box)
    diff = (pre.resize_crop(img).int() - torch.from_numpy(np.asarray(whole).copy()).permute(2, 0, 1).int()).abs()
    assert diff.max() <= 2 and diff.float().mean() < 0.5


def test_a_tiny_file_of_a_very_wide_image_takes_no_more_memory_than_a_photo(tmp_path):
    # An 88-byte 3000x1 PNG once became a 768,000 x 256 image on its way to a 224 x 224 crop (1.2 GB).
    script = (
        "import resource, sys; from PIL import Image; from retrieval import Preprocessing\n"
        "pre = Preprocessing(resize=256, crop=224)\n"
        "pre.resize_crop(Image.new('RGB', (300, 200)))\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "for size in [(12000, 1), (1, 12000)]:\n"
        "    assert pre.load(Image.new('RGB', size, (200, 10, 10))).shape == (3, 224, 224)\n"
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)\n")
    grew_mb = int(subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                                 cwd=Path(__file__).parents[1]).stdout)
    assert grew_mb < 100  # 12000 x 1 made whole: 3,072,000 x 256 x 3 bytes, over 2 GB


def photo(w: int, h: int, rng: np.random.Generator, grain: int = 12) -> Image.Image:
    """Smooth shapes with grain, like a photo: what decoding and resizing cost and lose depends on it."""
    coarse = Image.fromarray(rng.integers(0, 255, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8))
    noise = rng.integers(-grain, grain + 1, (h, w, 3))
    smooth = np.asarray(coarse.resize((w, h), Image.Resampling.BICUBIC))
    return Image.fromarray((smooth + noise).clip(0, 255).astype(np.uint8))


def test_torch_resampler_agrees_with_pillow_to_within_two_levels_on_a_few_pixels():
    # Sizes that shrink, enlarge, and fall on and off whole pixels.
    rng = np.random.default_rng(0)
    torch_pre, pil_pre = Preprocessing(resize=256, crop=224), Preprocessing(resize=256, crop=224, resampler="pil")
    differing = total = 0
    for w, h in [(500, 375), (333, 500), (64, 64), (57, 61), (1, 1), (230, 1000), (1200, 900), (224, 224)]:
        img = photo(w, h, rng)
        ours, reference = torch_pre.resize_crop(img), pil_pre.resize_crop(img)
        assert ours.shape == reference.shape == (3, 224, 224) and ours.dtype == torch.uint8
        diff = (ours.int() - reference.int()).abs()
        assert diff.max() <= 2, (w, h)
        differing, total = differing + int((diff > 0).sum()), total + diff.numel()
    assert differing / total < 0.01  # 0.3% here: rounding between the two passes


def test_features_from_either_resampler_are_the_same_to_four_nines(lite0):
    photos = [photo(500, 375, np.random.default_rng(seed), grain=16) for seed in range(8)]
    pil = Preprocessing(**{**lite0.preprocessing.model_dump(), "resampler": "pil"})
    ours = lite0.embed_tensors(torch.stack([lite0.preprocessing.resize_crop(im) for im in photos]))
    reference = lite0.embed_tensors(torch.stack([pil.resize_crop(im) for im in photos]))
    assert (ours * reference).sum(axis=1).min() > 0.9999


def test_a_big_jpeg_is_decoded_at_a_reduced_scale_that_barely_moves_its_features(lite0, tmp_path):
    rng = np.random.default_rng(2)
    big, small = tmp_path / "big.jpg", tmp_path / "small.jpg"
    photo(2400, 1800, rng).save(big, quality=90)  # shorter side >= 4 x 256: decoded at half size
    photo(900, 700, rng).save(small, quality=90)
    photo(2400, 1800, rng).save(tmp_path / "big.png")
    pre = lite0.preprocessing
    full = pre.model_copy(update={"jpeg_draft": False})
    assert pre.decode(big).size == (1200, 900) and full.decode(big).size == (2400, 1800)
    assert pre.decode(small).size == (900, 700)  # not big enough to lose a factor 2 and keep 2 x resize
    assert pre.decode(tmp_path / "big.png").size == (2400, 1800)  # only JPEG decodes at a scale
    drafted = lite0.embed_many([str(big)], num_workers=0).features
    reference = lite0.embed_tensors(full.resize_crop(full.decode(big))[None])
    assert float((drafted @ reference.T)[0, 0]) > 0.9995


def test_a_memory_recorded_before_the_resampler_and_draft_settings_still_matches_its_featurizer(lite0):
    from retrieval.featurizers import FeaturizerSpec

    # What vmem.json held for a Lite0 memory before 2026-12: the same, without resampler and jpeg_draft.
    recorded = lite0.spec.model_dump(mode="json")
    del recorded["preprocessing"]["resampler"], recorded["preprocessing"]["jpeg_draft"]
    assert FeaturizerSpec.model_validate_json(json.dumps(recorded)) == lite0.spec


@pytest.mark.parametrize("variant", ["efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2"])
def test_efficientnet_lite_weights_load_strictly(variant):
    # strict=True inside: any key or shape mismatch would raise here.
    model = build_efficientnet_lite(variant)
    assert model._conv_head.out_channels == 1280
    assert not any(getattr(b, "has_se", False) for b in model._blocks)
    assert all(isinstance(b._swish, torch.nn.ReLU6) for b in model._blocks)


def test_batch_embedding_skips_and_reports_corrupt_images(lite0, tmp_path):
    good = tmp_path / "good.png"
    good.write_bytes(make_image(fmt="PNG"))
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"this is not a jpeg")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(make_image(size=(64, 64))[:200])
    res = lite0.embed_many([str(bad), str(good), str(truncated), str(tmp_path / "missing.jpg")], num_workers=0)
    assert res.indices == [1]
    assert res.features.shape == (1, 1280)
    assert sorted(f.index for f in res.failures) == [0, 2, 3]
    assert all(f.reason for f in res.failures)


@pytest.mark.realdata
def test_efficientnet_lite0_real_weights_recognise_real_imagenet_images(tiny_imagenet, lite0):
    """Its own ImageNet head, on a fixed sample of real val images (64x64 Tiny-ImageNet crops)."""
    synsets = (Path(__file__).parents[1] / "retrieval/data/imagenet_synsets.txt").read_text().split()
    items = val_sample(tiny_imagenet, 100, seed=1)
    logits = lite0.logits([it.source for it in items])
    top5 = np.argsort(-logits, axis=1)[:, :5]
    truth = np.array([synsets.index(it.label) for it in items])
    top1_acc = float(np.mean(top5[:, 0] == truth))
    top5_acc = float(np.mean((top5 == truth[:, None]).any(axis=1)))
    print(f"EfficientNet-Lite0 head on 100 Tiny-ImageNet val images: top-1 {top1_acc:.2f}, top-5 {top5_acc:.2f}")
    # Chance is 0.001 and 0.005; random weights score ~0. Upscaled 64x64 crops cost accuracy against the 78%
    # this model gets on full-size ImageNet: measured here 0.2-0.3 top-1.
    assert top1_acc >= 0.15 and top5_acc >= 0.35


def test_uint8_crops_and_normalised_floats_give_the_same_features(lite0):
    """Decode workers ship uint8 crops; the features must be exactly those of the float path."""
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (48 + i, 64, 3), dtype=np.uint8)) for i in range(20)]
    crops = torch.stack([lite0.preprocessing.resize_crop(im) for im in images])
    floats = torch.stack([lite0.preprocessing(im) for im in images])
    assert crops.dtype == torch.uint8
    assert np.array_equal(lite0.embed_tensors(crops), lite0.embed_tensors(floats))


def test_the_cpu_forward_in_chunks_matches_the_whole_batch(lite0):
    x = torch.rand(20, 3, 224, 224)
    assert lite0.forward_chunk == 16  # on CPU
    chunked = lite0.embed_tensors(x)
    try:
        lite0.forward_chunk = None
        whole = lite0.embed_tensors(x)
    finally:
        lite0.forward_chunk = 16
    np.testing.assert_allclose(chunked, whole, atol=1e-5)


def test_decoding_runs_in_worker_processes_only_on_cores_the_forward_leaves_free(monkeypatch):
    from retrieval.featurizers import decode_workers

    monkeypatch.setattr("os.cpu_count", lambda: 2)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert decode_workers(torch.device("cpu")) == 0  # the forward uses both cores: decode between forwards
    assert decode_workers(torch.device("cuda")) == 1  # the GPU computes: the spare core decodes
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 8)
    assert decode_workers(torch.device("cpu")) == 4
    assert decode_workers(torch.device("cuda")) == 15  # decoding is the GPU's bottleneck: every spare core


def test_workers_decode_small_chunks_gathered_into_whole_batches_in_order(lite0, tmp_path):
    """A forward batch is decoded by several workers (not one), and comes back whole and in input order."""
    paths = []
    for i in range(45):
        p = tmp_path / f"{i}.jpg"
        p.write_bytes(b"not a jpeg" if i == 17 else make_image(color=(5 * i, 100, 200 - 4 * i)))
        paths.append(str(p))
    batches = list(lite0.iter_embed(paths, batch_size=20, num_workers=2))
    assert [len(b.indices) + len(b.failures) for b in batches] == [20, 20, 5]
    assert [i for b in batches for i in b.indices] == [i for i in range(45) if i != 17]
    assert [f.index for b in batches for f in b.failures] == [17]
    in_process = lite0.embed_many(paths, batch_size=20, num_workers=0)
    np.testing.assert_allclose(np.concatenate([b.features for b in batches]), in_process.features, atol=1e-5)


def test_gathered_batches_never_exceed_the_batch_size(lite0, tmp_path):
    paths = []
    for i in range(40):
        p = tmp_path / f"{i}.png"
        p.write_bytes(make_image(color=(6 * i, 90, 90), fmt="PNG"))
        paths.append(str(p))
    sizes = [len(b.indices) for b in lite0.iter_embed(paths, batch_size=17, num_workers=2)]
    assert max(sizes) <= 17 and sum(sizes) == 40


def test_in_process_decoding_by_threads_gives_the_same_batches_as_one_at_a_time(lite0, tmp_path):
    """No worker processes: a pool of threads decodes each batch; same features, order and failures."""
    paths = []
    for i in range(19):
        p = tmp_path / f"{i}.jpg"
        p.write_bytes(b"not a jpeg" if i in (3, 10) else make_image(color=(5 * i, 100, 200 - 4 * i)))
        paths.append(str(p))
    try:
        lite0.decode_threads = 3
        threaded = list(lite0.iter_embed(paths, batch_size=8, num_workers=0))
        lite0.decode_threads = 1
        serial = list(lite0.iter_embed(paths, batch_size=8, num_workers=0))
    finally:
        lite0.decode_threads = None
    assert [len(b.indices) + len(b.failures) for b in threaded] == [8, 8, 3]
    assert [b.indices for b in threaded] == [b.indices for b in serial]
    assert [f.index for b in threaded for f in b.failures] == [3, 10]
    np.testing.assert_array_equal(np.concatenate([b.features for b in threaded]),
                                  np.concatenate([b.features for b in serial]))


def test_a_decode_thread_runs_its_torch_ops_alone_and_changes_no_other_thread():
    import threading

    from retrieval.featurizers import _single_threaded_torch

    before = torch.get_num_threads()
    seen = []

    def in_thread(setup) -> None:
        setup()
        seen.append(torch.get_num_threads())

    for setup in (_single_threaded_torch, lambda: None):  # a decode thread, then a thread started after it
        t = threading.Thread(target=in_thread, args=(setup,))
        t.start()
        t.join()
    assert seen == [1, before]
    assert torch.get_num_threads() == before


def test_behind_a_proxy_the_hub_is_asked_even_when_its_name_does_not_resolve_here(monkeypatch):
    # Where only the proxy resolves outside names, huggingface_hub downloads through HTTPS_PROXY.
    from retrieval.featurizers import from_hub_or_folder

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.vmem-test.invalid")
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    asked = []

    def load(model_id, **kwargs):
        asked.append(kwargs)
        if kwargs.get("local_files_only"):
            raise OSError("not cached")
        return "downloaded"

    assert from_hub_or_folder(load, "facebook/dinov2-small") == "downloaded"
    assert asked == [{"local_files_only": True}, {}]
    with pytest.raises(OSError, match="no model folder at /nowhere/model"):
        from_hub_or_folder(load, "/nowhere/model")  # a folder, not a Hub id: nothing to download


def test_openmp_spins_briefly_unless_told_otherwise_set_before_torch_loads():
    # libgomp reads GOMP_SPINCOUNT once, when torch loads it: beside other work its default spin made p99 8x
    # slower (docs/benchmarks.md, "OpenMP spinning").
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    for entry in ("vmem.cli", "server"):
        # torch itself loads with the first encoder (retrieval.featurizers), after the entry point
        ran = subprocess.run([sys.executable, "-X", "importtime", "-c", f"import {entry}, os; "
                              "import retrieval.featurizers; print(os.environ['GOMP_SPINCOUNT'])"], env=env,
                             capture_output=True, text=True, check=True)
        assert ran.stdout.strip() == "20000"
        order = [line.rsplit("|", 1)[-1].strip() for line in ran.stderr.splitlines()]
        assert order.index("retrieval._openmp") < order.index("torch"), entry
    kept = subprocess.run([sys.executable, "-c", "import vmem, os; print(os.environ['GOMP_SPINCOUNT'])"],
                          env={**env, "GOMP_SPINCOUNT": "5"}, capture_output=True, text=True, check=True)
    assert kept.stdout.strip() == "5"  # the user's own choice


@pytest.mark.realdata
def test_the_cpu_encoder_embeds_a_first_image_as_its_hundredth_with_no_deprecated_torch_jit(tiny_imagenet):
    import warnings

    # On the CPU a process had embedded its first 64 images eagerly, then traced and frozen the model with
    # torch.jit (deprecated in torch 2.13) to fold BatchNorm into the convolutions: an image's features then
    # depended on how many came before it (~1e-5, another float16 value once stored). BatchNorm is folded
    # when the model is loaded now, so every forward is the same one, and no torch.jit call warns.
    sources = [it.source for it in val_sample(tiny_imagenet, 5, seed=2)]
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        lite0 = load_featurizer("efficientnet-lite0", device="cpu")
        first = lite0.embed(sources[:1])
        lite0.warm_up()  # `vmem serve` before its first request: it had traced the model here
        lite0.embed(sources)
        assert np.array_equal(lite0.embed(sources[:1]), first)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in lite0.net.modules())


@pytest.mark.realdata
@pytest.mark.parametrize("variant", ["efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2"])
def test_batchnorm_fused_into_the_convolutions_gives_the_model_s_own_features(tiny_imagenet, variant):
    from retrieval.featurizers import _PooledFeatures

    # Real images through the model as its weights were saved (BatchNorm its own op, in float32) and through
    # the featurizer's fused CPU model: the same features, to float rounding.
    feat = load_featurizer(variant, device="cpu")
    pre = feat.preprocessing
    items = val_sample(tiny_imagenet, 8, seed=4)
    x = torch.stack([pre(pre.decode(it.source)) for it in items])
    with torch.inference_mode():
        own = torch.nn.functional.normalize(_PooledFeatures(build_efficientnet_lite(variant))(x), dim=1).numpy()
    cosines = (own * feat.embed_tensors(x)).sum(axis=1)
    assert cosines.min() >= 0.9999, cosines.min()


@pytest.mark.realdata
def test_points_are_the_same_bit_for_bit_however_a_build_was_cut_short_or_added_to(tiny_imagenet, tmp_path):
    from vmem import VisualMemory

    # Each run a memory opened anew, as `vmem build` is. A process had embedded its first 64 images untraced (an
    # image ~1e-4 apart once rounded to float16) and a build resumed after Ctrl-C held the images its second run
    # began with so; every image is embedded one way now, however many a process embedded before it.
    photos = val_sample(tiny_imagenet, 8, seed=3)

    def stored(location, *runs) -> dict[str, np.ndarray]:
        for run in runs:
            with VisualMemory.open(location, featurizer="efficientnet-lite0", create=True, reranker=None) as mem:
                run(mem)
        with VisualMemory.open(location, reranker=None) as mem:
            return {p.id: p.vector for page in mem.store.scroll(with_vectors=True) for p in page}

    whole = stored(tmp_path / "whole", lambda mem: mem.build(photos, batch_size=2, num_workers=0))
    resumed = stored(tmp_path / "resumed", lambda mem: mem.build(photos[:4], batch_size=2, num_workers=0),
                     lambda mem: mem.build(photos, batch_size=2, num_workers=0))  # Ctrl-C, and the same command
    added = stored(tmp_path / "added", lambda mem: mem.build(photos[:6], batch_size=2, num_workers=0),
                   lambda mem: mem.add([it.source for it in photos[6:]], [it.label for it in photos[6:]]))
    assert len(whole) == 8
    for other in (resumed, added):
        assert other.keys() == whole.keys()
        assert [pid for pid in whole if not np.array_equal(whole[pid], other[pid])] == []
