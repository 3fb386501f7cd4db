"""A small real memory for the service tests: colour-texture images embedded once with EfficientNet-Lite0.

Each test gets its own memory (a fresh Qdrant Edge shard, or qdrant-client's in-process mode) filled
from the vectors computed once per session, so tests can add and forget without seeing each other.
"""

from __future__ import annotations

import io
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

API_KEY = "test-key-0123456789abcdef"
COLORS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}
PER_LABEL = 4


def texture(color: tuple[int, int, int], seed: int, size: int = 32, fmt: str = "PNG") -> bytes:
    """A noisy patch of one colour: distinct per seed, close to its siblings."""
    rng = np.random.default_rng(seed)
    arr = np.clip(np.array(color)[None, None, :] + rng.normal(0, 18, (size, size, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, format=fmt)
    return buf.getvalue()


def checkerboard(size: int = 32, cell: int = 4) -> bytes:
    """Nothing like the memory's images."""
    y, x = np.mgrid[:size, :size]
    arr = (((x // cell + y // cell) % 2) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(np.stack([arr, 255 - arr, arr // 2], axis=-1), "RGB").save(buf, format="PNG")
    return buf.getvalue()


@dataclass
class MemoryImages:
    """The memory's image files and their features (computed once)."""

    paths: list[Path]
    labels: list[str]
    vectors: np.ndarray


def make_memory_images(root: Path, featurizer) -> MemoryImages:
    paths, labels = [], []
    for li, (label, color) in enumerate(COLORS.items()):
        (root / label).mkdir(parents=True, exist_ok=True)
        for j in range(PER_LABEL):
            p = root / label / f"{label}{j}.png"
            p.write_bytes(texture(color, seed=100 * li + j))
            paths.append(p)
            labels.append(label)
    return MemoryImages(paths, labels, featurizer.embed([str(p) for p in paths]))


def fill_memory(location: str, featurizer, images: MemoryImages, reranker=None):
    """A memory holding `images`; re-ranking off unless a re-ranker is given (tests never reach Google)."""
    from retrieval import open_store
    from vmem import VisualMemory

    store = open_store(location, featurizer.spec)
    store.add(images.vectors, images.labels, [str(p) for p in images.paths])
    # As `vmem build` does: the images' root is where the service may serve thumbnails from.
    store.meta.settings["source_roots"] = [os.path.commonpath([str(p.parent) for p in images.paths])]
    store.save_meta()
    return VisualMemory(store, featurizer, reranker=reranker)


def sample(client, series: str) -> float:
    """One sample of the client's service's /metrics by its name and labels as written there, e.g.
    `vmem_backups_total{result="ok"}`; AssertionError where it has none."""
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {series} in /metrics")


@contextmanager
def services(featurizer, images: MemoryImages) -> Iterator[Callable[..., Any]]:
    """open(location, filled=True, **settings) -> a TestClient, started, over a memory at `location` holding `images`
    (filled=False: an empty one), served with `settings` (api_key API_KEY unless given). Every client is stopped
    at the end, and its memory closed after it: a test file's `serve` fixture, around its own choice of location."""
    from fastapi.testclient import TestClient

    from retrieval import open_store
    from server import Settings, create_app
    from vmem import VisualMemory

    opened = []

    def open_service(location: str, filled: bool = True, **settings: Any) -> TestClient:
        mem = fill_memory(location, featurizer, images) if filled else VisualMemory(
            open_store(location, featurizer.spec), featurizer, reranker=None)
        client = TestClient(create_app(Settings(**{"memory": location, "api_key": API_KEY, **settings}), memory=mem))
        client.__enter__()
        opened.append((client, mem))
        return client

    try:
        yield open_service
    finally:
        for client, mem in opened:
            client.__exit__(None, None, None)
            mem.close()


@contextmanager
def live_server(app, timeout: float = 60.0, root_path: str = "", port: int = 0, **config: Any) -> Iterator[str]:
    """Run `app` under a real uvicorn on 127.0.0.1 (a free port) in a thread; yields its base URL. `root_path`:
    as `vmem serve --root-path` sets it, for a proxy that strips that prefix; `port`: the port of a service
    stopped before, to start it again where its clients are; `config`: more of uvicorn's settings
    (`timeout_graceful_shutdown`, as `vmem serve` sets it)."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # As uvicorn binds its own: a service started again on this port once it stops (its connections closing) may
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", root_path=root_path,
                                                   **config))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()
