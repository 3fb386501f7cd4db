"""Encoders vmem does not ship: any Hugging Face `transformers` vision backbone (`hf:`) and a user's own torch model
(`python:` plugins). `featurizers.load_featurizer` hands these names here.

`hf:<Hub id or folder>[#pooling]`
    The model's saved image processor (preprocessor_config.json) becomes the memory's `Preprocessing`, so a query is
    embedded as the memory was; the model is `AutoModel` (of a two-tower model such as CLIP or SigLIP, its image
    side). The feature is one of POOLINGS, chosen from the config where `#pooling` is not given, and always named
    in the featurizer's name (`hf:/models/vit#cls`): another pooling's features are another encoder's.

`python:package.module:factory`
    `factory(device)` returns a `Featurizer` (see README, "Your own encoder"). Importing a module runs its code, so
    a plugin is imported only where the user named it: an explicit `load_featurizer` / `--featurizer`, or its
    module listed in VMEM_PLUGINS. A memory records the name, and opening it never imports what it names.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import json
import os
from pathlib import Path
from typing import Any, Literal

import torch
from PIL import Image

from .featurizers import Featurizer, absolute_folder_name, from_hub_or_folder
from .preprocessing import FeaturizerError, Preprocessing

# cls: the first token of the last hidden state (ViT, DINOv2 and DINOv2 with registers, BEiT); mean: the mean of
# the last hidden state over its tokens or its spatial positions; pooler: the model's own `pooler_output` (ConvNeXt's
# and ResNet's pooled map, SigLIP's attention-pooling head); image: a two-tower model's image embedding
# (`get_image_features`: CLIP's projected one).
POOLINGS = ("cls", "mean", "pooler", "image")
PLUGINS_ENV = "VMEM_PLUGINS"
_PIL_FILTERS: dict[int, Literal["bicubic", "bilinear"]] = {2: "bilinear", 3: "bicubic"}


def split_hf_name(name: str) -> tuple[str, str | None]:
    """`hf:REF#pooling` -> (REF, pooling or None)."""
    ref, _, pooling = name.removeprefix("hf:").partition("#")
    if not ref:
        raise FeaturizerError(f"{name!r}: name a Hugging Face model after hf: (a Hub id or a folder)")
    if pooling and pooling not in POOLINGS:
        raise FeaturizerError(f"{name!r}: unknown pooling {pooling!r}; choose one of {', '.join(POOLINGS)}")
    return ref, pooling or None


def default_pooling(config: Any) -> str:
    """The feature a model is made to give: a two-tower model's image embedding, a convolutional net's or SigLIP's
    pooled output, else the CLS token (ViT's `pooler` is a dense + tanh that many checkpoints never trained)."""
    if getattr(config, "vision_config", None) is not None:
        return "image"
    if getattr(config, "hidden_sizes", None) or str(getattr(config, "model_type", "")).startswith("siglip"):
        return "pooler"
    return "cls"


def config_dim(config: Any, pooling: str) -> int | None:
    """The feature size `pooling` gives, from the config alone (None where it does not say)."""
    if getattr(config, "vision_config", None) is not None:
        if pooling == "image" and getattr(config, "projection_dim", None):
            return int(config.projection_dim)
        config = config.vision_config
    if getattr(config, "hidden_sizes", None):
        return int(config.hidden_sizes[-1])
    return int(config.hidden_size) if getattr(config, "hidden_size", None) else None


def hf_preprocessing(processor: dict[str, Any], where: str) -> Preprocessing:
    """The `Preprocessing` equal to a saved Hugging Face image processor (its preprocessor_config.json), to within
    a pixel of rounding in the resized size; FeaturizerError for one it cannot express."""
    def refuse(why: str) -> FeaturizerError:
        return FeaturizerError(f"{where}: its image processor {why}; vmem cannot embed as it does. Wrap the model "
                               "in a python: plugin with preprocessing of your own (README, \"Your own encoder\")")

    if not processor.get("do_resize", True):
        raise refuse("does not resize (do_resize false), so its inputs have no one size")
    if processor.get("do_pad"):
        raise refuse("pads (do_pad)")
    if processor.get("do_rescale", True) and abs(float(processor.get("rescale_factor", 1 / 255)) - 1 / 255) > 1e-9:
        raise refuse(f"rescales by {processor.get('rescale_factor')}, not 1/255")
    if not processor.get("do_rescale", True):
        raise refuse("does not rescale pixels to [0, 1]")
    resample = processor.get("resample", 3)
    if resample not in _PIL_FILTERS:
        raise refuse(f"resamples with PIL filter {resample} (vmem has bilinear, 2, and bicubic, 3)")
    size = processor.get("size") or {}
    if isinstance(size, int):
        size = {"shortest_edge": size}
    crop_size = processor.get("crop_size") or {}
    if isinstance(crop_size, int):
        crop_size = {"height": crop_size, "width": crop_size}
    cropping = bool(processor.get("do_center_crop")) and crop_size
    if cropping and crop_size.get("height") != crop_size.get("width"):
        raise refuse(f"crops to a rectangle ({crop_size})")
    if processor.get("crop_pct") is not None and (cropping or set(size) != {"shortest_edge"}):
        # PoolFormer's and others' crop_pct scale the resize before their crop, each its own way
        raise refuse(f"resizes by crop_pct {processor['crop_pct']} to {size}, then crops ({crop_size})")
    squash = False
    if set(size) == {"height", "width"}:
        if size["height"] != size["width"]:
            raise refuse(f"resizes to a rectangle ({size})")
        resize, squash = int(size["height"]), True
        crop = int(crop_size["height"]) if cropping else resize
    elif set(size) == {"shortest_edge"} and processor.get("crop_pct") is not None and not cropping:
        # ConvNeXt's: below 384 px, shorter side to size / crop_pct and a centre crop of size; else a warp to size.
        edge = int(size["shortest_edge"])
        if edge < 384:
            resize, crop = int(edge / float(processor["crop_pct"])), edge
        else:
            resize, crop, squash = edge, edge, True
    elif set(size) == {"shortest_edge"} and cropping:
        resize, crop = int(size["shortest_edge"]), int(crop_size["height"])
    else:
        raise refuse(f"resizes to {size} without a square centre crop")
    if crop > resize:
        raise refuse(f"crops {crop} px out of {resize} px")
    mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    if processor.get("do_normalize", True):
        mean, std = _three(processor.get("image_mean"), "image_mean", refuse), \
            _three(processor.get("image_std"), "image_std", refuse)
    return Preprocessing(resize=resize, crop=crop, interpolation=_PIL_FILTERS[resample], mean=mean, std=std,
                         squash=squash)


def _three(value: Any, key: str, refuse: Any) -> tuple[float, float, float]:
    values = [value] * 3 if isinstance(value, int | float) else list(value or [])
    if len(values) != 3:
        raise refuse(f"has {key} {value!r}, not one value per RGB channel")
    return float(values[0]), float(values[1]), float(values[2])


def _no_code(load: Any, **kwargs: Any) -> Any:
    """`load` (a `from_pretrained`) that never runs a model's own code: the name may be a memory's, not the user's,
    and transformers, left to decide (trust_remote_code None), asks on stdin whether to run a folder's or a Hub
    repository's code, so a `y` typed there (or piped in) ran code the user never named."""
    return functools.partial(load, trust_remote_code=False, **kwargs)


def _refuse_own_code(ref: str, exc: Exception) -> None:
    """FeaturizerError, said for vmem, where transformers refused a model that needs code of its own."""
    if "trust_remote_code" in str(exc):
        raise FeaturizerError(f"hf:{ref}: the model needs code of its own to load (its config's auto_map), and vmem "
                              "runs no model's code on the say-so of a name (a memory's may not be yours): wrap it "
                              "in a python: plugin that loads it (README, \"Your own encoder\")") from None


def _processor_config(ref: str) -> dict[str, Any]:
    """A model's preprocessor_config.json: its folder's, or the Hub's (from the cache where it is there). A folder
    a whole processor was saved to (`CLIPProcessor.save_pretrained`, transformers 5) has none: its
    processor_config.json holds the image processor's, under "image_processor"."""
    folder = Path(ref).expanduser()
    if folder.is_dir():
        file = folder / "preprocessor_config.json"
        if file.is_file():
            return dict(json.loads(file.read_text()))
        whole = folder / "processor_config.json"
        nested = json.loads(whole.read_text()).get("image_processor") if whole.is_file() else None
        if not isinstance(nested, dict):
            raise FeaturizerError(f"hf:{ref}: the folder holds no preprocessor_config.json (nor an image processor in "
                                  "a processor_config.json), so how the model takes images is unknown: save its "
                                  "image processor there too (`AutoImageProcessor.from_pretrained(...)"
                                  ".save_pretrained(folder)`)")
        return dict(nested)
    from transformers import AutoImageProcessor

    try:
        processor = from_hub_or_folder(_no_code(AutoImageProcessor.from_pretrained), ref)
    except (OSError, ValueError) as exc:
        _refuse_own_code(ref, exc)
        raise FeaturizerError(f"hf:{ref}: could not read its image processor ({exc}). On a machine without the "
                              "Hugging Face Hub, save the model and its processor elsewhere and pass hf:/path/to/dir"
                              ) from None
    return dict(processor.to_dict())


def _config(ref: str) -> Any:
    from transformers import AutoConfig

    try:
        return from_hub_or_folder(_no_code(AutoConfig.from_pretrained), ref)
    except (OSError, ValueError) as exc:
        _refuse_own_code(ref, exc)
        raise FeaturizerError(f"hf:{ref}: no model config could be read ({exc}). On a machine without the Hugging "
                              "Face Hub, save the model elsewhere and pass hf:/path/to/dir") from None


def hf_spec_parts(name: str) -> tuple[str, Preprocessing, int | None]:
    """(canonical name, preprocessing, dim or None) of `hf:` `name`, from its config files alone (no weights)."""
    ref, pooling = split_hf_name(absolute_folder_name(name))
    config = _config(ref)
    pooling = pooling or default_pooling(config)
    where = f"hf:{ref}"
    return f"hf:{ref}#{pooling}", hf_preprocessing(_processor_config(ref), where), config_dim(config, pooling)


class HfFeaturizer(Featurizer):
    """A `transformers` vision model's pooled feature, preprocessed as its saved image processor says."""

    def __init__(self, name: str, device: str | torch.device | None = None) -> None:
        super().__init__(device)
        from transformers import AutoModel

        ref, _ = split_hf_name(absolute_folder_name(name))  # as the memory records it
        self.name, self.preprocessing, dim = hf_spec_parts(name)
        self.pooling = self.name.rpartition("#")[2]
        try:
            model = from_hub_or_folder(_no_code(AutoModel.from_pretrained, dtype=self.dtype), ref)
        except (OSError, ValueError) as exc:
            _refuse_own_code(ref, exc)
            raise FeaturizerError(f"hf:{ref}: could not load the model ({exc})") from None
        self.model = model.to(self.device).eval()
        two_tower = getattr(model.config, "vision_config", None) is not None
        if self.pooling == "image" and not hasattr(model, "get_image_features"):
            raise FeaturizerError(f"{self.name}: {type(model).__name__} has no image embedding "
                                  "(get_image_features): choose another pooling")
        # A two-tower model's tower alone for the token poolings; `image` goes through the whole model's method.
        self._tower = getattr(model, "vision_model", model) if two_tower else model
        self.dim = dim or 0
        with torch.inference_mode():
            probe = self.forward(torch.zeros(1, 3, self.preprocessing.crop, self.preprocessing.crop,
                                             device=self.device, dtype=self.dtype))
        if probe.ndim != 2 or (dim is not None and probe.shape[1] != dim):
            raise FeaturizerError(f"{self.name}: gives features of shape {tuple(probe.shape[1:])}, where its config "
                                  f"says {dim}-d: choose another pooling (#{', #'.join(POOLINGS)})")
        self.dim = int(probe.shape[1])

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        batch = batch.contiguous()
        if self.pooling == "image":
            out = self.model.get_image_features(pixel_values=batch)
            return out if isinstance(out, torch.Tensor) else out.pooler_output
        out = self._tower(pixel_values=batch)
        if self.pooling == "pooler":
            pooled = getattr(out, "pooler_output", None)
            if pooled is None:
                raise FeaturizerError(f"{self.name}: {type(self._tower).__name__} has no pooler_output; "
                                      "choose #cls or #mean")
            return pooled.flatten(1)  # ResNet's is [n, c, 1, 1]
        hidden = out.last_hidden_state
        if hidden.ndim == 4:  # a convolutional map [n, c, h, w]: no token is a CLS
            if self.pooling == "cls":
                raise FeaturizerError(f"{self.name}: a convolutional model has no CLS token; choose #mean or #pooler")
            return hidden.mean(dim=(2, 3))
        return hidden[:, 0] if self.pooling == "cls" else hidden.mean(dim=1)


# ---------------------------------------------------------------- python: plugins


def module_sha256(module: torch.nn.Module) -> str:
    """One digest of a module's state_dict: each entry's key, dtype, shape and bytes, in key order (0.05 s for 20 M
    float32 parameters, as long as torch.load takes to read them: docs/benchmarks/module_digest.py)."""
    digest = hashlib.sha256()
    for key, value in module.state_dict().items():
        if not isinstance(value, torch.Tensor):  # an extra_state a module keeps in its own form
            digest.update(f"{key}\0{value!r}\n".encode())
            continue
        tensor = value.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{key}\0{tensor.dtype}\0{tuple(value.shape)}\n".encode())
        digest.update(tensor.view(torch.uint8).numpy())  # as raw bytes, whatever the dtype (bfloat16 has no numpy)
    return digest.hexdigest()


class ModuleFeaturizer(Featurizer):
    """A torch module as a featurizer: `module(batch)` -> [n, dim] for a normalised batch [n, 3, crop, crop].

    What a plugin's factory can return for its own model:

        def factory(device):
            return ModuleFeaturizer(MyNet().load_state_dict(...), dim=512,
                                    preprocessing=Preprocessing(resize=256, crop=224), device=device)
    """

    def __init__(self, module: torch.nn.Module, dim: int, preprocessing: Preprocessing,
                 device: str | torch.device | None = None, name: str = "module") -> None:
        super().__init__(device)
        self.name, self.dim, self.preprocessing = name, dim, preprocessing
        # The plugin's name stays when its model is retrained: the weights' digest tells the two apart (a memory's
        # check, the feature cache's key). Taken as the factory gave them, before a GPU's half precision.
        self.weights_sha256 = module_sha256(module)
        self.module = module.to(self.device, self.dtype).eval()

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self.module(batch)


def trusted_plugin_modules() -> set[str]:
    """The modules VMEM_PLUGINS names (comma-separated): plugins a memory's own name may import."""
    return {m.strip() for m in os.environ.get(PLUGINS_ENV, "").split(",") if m.strip()}


def split_plugin_name(name: str) -> tuple[str, str]:
    module, _, factory = name.removeprefix("python:").partition(":")
    if not module or not factory or not all(part.isidentifier() for part in [*module.split("."), factory]):
        raise FeaturizerError(f"{name!r}: name a plugin as python:package.module:factory")
    return module, factory


def load_plugin(name: str, device: str | torch.device | None, trusted: bool) -> Featurizer:
    """`factory(device)` of `python:module:factory`, checked; imported only if `trusted` (the user named it here)
    or VMEM_PLUGINS lists the module."""
    module_name, factory_name = split_plugin_name(name)
    if not trusted and module_name not in trusted_plugin_modules():
        raise FeaturizerError(
            f"{name} is a plugin, and vmem imports a plugin (which runs its code) only where you name it: pass "
            f"--featurizer {name} (Python: featurizer={name!r}), or set {PLUGINS_ENV}={module_name} to trust it")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # a plugin's own import error, whatever it is, is the user's to see
        raise FeaturizerError(f"{name}: its module {module_name} could not be imported "
                              f"({type(exc).__name__}: {exc}); is it on PYTHONPATH or installed?") from None
    factory = getattr(module, factory_name, None)
    if not callable(factory):
        raise FeaturizerError(f"{name}: module {module_name} has no function {factory_name}")
    try:
        feat = factory(device)
    except FeaturizerError:
        raise
    except Exception as exc:
        raise FeaturizerError(f"{name}: {factory_name}(device) failed ({type(exc).__name__}: {exc})") from exc
    if not isinstance(feat, Featurizer):
        raise FeaturizerError(f"{name}: {factory_name}(device) returned a {type(feat).__name__}, not a "
                              "retrieval.Featurizer (subclass it, or wrap a torch module in "
                              "retrieval.own_encoders.ModuleFeaturizer)")
    if not isinstance(getattr(feat, "dim", None), int) or feat.dim < 1 \
            or not isinstance(getattr(feat, "preprocessing", None), Preprocessing):
        raise FeaturizerError(f"{name}: the featurizer needs an int dim >= 1 and a retrieval.Preprocessing "
                              f"(has dim {getattr(feat, 'dim', None)!r}, preprocessing "
                              f"{type(getattr(feat, 'preprocessing', None)).__name__})")
    feat.name = name  # what the memory records, and loads again
    try:
        probe = feat.embed([Image.new("RGB", (feat.preprocessing.crop,) * 2, (127, 127, 127))])
    except Exception as exc:
        raise FeaturizerError(f"{name}: embedding one image failed ({type(exc).__name__}: {exc}): forward must "
                              f"return [n, {feat.dim}] features") from None
    if not torch.isfinite(torch.from_numpy(probe)).all():
        raise FeaturizerError(f"{name}: embedding one grey image gave features that are not finite")
    return feat
