"""What a featurizer is, without loading torch: its preprocessing, the spec a memory records, and what embedding
returns. Commands that only read or edit a memory (info, points, history, forget) import these, and start without
torch's second or more; the methods that make tensors import it when first called."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, SerializerFunctionWrapHandler, model_serializer

from .images import ImageInput, load_image, load_pixels

if TYPE_CHECKING:
    import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Beyond this ratio of long to short side an image is resized from its crop's box alone (see resize_crop):
# photos (up to 21:9 panoramas' 2.3, 32:9's 3.6) keep the whole-image path their features were made with.
MAX_ASPECT = 8


class Preprocessing(BaseModel):
    """How an image becomes a model input: shorter side to `resize`, centre crop `crop`, normalise.

    `squash`: the whole image is resized to `resize` x `resize`, its aspect not kept, then centre-cropped to `crop`:
    what Hugging Face's ViT and SigLIP processors do (`size: {height, width}`, `hf:` encoders). `interpolation`:
    "bicubic" (every built-in encoder) or "bilinear" (ViT's processor), antialiased either way.

    `resampler` chooses who does the antialiased bicubic resize: "torch" (the default) runs torch's
    vectorised uint8 kernel, 5x faster than Pillow's on a 500x375 photo (0.4 against 2.1 ms); "pil" is
    Pillow's, the reference. The two use the same filter and agree to within 2 levels (almost always 1) on
    ~0.3% of a photo's pixels, features at a cosine above 0.9999 (tested): memories built either way answer
    alike.

    `jpeg_draft`: a JPEG at least four times larger than `resize` (a 12 MP phone photo) is decoded at
    1/2 to 1/8 scale, never below twice `resize`, before the resize: 4032x3024 photos decode 1.7x faster,
    features within a cosine of 0.9995 of a full decode (tested).
    """

    model_config = ConfigDict(frozen=True)

    resize: int
    crop: int
    interpolation: Literal["bicubic", "bilinear"] = "bicubic"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    resampler: Literal["torch", "pil"] = "torch"
    jpeg_draft: bool = True
    squash: bool = False

    @model_serializer(mode="wrap")
    def _without_unused_squash(self, handler: SerializerFunctionWrapHandler) -> dict:
        # Left out where False: the feature cache's folder name hashes this JSON, and caches made before
        # `squash` existed must stay found.
        out = handler(self)
        if not self.squash:
            out.pop("squash", None)
        return out

    def __call__(self, img: Image.Image) -> torch.Tensor:
        """The model input for one image: float32 [3, crop, crop], normalised."""
        return self.normalize(self.resize_crop(img).unsqueeze(0))[0]

    def decode(self, source: ImageInput, name: str | None = None) -> Image.Image:
        """`load_image` with this preprocessing's JPEG draft: the image every path embeds (`name`: what errors call
        it, as `load_image` takes it)."""
        return load_image(source, min_side=self._min_side, name=name)

    def load(self, source: ImageInput, name: str | None = None) -> torch.Tensor:
        """Decode and resize-crop one image: `resize_crop(decode(source))`, plain JPEGs by the faster decoder."""
        if self.resampler == "pil" or isinstance(source, Image.Image):
            return self.resize_crop(self.decode(source, name))
        return self.resize_crop(load_pixels(source, min_side=self._min_side, name=name))

    @property
    def _min_side(self) -> int | None:
        return 2 * self.resize if self.jpeg_draft else None

    def crop_box(self, width: int, height: int) -> tuple[tuple[int, int], tuple[int, int, int, int]]:
        """The resized size (w, h) and, in it, the centre crop's (left, top, right, bottom)."""
        if self.squash:
            size = (self.resize, self.resize)
        else:
            scale = self.resize / min(width, height)
            size = (max(self.crop, round(width * scale)), max(self.crop, round(height * scale)))
        left, top = (size[0] - self.crop) // 2, (size[1] - self.crop) // 2
        return size, (left, top, left + self.crop, top + self.crop)

    def resize_crop(self, img: Image.Image | np.ndarray) -> torch.Tensor:
        """Resize and centre-crop an RGB image (or its uint8 [h, w, 3] array): uint8 [3, crop, crop], not
        yet normalised."""
        import torch
        if self.resampler == "pil":
            return self._resize_crop_pil(Image.fromarray(img) if isinstance(img, np.ndarray) else img)
        height, width = (img.shape[0], img.shape[1]) if isinstance(img, np.ndarray) else (img.height, img.width)
        if max(width, height) > MAX_ASPECT * min(width, height) and not self.squash:
            # Resizing a 65535x1 image whole makes it 16.7M x 256 (gigabytes) before the crop takes 224 x 224
            # of it: resize only the crop's source box instead (PIL's bicubic; such images are never training data).
            return self._resize_box_pil(Image.fromarray(img) if isinstance(img, np.ndarray) else img)
        pixels = img if isinstance(img, np.ndarray) else np.array(img, dtype=np.uint8)
        (w, h), (left, top, right, bottom) = self.crop_box(pixels.shape[1], pixels.shape[0])
        whole = torch.from_numpy(pixels).permute(2, 0, 1).unsqueeze(0)
        resized = torch.nn.functional.interpolate(whole, size=(h, w), mode=self.interpolation, antialias=True)
        # A compact copy of the crop, channels last as decoded: workers ship it, not the whole resized image.
        return resized[0, :, top:bottom, left:right].permute(1, 2, 0).contiguous().permute(2, 0, 1)

    def _resize_crop_pil(self, img: Image.Image) -> torch.Tensor:
        import torch

        w, h = img.size
        size, (left, top, right, bottom) = self.crop_box(w, h)
        # PIL's bicubic resize filters over the source footprint when shrinking (antialias).
        if all(v * n % m == 0 for v, n, m in ((left, w, size[0]), (right, w, size[0]),
                                               (top, h, size[1]), (bottom, h, size[1]))):
            # The crop falls on whole source pixels (Tiny-ImageNet's 64 px to 256, for one): resizing only
            # that box gives the same bytes (checked in tests) for a fifth less work.
            box = (left * w // size[0], top * h // size[1], right * w // size[0], bottom * h // size[1])
            img = img.resize((self.crop, self.crop), self._pil_filter, box=box, reducing_gap=None)
        elif max(w, h) > MAX_ASPECT * min(w, h):
            return self._resize_box_pil(img)
        else:
            img = img.resize(size, self._pil_filter, reducing_gap=None).crop((left, top, right, bottom))
        return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)

    def _resize_box_pil(self, img: Image.Image) -> torch.Tensor:
        """The crop of the resized image made from its source box alone (fractional: PIL maps the same pixels),
        in memory bounded by the crop, not by the image's long side."""
        import torch

        w, h = img.size
        size, (left, top, right, bottom) = self.crop_box(w, h)
        box = (left * w / size[0], top * h / size[1], right * w / size[0], bottom * h / size[1])
        img = img.resize((self.crop, self.crop), self._pil_filter, box=box, reducing_gap=None)
        return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)

    @property
    def _pil_filter(self) -> Image.Resampling:
        return Image.Resampling.BILINEAR if self.interpolation == "bilinear" else Image.Resampling.BICUBIC

    def normalize(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 [n, 3, crop, crop] to the normalised float32 model input (float input passes through)."""
        import torch

        if batch.is_floating_point():
            return batch
        mean = torch.tensor(self.mean, device=batch.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=batch.device).view(1, 3, 1, 1)
        return batch.float().div_(255.0).sub_(mean).div_(std)


class FeaturizerSpec(BaseModel):
    """What a memory records about the encoder that made its vectors."""

    name: str
    dim: int
    preprocessing: Preprocessing
    # A model loaded from a local folder (`dinov2:/path`): the digest of its files (`local_weights_sha256`).
    # The name stays the same when retrained weights are saved there; their features are not comparable.
    # None for built-in and Hub models, and in memories made before it was recorded.
    weights_sha256: str | None = None


@dataclass
class EmbedFailure:
    index: int
    source: str
    reason: str


@dataclass
class EmbedResult:
    """Features for the inputs that decoded; failures for those that did not (never raised)."""

    features: np.ndarray  # float32 [n_ok, dim], rows L2-normalised
    indices: list[int]  # positions in the input of the rows of `features`
    failures: list[EmbedFailure] = field(default_factory=list)


class FeaturizerError(ValueError):
    """A featurizer could not be created or does not match the memory."""
