"""The Python API as a notebook uses it: a kernel that lives through interrupted cells, and what a cell shows."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.conftest import REPO

# A notebook kernel, interrupted (Ctrl-C, Jupyter's "interrupt the kernel": SIGINT) while the first classify or add
# imports the encoder's modules (torch: a second or more), then asked again. The signal is sent from an import hook
# as torch's nn package is looked for, so it lands inside torch's import every time.
INTERRUPTED_IMPORT = textwrap.dedent("""
    import os, signal, sys

    class InterruptOnce:
        sent = False
        def find_spec(self, name, path=None, target=None):
            if name == "torch.nn" and not self.sent:
                self.sent = True
                os.kill(os.getpid(), signal.SIGINT)
            return None

    sys.meta_path.insert(0, InterruptOnce())
    import retrieval
    try:
        retrieval.load_featurizer
    except KeyboardInterrupt:
        print("interrupted")
    from retrieval import load_featurizer   # the next cell
    import torch
    print(load_featurizer.__name__, torch.nn.Linear(2, 2).weight.shape[0])
""")


def test_ctrl_c_while_the_encoder_is_imported_leaves_the_kernel_usable():
    # Interrupted halfway, torch's import had left a half-made torch behind: every later classify or add in the
    # kernel failed ("module 'torch' has no attribute '_utils'", "cannot import name 'load_featurizer'") until a
    # restart. The interrupt now takes effect once the import is whole.
    proc = subprocess.run([sys.executable, "-c", INTERRUPTED_IMPORT], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["interrupted", "load_featurizer", "2"]
