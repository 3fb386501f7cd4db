"""Helpers shared by the reliability tests: a tiny random encoder, distinct images, `vmem serve` as a process.

A tiny random DINOv2 (saved like a downloaded checkpoint) embeds hundreds of images a second on a
busy 2-core machine, so crash and load tests spend their time on what they test, not on the encoder.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

VMEM = [sys.executable, "-c", "from vmem.cli import app; app()"]


def save_tiny_dinov2(path: Path) -> str:
    """A random 1-layer DINOv2 at `path`; returns its featurizer name (`dinov2:PATH`)."""
    import torch
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    config = Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                          patch_size=14, image_size=224)
    Dinov2Model(config).save_pretrained(path)
    return f"dinov2:{path}"


def noise_png(seed: int, size: int = 16, fmt: str = "PNG") -> bytes:
    """A random image, distinct per seed (so its content id, and its point id, are distinct too)."""
    arr = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, format=fmt)
    return buf.getvalue()


def image_folder(root: Path, labels: list[str], per_label: int) -> list[Path]:
    """`root/<label>/<i>.png` of random images; returns the files."""
    files = []
    for li, label in enumerate(labels):
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_label):
            p = root / label / f"{i:04d}.png"
            p.write_bytes(noise_png(10_000 * li + i))
            files.append(p)
    return files


def subprocess_env(**extra: str) -> dict[str, str]:
    repo = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": repo, "OMP_NUM_THREADS": "1", **extra}
    return env


@dataclass
class Served:
    proc: subprocess.Popen
    url: str
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@contextmanager
def vmem_serve(memory: Path, workdir: Path, *args: str, env: dict[str, str] | None = None,
               ready_timeout: float = 120.0) -> Iterator[Served]:
    """`vmem serve` as a child process on a free loopback port, ready when this yields; stopped after.

    The port is the one vmem serve finds itself (--port 0), held from its start, and named in the note it writes in
    the memory's folder (`served_by`): a port found free here and bound seconds later, once the child had imported
    torch and opened the memory, could be taken meanwhile (a client connection's own port is drawn from the same
    range), and the service then failed to start."""
    from retrieval.files import served_by

    log = workdir / f"serve-{time.monotonic_ns()}.log"
    with log.open("w") as out:
        proc = subprocess.Popen([*VMEM, "serve", "--memory", str(memory), "--port", "0", *args],
                                env=env or subprocess_env(), cwd=workdir, stdout=out, stderr=subprocess.STDOUT)
    served = Served(proc, "", log)
    try:
        deadline = time.monotonic() + ready_timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"vmem serve exited with {proc.returncode}:\n{served.output()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"vmem serve not ready in {ready_timeout:g} s:\n{served.output()}")
            note = served_by(memory)
            if note is not None and note.get("pid") == proc.pid and note.get("urls"):
                served.url = str(note["urls"][0])  # type: ignore[index]
                try:
                    if httpx.get(f"{served.url}/readyz", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
            time.sleep(0.2)
        yield served
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


LABELS = ("ant", "bee", "cat")


def tiny_memory(encoder: str, location: str = ":memory:", per_label: int = 4, reranker=None):
    """A `VisualMemory` of random images under three labels, embedded by the tiny encoder."""
    from retrieval import load_featurizer, open_store
    from vmem import VisualMemory

    feat = load_featurizer(encoder, device="cpu")
    store = open_store(location, feat.spec)
    images = [noise_png(i) for i in range(per_label * len(LABELS))]
    labels = [LABELS[i % len(LABELS)] for i in range(len(images))]
    store.add(feat.embed(images), labels, [f"mem:seed/{i}.png" for i in range(len(images))])
    return VisualMemory(store, feat, reranker=reranker)


def tiny_app(encoder: str, tmp_path: Path, memory=None, **settings):
    """The FastAPI app over a tiny memory (auth off unless an `api_key` is given)."""
    from server import Settings, create_app

    opts = {"memory": ":memory:", "thumbnail_dir": tmp_path / "thumbs", "featurize_threads": 2, **settings}
    if "api_key" not in opts:
        opts["auth_disabled"] = True
    return create_app(Settings(**opts), memory=memory if memory is not None else tiny_memory(encoder))
