"""Encoders vmem does not ship: any `transformers` vision backbone (`hf:`) and a researcher's own torch model
(`python:` plugins), each building a memory of real Tiny-ImageNet images. The models are tiny, random, built from
configs and saved to temp dirs (no Hub)."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from retrieval import FeaturizerMismatchError, LabelledImage, featurizer_spec, load_featurizer
from retrieval.own_encoders import hf_preprocessing
from retrieval.preprocessing import FeaturizerError, Preprocessing
from tests.conftest import TINY_IMAGENET, require_tiny_imagenet
from vmem import VisualMemory
from vmem.cli import app

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


def test_vmem_info_says_the_memory_squashes_images(hf_models, tmp_path):
    from typer.testing import CliRunner

    from vmem.cli import app

    mem = VisualMemory.open(tmp_path / "memory", featurizer=f"hf:{hf_models['vit']}", create=True, device="cpu",
                            reranker=None)
    mem.build(tiny_imagenet_items(1), num_workers=0)
    mem.close()
    info = CliRunner().invoke(app, ["info", "--memory", str(tmp_path / "memory")])
    assert info.exit_code == 0, info.output
    assert f"hf:{hf_models['vit']}#cls (16-d, resize 32x32 (aspect not kept), crop 32)" in info.output


def test_hf_pooling_can_be_chosen_and_a_wrong_one_is_named(hf_models):
    feat = load_featurizer(f"hf:{hf_models['vit']}#mean", device="cpu")
    assert feat.name.endswith("#mean") and feat.dim == 16
    with pytest.raises(FeaturizerError, match="no CLS token"):
        load_featurizer(f"hf:{hf_models['convnext']}#cls", device="cpu")
    with pytest.raises(FeaturizerError, match="unknown pooling 'avg'"):
        load_featurizer(f"hf:{hf_models['vit']}#avg", device="cpu")


def test_a_memory_built_from_a_relative_model_folder_opens_from_anywhere(hf_models, tmp_path, monkeypatch):
    # `hf:models/vit` is a folder here, and a Hub id anywhere else: the memory records the folder's absolute path.
    project = tmp_path / "project"
    (project / "models").mkdir(parents=True)
    (project / "models" / "vit").symlink_to(hf_models["vit"])
    items = tiny_imagenet_items(per_class=2)
    monkeypatch.chdir(project)
    mem = VisualMemory.open(tmp_path / "memory", featurizer="hf:models/vit", create=True, device="cpu", reranker=None)
    mem.build(items, num_workers=0)
    mem.close()
    assert VisualMemory.open(tmp_path / "memory", reranker=None).store.meta.featurizer.name == \
        f"hf:{project}/models/vit#cls"

    monkeypatch.chdir(tmp_path)  # e.g. `vmem serve` started elsewhere
    again = VisualMemory.open(tmp_path / "memory", reranker=None, device="cpu")
    [res] = again.classify([items[3].source], k=1)
    assert res.label == items[3].label and res.neighbors[0].similarity == pytest.approx(1.0, abs=2e-3)
    # A memory built from a folder never takes an encoder of its name without that folder's digest: the Hub's
    # model of that id, which a memory recorded relative before opened elsewhere.
    spec = again.store.meta.featurizer
    with pytest.raises(FeaturizerMismatchError, match="not a folder here"):
        again.store.check_featurizer(spec.model_copy(update={"weights_sha256": None}))
    again.close()


def test_a_model_folder_without_its_image_processor_is_refused_clearly(hf_models, tmp_path):
    import shutil

    bare = tmp_path / "bare"
    shutil.copytree(hf_models["vit"], bare)
    (bare / "preprocessor_config.json").unlink()
    with pytest.raises(FeaturizerError, match=r"no preprocessor_config.json"):
        load_featurizer(f"hf:{bare}", device="cpu")


def test_an_image_processor_vmem_cannot_follow_is_refused_naming_what():
    # PoolFormer's: shorter side to 224 / 0.9, then a 224 crop; a rectangle; padding
    for processor, says in (({"size": {"shortest_edge": 224}, "crop_pct": 0.9, "do_center_crop": True,
                              "crop_size": {"height": 224, "width": 224}}, "crop_pct 0.9"),
                            ({"size": {"height": 224, "width": 320}}, "resizes to a rectangle"),
                            ({"size": {"height": 224, "width": 224}, "do_pad": True}, "pads")):
        with pytest.raises(FeaturizerError, match=says):
            hf_preprocessing(processor, "hf:/models/x")


def test_unused_squash_leaves_the_recorded_preprocessing_as_it_was():
    # The feature cache's folder name hashes this JSON: caches made before `squash` existed are still found.
    assert "squash" not in Preprocessing(resize=256, crop=224).model_dump_json()
    assert Preprocessing.model_validate_json(Preprocessing(resize=32, crop=32, squash=True).model_dump_json()).squash


# ---------------------------------------------------------------- python: plugins

PLUGIN = textwrap.dedent('''
    import torch
    from retrieval import Featurizer, Preprocessing
    from retrieval.own_encoders import ModuleFeaturizer

    class ColourStats(torch.nn.Module):
        """A researcher's own encoder: per-channel means and spreads over a 4x4 grid."""

        def forward(self, x):
            pooled = torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)
            return torch.cat([pooled, x.flatten(2).std(dim=2)], dim=1)

    def colour_stats(device):
        return ModuleFeaturizer(ColourStats(), dim=51, preprocessing=Preprocessing(resize=64, crop=56), device=device)

    def not_a_featurizer(device):
        return ColourStats()
''')


@pytest.fixture
def plugin(tmp_path, monkeypatch) -> str:
    monkeypatch.delenv("VMEM_PLUGINS", raising=False)
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "my_encoders.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path / "plugins"))
    yield "python:my_encoders:colour_stats"
    sys.modules.pop("my_encoders", None)


def test_a_plugin_encoder_builds_with_vmem_and_opening_its_memory_never_imports_it(plugin, tmp_path, monkeypatch):
    train = tmp_path / "train"
    for item in tiny_imagenet_items():
        (train / item.label).mkdir(parents=True, exist_ok=True)
        (train / item.label / Path(item.source).name).symlink_to(item.source)
    (train / CLASSES[0] / "broken.jpg").write_bytes(b"not a jpeg")  # skipped, as with any encoder
    memory = tmp_path / "memory"
    runner = CliRunner()
    built = runner.invoke(app, ["build", str(train), "--memory", str(memory), "--featurizer", plugin,
                                "--workers", "0"])
    assert built.exit_code == 0, built.output
    assert "broken.jpg" in built.output
    query = str(next((train / CLASSES[1]).iterdir()))

    # The memory names the plugin, and classifying with it does not import it on that say-so ...
    refused = runner.invoke(app, ["classify", query, "--memory", str(memory)])
    assert refused.exit_code != 0
    assert "VMEM_PLUGINS=my_encoders" in refused.output and "Traceback" not in refused.output
    # ... only where the user trusts it.
    monkeypatch.setenv("VMEM_PLUGINS", "my_encoders")
    answered = runner.invoke(app, ["classify", query, "--memory", str(memory), "--k", "1", "--json"])
    assert answered.exit_code == 0, answered.output
    assert CLASSES[1] in answered.output
    mem = VisualMemory.open(memory, reranker=None)
    assert (mem.store.meta.featurizer.name, mem.store.meta.featurizer.dim) == (plugin, 51)
    mem.close()


def test_a_plugin_named_by_someone_else_is_not_imported(plugin, monkeypatch):
    # featurizer_spec, told nothing of where a name came from, takes it as not the user's: it imports no plugin.
    with pytest.raises(FeaturizerError, match="VMEM_PLUGINS"):
        featurizer_spec(plugin)
    assert "my_encoders" not in sys.modules
    monkeypatch.setenv("VMEM_PLUGINS", "my_encoders")
    assert featurizer_spec(plugin).dim == 51


def test_a_plugin_that_cannot_be_used_is_refused_with_the_reason(plugin):
    with pytest.raises(FeaturizerError, match=r"could not be imported .*ModuleNotFoundError"):
        load_featurizer("python:no_such_module:factory")
    with pytest.raises(FeaturizerError, match="has no function missing"):
        load_featurizer("python:my_encoders:missing")
    with pytest.raises(FeaturizerError, match=r"returned a ColourStats, not a retrieval.Featurizer"):
        load_featurizer("python:my_encoders:not_a_featurizer")
    with pytest.raises(FeaturizerError, match=r"python:package.module:factory"):
        load_featurizer("python:my_encoders")


def test_a_model_that_needs_its_own_code_is_refused_even_where_someone_answers_yes(tmp_path):
    # A memory copied from elsewhere may name any folder or Hub repository. One whose config maps its classes to a
    # module of its own (auto_map) had transformers ask on stdin whether to run that code: a `y` there, typed or
    # piped in, ran it while vmem only opened a memory. vmem never lets it ask.
    import subprocess

    model = tmp_path / "own-code"
    model.mkdir()
    ran = tmp_path / "ran"
    (model / "config.json").write_text('{"model_type": "mynet", "hidden_size": 8, "auto_map": '
                                       '{"AutoConfig": "mynet.MyConfig", "AutoModel": "mynet.MyModel"}}')
    (model / "preprocessor_config.json").write_text('{"size": {"height": 32, "width": 32}, "resample": 2, '
                                                    '"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}')
    (model / "mynet.py").write_text(f"import pathlib\npathlib.Path({str(ran)!r}).write_text('ran')\n"
                                    "from transformers import PretrainedConfig\n"
                                    "class MyConfig(PretrainedConfig):\n    model_type = 'mynet'\n")
    name = f"hf:{model}"
    script = textwrap.dedent(f"""
        from retrieval import featurizer_spec, load_featurizer
        from retrieval.preprocessing import FeaturizerError
        for load in (featurizer_spec, lambda name: load_featurizer(name, "cpu", trusted=False)):
            try:
                load({name!r})
                print("loaded")
            except FeaturizerError as exc:
                print("refused:", exc)
    """)
    done = subprocess.run([sys.executable, "-c", script], input="y\ny\ny\ny\n", capture_output=True, text=True,
                          timeout=120, cwd=Path(__file__).parent.parent)
    assert not ran.exists(), done.stdout + done.stderr
    said = done.stdout.splitlines()
    assert len(said) == 2 and all("needs code of its own" in line and "python: plugin" in line for line in said), \
        done.stdout + done.stderr


def test_a_folder_saved_with_a_two_tower_models_whole_processor_is_read(tmp_path):
    # `CLIPProcessor(...).save_pretrained(dir)` (as `AutoProcessor`'s of CLIP or SigLIP) writes processor_config.json,
    # the image processor nested in it, and no preprocessor_config.json: such a folder had been refused.
    import json

    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    vocab = tmp_path / "vocab"
    vocab.mkdir()
    (vocab / "vocab.json").write_text(json.dumps({"<|startoftext|>": 0, "<|endoftext|>": 1, "a</w>": 2}))
    (vocab / "merges.txt").write_text("#version: 0.2\n")
    torch.manual_seed(0)
    tower = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    model = CLIPModel(CLIPConfig(text_config=dict(**tower, vocab_size=64), projection_dim=12,
                                 vision_config=dict(**tower, image_size=32, patch_size=8)))
    image_processor = CLIPImageProcessor(size={"shortest_edge": 40}, crop_size={"height": 32, "width": 32})
    folder = tmp_path / "clip"
    model.eval().save_pretrained(folder)
    CLIPProcessor(image_processor=image_processor,
                  tokenizer=CLIPTokenizer(str(vocab / "vocab.json"), str(vocab / "merges.txt"))).save_pretrained(folder)
    assert not (folder / "preprocessor_config.json").exists() and (folder / "processor_config.json").exists()

    spec = featurizer_spec(f"hf:{folder}")
    assert spec == load_featurizer(f"hf:{folder}", "cpu").spec
    assert (spec.name, spec.dim) == (f"hf:{folder}#image", 12)
    assert spec.preprocessing == hf_preprocessing(image_processor.to_dict(), "clip")
    assert (spec.preprocessing.resize, spec.preprocessing.crop) == (40, 32)
    features = load_featurizer(f"hf:{folder}", "cpu").embed([item.source for item in tiny_imagenet_items(1)])
    assert features.shape == (3, 12) and np.allclose(np.linalg.norm(features, axis=1), 1, atol=1e-5)


def test_vmem_import_takes_the_plugin_its_user_names_and_an_import_into_a_memory_imports_none(plugin, tmp_path):
    # Vectors a researcher's own encoder made elsewhere: `vmem import --featurizer python:...` names it, as a
    # build does. It had been refused, telling the user to pass the --featurizer just passed.
    vectors = np.random.default_rng(0).normal(size=(4, 51)).astype(np.float32)
    np.savez(tmp_path / "vectors.npz", vectors=vectors / np.linalg.norm(vectors, axis=1, keepdims=True),
             labels=np.array(["a", "a", "b", "b"]))
    imported = CliRunner().invoke(app, ["import", str(tmp_path / "vectors.npz"), "--memory", str(tmp_path / "memory"),
                                        "--featurizer", plugin])
    assert imported.exit_code == 0, imported.output
    with VisualMemory.open(tmp_path / "memory", reranker=None) as mem:
        assert (mem.store.meta.featurizer.name, mem.store.count()) == (plugin, 4)
    sys.modules.pop("my_encoders", None)

    # An import into a memory (what POST /v1/memory/import does, a client naming the encoder) compares the name
    # with the memory's and imports nothing.
    other = VisualMemory.open(tmp_path / "other", featurizer="efficientnet-lite0", create=True, device="cpu",
                              reranker=None)
    with other, pytest.raises(FeaturizerMismatchError):
        other.import_points(tmp_path / "vectors.npz", featurizer=plugin)
    assert "my_encoders" not in sys.modules


RETRAINABLE = textwrap.dedent('''
    from pathlib import Path

    import torch
    from retrieval import Featurizer, Preprocessing
    from retrieval.own_encoders import ModuleFeaturizer

    WEIGHTS = Path(__file__).with_name("weights.pt")

    def projection(device):
        """A researcher's model, loaded from the weights their last training run saved."""
        net = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten(), torch.nn.Linear(48, 8))
        net.load_state_dict(torch.load(WEIGHTS))
        return ModuleFeaturizer(net, dim=8, preprocessing=Preprocessing(resize=64, crop=56), device=device)

    class OwnMeans(Featurizer):
        """A plugin's own Featurizer that says nothing of its weights."""

        dim, preprocessing = 3, Preprocessing(resize=64, crop=56)

        def forward(self, x):
            return x.mean(dim=(2, 3)) + 1.0

    def own_means(device):
        return OwnMeans(device)
''')


@pytest.fixture
def retrainable(tmp_path, monkeypatch):
    """A plugin whose weights file a training run rewrites, and `train(seed)` to rewrite it."""
    import torch

    monkeypatch.delenv("VMEM_PLUGINS", raising=False)
    folder = tmp_path / "retrainable"
    folder.mkdir()
    (folder / "retrainable_encoders.py").write_text(RETRAINABLE)
    monkeypatch.syspath_prepend(str(folder))

    def train(seed: int) -> None:
        torch.manual_seed(seed)
        net = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten(), torch.nn.Linear(48, 8))
        torch.save(net.state_dict(), folder / "weights.pt")

    train(0)
    yield train
    sys.modules.pop("retrainable_encoders", None)


def test_a_retrained_plugin_model_is_not_served_its_old_cached_features(retrainable, tmp_path):
    from retrieval.feature_cache import FeatureCache

    name = "python:retrainable_encoders:projection"
    files = [item.source for item in tiny_imagenet_items(per_class=2)]
    first = load_featurizer(name, "cpu")
    cached, ok, _ = FeatureCache(tmp_path / "cache", first).features_for(files, num_workers=0)
    assert len(ok) == len(files)

    retrainable(1)  # a training run saves new weights under the same plugin name
    retrained = load_featurizer(name, "cpu")
    got, _, _ = FeatureCache(tmp_path / "cache", retrained).features_for(files, num_workers=0)
    want = retrained.embed_many(files, num_workers=0).features
    assert np.allclose(got, want, atol=1e-6) and not np.allclose(got, cached, atol=1e-3)
    # What tells them apart: a ModuleFeaturizer's digest of its module's weights, the same for the same weights.
    assert first.weights_sha256 and retrained.weights_sha256 != first.weights_sha256
    retrainable(0)
    assert load_featurizer(name, "cpu").weights_sha256 == first.weights_sha256


def test_a_plugin_featurizer_without_a_weights_digest_is_embedded_each_time_not_cached(retrainable, tmp_path,
                                                                                        caplog):
    from retrieval.feature_cache import FeatureCache

    own = load_featurizer("python:retrainable_encoders:own_means", "cpu")
    assert own.weights_sha256 is None
    files = [item.source for item in tiny_imagenet_items(per_class=2)]
    with caplog.at_level("WARNING", logger="retrieval.feature_cache"):
        for _ in range(2):
            feats, ok, failures = FeatureCache(tmp_path / "cache", own).features_for(files, num_workers=0)
            assert (len(ok), failures) == (len(files), [])
            assert np.allclose(feats, own.embed_many(files, num_workers=0).features, atol=1e-6)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())
    said = [r.getMessage() for r in caplog.records if "not cached" in r.getMessage()]
    assert len(said) == 1 and "weights_sha256" in said[0]


def test_a_memory_built_with_a_plugin_refuses_its_retrained_weights(retrainable, tmp_path):
    name = "python:retrainable_encoders:projection"
    items = tiny_imagenet_items(per_class=2)
    mem = VisualMemory.open(tmp_path / "memory", featurizer=name, create=True, device="cpu", reranker=None)
    mem.build(items, num_workers=0)
    spec = mem.store.meta.featurizer
    mem.close()
    assert spec.weights_sha256  # the module's digest, recorded with the memory

    retrainable(1)
    with pytest.raises(FeaturizerMismatchError, match="other weights"):
        VisualMemory.open(tmp_path / "memory", featurizer=name, device="cpu", reranker=None)
    retrainable(0)  # the memory's own weights back: it opens
    again = VisualMemory.open(tmp_path / "memory", featurizer=name, device="cpu", reranker=None)
    # A plugin that stops giving a digest cannot say its weights are the memory's: refused, saying what to do.
    with pytest.raises(FeaturizerMismatchError, match=r"gives none now.*ModuleFeaturizer"):
        again.store.check_featurizer(spec.model_copy(update={"weights_sha256": None}))
    again.close()
