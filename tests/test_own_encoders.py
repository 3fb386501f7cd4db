"""Encoders vmem does not ship: any `transformers` vision backbone (`hf:`), building a memory of real Tiny-ImageNet
images. The models are tiny, random, built from
configs and saved to temp dirs (no Hub)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retrieval import FeaturizerMismatchError, LabelledImage, featurizer_spec, load_featurizer
from retrieval.preprocessing import FeaturizerError, Preprocessing
from tests.conftest import TINY_IMAGENET, require_tiny_imagenet
from vmem import VisualMemory

CLASSES = ("n01443537", "n01629819", "n01641577")  # goldfish, European fire salamander, bullfrog


def tiny_imagenet_items(per_class: int = 4) -> list[LabelledImage]:
    require_tiny_imagenet()
    items = [LabelledImage(str(path), wnid) for wnid in CLASSES
            for path in sorted((TINY_IMAGENET / "train" / wnid).glob("*.JPEG"))[:per_class]]
    assert len(items) == per_class * len(CLASSES)
    return items


def _save(path: Path, model, processor) -> str:
    model.eval().save_pretrained(path)
    processor.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def hf_models(tmp_path_factory) -> dict[str, str]:
    """Folders of a ViT, a ConvNeXt and a SigLIP (both towers), each with the image processor it was made with."""
    import torch
    from transformers import (
        ConvNextConfig,
        ConvNextImageProcessor,
        ConvNextModel,
        SiglipConfig,
        SiglipImageProcessor,
        SiglipModel,
        ViTConfig,
        ViTImageProcessor,
        ViTModel,
    )

    torch.manual_seed(0)
    tower = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    root = tmp_path_factory.mktemp("hf-models")
    return {
        "vit": _save(root / "vit", ViTModel(ViTConfig(**tower, image_size=32, patch_size=8)),
                     ViTImageProcessor(size={"height": 32, "width": 32})),
        "convnext": _save(root / "convnext", ConvNextModel(ConvNextConfig(hidden_sizes=[8, 24], depths=[1, 1],
                                                                          num_stages=2)),
                          ConvNextImageProcessor(size={"shortest_edge": 32})),
        "siglip": _save(root / "siglip",
                        SiglipModel(SiglipConfig(text_config=dict(**tower, vocab_size=64, bos_token_id=1,
                                                                  eos_token_id=2, pad_token_id=0),
                                                 vision_config=dict(**tower, image_size=32, patch_size=8))),
                        SiglipImageProcessor(size={"height": 32, "width": 32})),
    }


# What each model gives by default: ViT its CLS token (its pooler is an untrained dense + tanh in many checkpoints),
# ConvNeXt its pooled, layer-normed map, a two-tower model its image embedding.
EXPECTED = {"vit": ("cls", 16, 32, 32, True, "bilinear"), "convnext": ("pooler", 24, 36, 32, False, "bicubic"),
            "siglip": ("image", 16, 32, 32, True, "bicubic")}


@pytest.mark.parametrize("kind", list(EXPECTED))
def test_an_hf_backbone_builds_a_memory_of_real_images_and_classifies(hf_models, kind, tmp_path):
    folder = hf_models[kind]
    items = tiny_imagenet_items()
    mem = VisualMemory.open(tmp_path / "memory", featurizer=f"hf:{folder}", create=True, device="cpu",
                            reranker=None)
    report = mem.build(items, num_workers=0)
    assert report.added == len(items)
    # The spec says which feature the memory holds, and its preprocessing is the saved processor's.
    spec = mem.store.meta.featurizer
    pooling, dim, resize, crop, squash, interpolation = EXPECTED[kind]
    assert spec.name == f"hf:{folder}#{pooling}"
    assert (spec.dim, spec.preprocessing.resize, spec.preprocessing.crop, spec.preprocessing.squash,
            spec.preprocessing.interpolation) == (dim, resize, crop, squash, interpolation)
    assert spec.preprocessing.mean == (0.5, 0.5, 0.5) and spec.weights_sha256
    # Known from the folder's config files, without the weights (`vmem import` of vectors made elsewhere).
    assert featurizer_spec(f"hf:{folder}") == spec
    # A memory image is its own nearest neighbour.
    [res] = mem.classify([items[5].source], k=1)
    assert res.label == items[5].label and res.neighbors[0].similarity == pytest.approx(1.0, abs=2e-3)
    mem.close()

    # Opened again, the memory loads the same encoder from the name it stored.
    again = VisualMemory.open(tmp_path / "memory", reranker=None, device="cpu")
    [res] = again.classify([items[0].source], k=1)
    assert res.label == items[0].label
    again.close()
    # Another encoder, or another pooling of this one, is refused.
    other = hf_models["convnext" if kind == "vit" else "vit"]
    for name in (f"hf:{other}", f"hf:{folder}#mean"):
        with pytest.raises(FeaturizerMismatchError):
            VisualMemory.open(tmp_path / "memory", featurizer=name, reranker=None, device="cpu")


@pytest.mark.parametrize("kind", list(EXPECTED))
def test_hf_preprocessing_matches_the_models_own_image_processor(hf_models, kind):
    """On a real Tiny-ImageNet image, and a wide crop of it where the processor squashes the image, vmem's input is
    the processor's to within one level of 255 (torch's resize rounds apart from Pillow's at a few pixels). A
    shortest-edge resize of a wide image (ConvNeXt's) is not compared: HF truncates the long side where vmem rounds
    it, and the centre crop can fall a pixel apart (as for DINOv2, see Dinov2Featurizer)."""
    from transformers import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(hf_models[kind])
    feat = load_featurizer(f"hf:{hf_models[kind]}", device="cpu")
    photo = Image.open(tiny_imagenet_items(1)[0].source).convert("RGB")
    for image in (photo, photo.crop((0, 12, 64, 52))) if feat.preprocessing.squash else (photo,):
        theirs = np.asarray(processor(image, return_tensors="np")["pixel_values"][0])
        ours = feat.preprocessing(image).numpy()
        levels = np.abs(ours - theirs) * 255 * np.asarray(feat.preprocessing.std).reshape(3, 1, 1)
        assert ours.shape == theirs.shape and levels.max() < 1.01 and levels.mean() < 0.1


def test_hf_pooling_can_be_chosen_and_a_wrong_one_is_named(hf_models):
    feat = load_featurizer(f"hf:{hf_models['vit']}#mean", device="cpu")
    assert feat.name.endswith("#mean") and feat.dim == 16
    with pytest.raises(FeaturizerError, match="no CLS token"):
        load_featurizer(f"hf:{hf_models['convnext']}#cls", device="cpu")
    with pytest.raises(FeaturizerError, match="unknown pooling 'avg'"):
        load_featurizer(f"hf:{hf_models['vit']}#avg", device="cpu")


def test_a_model_folder_without_its_image_processor_is_refused_clearly(hf_models, tmp_path):
    import shutil

    bare = tmp_path / "bare"
    shutil.copytree(hf_models["vit"], bare)
    (bare / "preprocessor_config.json").unlink()
    with pytest.raises(FeaturizerError, match=r"no preprocessor_config.json"):
        load_featurizer(f"hf:{bare}", device="cpu")


def test_unused_squash_leaves_the_recorded_preprocessing_as_it_was():
    # The feature cache's folder name hashes this JSON: caches made before `squash` existed are still found.
    assert "squash" not in Preprocessing(resize=256, crop=224).model_dump_json()
    assert Preprocessing.model_validate_json(Preprocessing(resize=32, crop=32, squash=True).model_dump_json()).squash
