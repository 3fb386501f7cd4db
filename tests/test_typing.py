"""A static type check of the six packages: mypy with the project's configuration ([tool.mypy] in pyproject.toml),
failing with mypy's report when it finds anything. Skips locally without mypy (`pip install -e '.[dev]'` installs
it, with the stubs it reads); FAILS in CI, where it must run.

The cache is the repository's .mypy_cache (ignored by git): a check after a first one takes ~2 s instead of ~40."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from tests.conftest import IN_CI, REPO


@pytest.mark.slow
def test_the_packages_type_check():
    if importlib.util.find_spec("mypy") is None:
        msg = "mypy is not installed (pip install -e '.[dev]' installs it)"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)
    proc = subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(REPO / "pyproject.toml"),
                           "--cache-dir", str(REPO / ".mypy_cache")],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        pytest.fail(f"mypy found problems (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}", pytrace=False)
