"""EfficientNet-Lite0 built once for a module's in-process CLI runs.

Each `vmem` command run through CliRunner loads its featurizer by name: EfficientNet-Lite0's weights loaded
strictly and its BatchNorm fused, about a second of every run (it had been 1 to 3 s with the CPU trace: half a
minute of tests/test_eval_cli.py). With this module's autouse fixture, a load by that name on the CPU is a shallow
copy of the session's `lite0`: the same weights, its own attributes (settings a command or test changes on its
featurizer stay with that copy). Loading by name itself, and a fresh model, are tested in
tests/test_featurizers.py and by the session's `lite0`, which is loaded by name.

Use: `from tests._lite0_once import lite0_loaded_once  # noqa: F401 - autouse`.
"""

from __future__ import annotations

import copy

import pytest


@pytest.fixture(scope="module", autouse=True)
def lite0_loaded_once(lite0):
    from retrieval import featurizers

    named = featurizers._featurizer_named

    def once(name, device):
        on_cpu = (featurizers.usable_device(device) if device is not None else featurizers.default_device()).type
        if name == lite0.name and on_cpu == "cpu":
            return copy.copy(lite0)
        return named(name, device)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(featurizers, "_featurizer_named", once)
        yield
