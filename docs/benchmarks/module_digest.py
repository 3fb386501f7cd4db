"""What a `python:` plugin's weights digest costs when it is loaded: `own_encoders.module_sha256` of a ~20 M parameter
model (ModuleFeaturizer takes it so that the feature cache and a memory tell retrained weights apart), next to the
plugin's own `torch.load` of the same weights and to hashing a `torch.save` of them.

    .venv/bin/python docs/benchmarks/module_digest.py
"""

from __future__ import annotations

import hashlib
import io
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from retrieval.own_encoders import module_sha256


def median_s(run: Callable[[], object], repeats: int = 7) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(*[torch.nn.Linear(2000, 2000) for _ in range(5)])  # 20.0 M float32 parameters
    params = sum(p.numel() for p in net.parameters())
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "weights.pt"
        torch.save(net.state_dict(), weights)
        load = median_s(lambda: torch.load(weights))

    def saved_sha256() -> str:
        buffer = io.BytesIO()
        torch.save(net.state_dict(), buffer)
        return hashlib.sha256(buffer.getbuffer()).hexdigest()

    print(f"{params / 1e6:.1f} M parameters ({params * 4 / 1e6:.0f} MB), median of 7:")
    print(f"  module_sha256 (state_dict bytes)   {median_s(lambda: module_sha256(net)):.3f} s")
    print(f"  sha256 of a torch.save to memory   {median_s(saved_sha256):.3f} s")
    print(f"  torch.load of the weights file     {load:.3f} s  (what the plugin pays to load them)")


if __name__ == "__main__":
    main()
