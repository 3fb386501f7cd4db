"""CLIP through `transformers`, end to end with a tiny random CLIP and tokenizer saved to a temp dir (no downloads)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from retrieval import load_featurizer
from retrieval.dmn import DEFAULT_TEMPLATES, softmax, text_classifier
from retrieval.featurizers import ClipFeaturizer
from tests.conftest import make_image
from vmem import VisualMemory

COLOURS = {"red": (220, 20, 20), "green": (20, 200, 40), "blue": (30, 40, 210)}


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory) -> str:
    """A 1-layer random CLIP (32 px images, 8-d embeddings) plus a byte-level BPE CLIP tokenizer."""
    import torch
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    chars = sorted(ByteLevel.alphabet())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    merges = [("r", "e"), ("re", "d</w>"), ("b", "l"), ("bl", "u"), ("blu", "e</w>")]
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    path = tmp_path_factory.mktemp("tiny-clip")
    # Read from the files a saved tokenizer has: transformers 4 takes only their paths, 5 the dicts or the paths
    (path / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (path / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    tokenizer = CLIPTokenizer(str(path / "vocab.json"), str(path / "merges.txt"))
    torch.manual_seed(0)
    special = {"bos_token_id": vocab["<|startoftext|>"], "eos_token_id": vocab["<|endoftext|>"],
               "pad_token_id": vocab["<|endoftext|>"]}
    config = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=48, **special),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=8,
    )
    CLIPModel(config).eval().save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def test_clip_featurizer_embeds_images_and_text_in_one_space(tiny_clip_dir):
    feat = load_featurizer(f"clip:{tiny_clip_dir}", device="cpu")
    assert isinstance(feat, ClipFeaturizer)
    assert (feat.name, feat.dim, feat.preprocessing.crop, feat.preprocessing.resize) == (
        f"clip:{tiny_clip_dir}", 8, 32, 32)
    imgs = feat.embed([make_image(c, size=(40, 32)) for c in COLOURS.values()])
    txt = feat.embed_text(["a photo of a red.", "a photo of a blue."])
    assert imgs.shape == (3, 8) and txt.shape == (2, 8)
    np.testing.assert_allclose(np.linalg.norm(imgs, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(txt, axis=1), 1.0, atol=1e-5)
    # Deterministic: the same text embeds the same whatever the batch around it (padding is masked).
    np.testing.assert_allclose(feat.embed_text(["a photo of a red."])[0], txt[0], atol=1e-5)


def test_unknown_local_clip_dir_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="could not load CLIP"):
        load_featurizer(f"clip:{tmp_path / 'missing'}", device="cpu")


@pytest.fixture
def clip_memory(tiny_clip_dir):
    mem = VisualMemory.open(":memory:", featurizer=f"clip:{tiny_clip_dir}", create=True, device="cpu", reranker=None)
    images, labels = [], []
    for name, (r, g, b) in COLOURS.items():
        for shade in (-15, 0, 15):
            images.append(make_image((r + shade, g, b + shade)))
            labels.append(name)
    mem.add(images, labels)
    yield mem
    mem.close()


def test_few_shot_dmn_fuses_text_dynamic_and_static(clip_memory):
    query = make_image((215, 25, 30))
    [res] = clip_memory.classify([query], rule="dmn", dmn_stream="s")
    assert res.dmn.mode == "few-shot"
    assert set(res.dmn.parts) == {"text", "dynamic", "static"}
    assert res.dmn.written is True
    # P_text by hand: prompt ensemble over the labels, softmax(100 f W^T).
    feat = clip_memory.featurizer
    f = feat.embed([query])[0]
    w = text_classifier(feat.embed_text, list(clip_memory.store.label_counts()), DEFAULT_TEMPLATES)
    p_text = softmax(100.0 * (f.astype(np.float64) @ w.T.astype(np.float64)))
    classes = list(clip_memory.store.label_counts())
    for c, p in zip(classes, p_text, strict=True):
        assert res.dmn.parts["text"].get(c, 0.0) == pytest.approx(p, abs=1e-4)
    # The static memory holds near-identical colours: it gets the query right even if random text does not.
    assert max(res.dmn.parts["static"], key=res.dmn.parts["static"].get) == "red"


def test_zero_shot_dmn_needs_no_labelled_neighbours(clip_memory, tmp_path):
    names = tmp_path / "classes.tsv"
    names.write_text("red\tcrimson thing\ngreen\tleafy thing\nblue\tsky thing\n")
    opts = {"mode": "zero-shot", "classes_file": str(names), "templates": ["a photo of a {}."]}
    results = clip_memory.classify([make_image((20, 30, 200)), make_image((200, 30, 20))], rule="dmn",
                                   dmn_stream="z", dmn=opts)
    assert all(r.dmn.mode == "zero-shot" and set(r.dmn.parts) == {"text", "dynamic"} for r in results)
    assert all(r.neighbors == [] for r in results)
    # The prompts used the names from the classes file, not the labels.
    _, p_text = text_probs_by_name(clip_memory, make_image((20, 30, 200)))
    assert max(results[0].dmn.parts["text"].values()) == pytest.approx(p_text.max(), abs=1e-4)
    assert len(clip_memory.dmn.stream("z")) == 2


def test_dmn_text_prompts_read_the_memory_label_names_without_a_classes_file(clip_memory):
    clip_memory.set_label_names(PRETTY)
    opts = {"mode": "zero-shot", "templates": ["a photo of a {}."]}
    [res] = clip_memory.classify([make_image((20, 30, 200))], rule="dmn", dmn=opts)
    classes, p_text = text_probs_by_name(clip_memory, make_image((20, 30, 200)))
    assert [res.dmn.parts["text"].get(c, 0.0) for c in classes] == pytest.approx(list(p_text), abs=1e-4)
    assert res.label_name == PRETTY[res.label]


PRETTY = {"red": "crimson thing", "green": "leafy thing", "blue": "sky thing"}


def text_probs_by_name(clip_memory, image: bytes) -> tuple[list[str], np.ndarray]:
    """P_text by hand, its prompts naming the classes as PRETTY does: (the memory's classes, probabilities)."""
    feat = clip_memory.featurizer
    classes = list(clip_memory.store.label_counts())
    w = feat.embed_text([f"a photo of a {PRETTY[c]}." for c in classes])
    f = feat.embed([image])[0]
    return classes, softmax(100.0 * (f.astype(np.float64) @ w.T.astype(np.float64)))
