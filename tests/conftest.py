"""Shared fixtures: isolated state per test, tiny images, the real Tiny-ImageNet data and its cached features."""

from __future__ import annotations

import io
import logging
import os
import signal
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
TINY_IMAGENET = Path(os.environ.get("VMEM_TINY_IMAGENET", REPO.parent / "shared" / "data" / "tiny-imagenet-200"))
# Real-data features are cached by file content under a gitignored directory.
FEATURE_CACHE = Path(os.environ.get("VMEM_FEATURE_CACHE", REPO / ".cache" / "features"))
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    # A background job of a non-interactive shell (`bash -c '...' &`, nohup) starts with SIGINT ignored, and every
    # process it starts inherits that: the tests' Ctrl-C to a vmem subprocess never arrived (a run went on to its
    # end, exit 0; a wait went on to its limit). Handled here, the signal is default again in each child.
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path, monkeypatch):
    """No test sees a real API key, a user's config or another test's state."""
    for var in ("GEMINI_API_KEY", "GOOGLE_API_KEY", "GOOGLE_GEMINI_BASE_URL", "VMEM_API_KEY", "VMEM_MEMORY",
                "VMEM_QDRANT_URL", "QDRANT_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("VMEM_HOME", str(tmp_path / "vmem-home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _qdrant_client_warns_afresh(monkeypatch):
    """qdrant-client warns each message once a process (client_warnings.SEEN_MESSAGES): a test that drove its local
    mode as a server's stand-in, told to ignore the warning, used up the once, and the local-mode warnings that
    pyproject.toml makes errors reached no later test on that worker. Each test starts as a fresh process would."""
    from qdrant_client.common import client_warnings

    monkeypatch.setattr(client_warnings, "SEEN_MESSAGES", set())


@pytest.fixture(autouse=True)
def _no_log_handler_left_on_a_closed_stream():
    """`vmem serve` run in this process (click's CliRunner) configures logging as a service's own process does
    (dictConfig: the root logger's handler on sys.stderr as it is then, the runner's, closed once it returns). Left
    there, a later test's log line went to the closed stream, and logging printed "--- Logging error ---" with the
    exception being handled into that test's output (a build's "Traceback" where one line was asserted). Removed
    after each test, as such a process would have ended."""
    yield
    loggers = [logging.getLogger(), *(lg for lg in logging.Logger.manager.loggerDict.values()
                                      if isinstance(lg, logging.Logger))]
    for logger in loggers:
        for handler in list(logger.handlers):
            if isinstance(handler, logging.StreamHandler) and getattr(handler.stream, "closed", False):
                logger.removeHandler(handler)


def require_tiny_imagenet() -> Path:
    """The real data, or a skip (a failure in CI, where missing data must not pass silently)."""
    if not (TINY_IMAGENET / "train").is_dir() or not (TINY_IMAGENET / "val").is_dir():
        msg = f"real data not found at {TINY_IMAGENET} (set VMEM_TINY_IMAGENET)"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)
    return TINY_IMAGENET


@pytest.fixture(scope="session")
def tiny_imagenet() -> Path:
    return require_tiny_imagenet()


@pytest.fixture(scope="session")
def encoder(tmp_path_factory) -> str:
    """A tiny random DINOv2 saved to disk, by its featurizer name (`dinov2:PATH`): the real from_pretrained
    load path, loaded in a second. Its weights are seeded: every test that uses it sees the same model."""
    from tests._reliability_fixtures import save_tiny_dinov2

    return save_tiny_dinov2(tmp_path_factory.mktemp("tiny-dinov2"))


@pytest.fixture(scope="session")
def lite0():
    from retrieval import load_featurizer

    feat = load_featurizer("efficientnet-lite0", device="cpu")
    feat.warm_up()  # as a service readies it
    return feat


@pytest.fixture(scope="module")
def memory_images(tmp_path_factory, lite0):
    """The service tests' 12 images and their EfficientNet-Lite0 vectors (tests/_server_fixtures.py), made once a
    module: fill_memory makes a fresh memory of them for each test."""
    from tests._server_fixtures import make_memory_images

    return make_memory_images(tmp_path_factory.mktemp("images"), lite0)


def make_image(color=(200, 30, 30), size=(32, 24), fmt="JPEG", mode="RGB") -> bytes:
    """A small solid-colour image, encoded."""
    img = Image.new(mode, size, color)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def make_scene(seed: int, size: int = 160) -> bytes:
    """A PNG of a few soft coloured shapes on a plain ground, distinct per seed: EfficientNet-Lite0 puts two seeds'
    features at most ~0.8 apart, and the same scene re-encoded as JPEG at quality 90 (`reencoded`) or enlarged
    within ~0.95 or more (seed 3: 0.975 and 0.992), as copies of a photo are."""
    from PIL import ImageDraw, ImageFilter

    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (size, size), tuple(int(c) for c in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(img)
    for _ in range(6):
        x0, y0 = rng.integers(0, size, 2)
        w, h = rng.integers(size // 8, size // 2, 2)
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([int(x0), int(y0), int(x0 + w), int(y0 + h)],
                                                                  fill=colour)
    buf = io.BytesIO()
    img.filter(ImageFilter.GaussianBlur(3)).save(buf, format="PNG")
    return buf.getvalue()


def reencoded(data: bytes, fmt: str = "JPEG", scale: float = 1.0, **options) -> bytes:
    """An image's copy as a person makes one: decoded, resized by `scale`, saved again (other bytes, same picture)."""
    img = Image.open(io.BytesIO(data)).convert("RGB")
    if scale != 1.0:
        img = img.resize((round(img.width * scale), round(img.height * scale)), Image.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, format=fmt, **options)
    return buf.getvalue()


def random_unit_vectors(n: int, dim: int, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)
