"""The wheel a user installs holds all of vmem: every module and data file the repository has, importable from
an installed copy with no checkout beside it (the tests otherwise import from the source tree)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import zipfile

import pytest

from tests.conftest import REPO

PACKAGES = ("vmem", "retrieval", "reranker", "prompts", "server", "eval")


def tracked_files(*paths: str) -> list[str]:
    return subprocess.run(["git", "ls-files", *paths], cwd=REPO, capture_output=True, text=True,
                          check=True).stdout.split()


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    # Built from a copy of the tracked files: setuptools packs whatever an earlier build left in ./build too.
    source = tmp_path_factory.mktemp("source")
    for name in tracked_files("pyproject.toml", "README.md", "LICENSE", *PACKAGES):
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, source / name)
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out),
                    str(source)], check=True, capture_output=True, cwd=out)
    (built,) = out.glob("vmem-*.whl")
    return built


def test_the_wheel_holds_every_module_and_data_file_of_the_packages(wheel):
    tracked = tracked_files(*PACKAGES)
    assert "server/routes/classify.py" in tracked and "prompts/templates/neighbors-v1.yaml" in tracked
    held = set(zipfile.ZipFile(wheel).namelist())
    missing = [f for f in tracked if f not in held]
    assert missing == [], f"left out of the wheel: {missing}"
    assert any(name.endswith("licenses/LICENSE") for name in held)
    assert "vmem/py.typed" in held  # a user's own type checker reads vmem's hints


def test_an_installed_wheel_imports_and_runs_without_the_checkout(wheel, tmp_path):
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, capture_output=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    every_module = f"""
import importlib, pkgutil, sys
for top in {PACKAGES!r}:
    package = importlib.import_module(top)
    assert package.__file__.startswith({str(site)!r}), package.__file__
    for info in pkgutil.walk_packages(package.__path__, top + "."):
        if info.name.endswith(".__main__"):  # runs the CLI: `python -m vmem` below
            continue
        module = importlib.import_module(info.name)
        assert module.__file__.startswith({str(site)!r}), module.__file__
from prompts import TemplateRegistry
from server.routes.page import STATIC_DIR
assert (STATIC_DIR / "index.html").is_file() and str(STATIC_DIR).startswith({str(site)!r}), STATIC_DIR
print(sorted(TemplateRegistry().names()))
"""
    env = {**os.environ, "PYTHONPATH": str(site)}  # before the editable install of the checkout
    ran = subprocess.run([sys.executable, "-c", every_module], cwd=elsewhere, env=env, capture_output=True,
                         text=True, timeout=300)
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    assert "neighbors-v1" in ran.stdout
    cli = subprocess.run([sys.executable, "-m", "vmem", "serve", "--help"], cwd=elsewhere, env=env,
                         capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0 and "--port" in cli.stdout, cli.stdout[-3000:] + cli.stderr[-3000:]


def test_the_sdist_holds_the_packages_and_builds_the_same_wheel(wheel, tmp_path):
    # setuptools puts tests/test_*.py in an sdist by default, without the conftest and helpers they import (and
    # the checkout, docs and data they read): 40 % of the file, and not a suite that could run.
    source = tmp_path / "source"
    for name in tracked_files():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, source / name)
    out = tmp_path / "sdist"
    build = "import sys; from setuptools import build_meta; print(build_meta.build_sdist(sys.argv[1]))"
    subprocess.run([sys.executable, "-c", build, str(out)], cwd=source, check=True, capture_output=True)
    (sdist,) = out.glob("vmem-*.tar.gz")
    with tarfile.open(sdist) as tar:
        held = {m.name.split("/", 1)[1] for m in tar.getmembers() if m.isfile()}
        # Extraction filters are Python 3.11.4's: vmem takes 3.11.0 on
        tar.extractall(tmp_path / "unpacked", **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    assert sorted(held - set(tracked_files())) == ["PKG-INFO", "setup.cfg", *sorted(
        name for name in held if name.startswith("vmem.egg-info/"))]
    assert sorted(held & set(tracked_files())) == sorted(tracked_files(*PACKAGES, "pyproject.toml", "README.md",
                                                                       "LICENSE", "MANIFEST.in"))
    (unpacked,) = (tmp_path / "unpacked").iterdir()
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path), str(unpacked)], check=True, capture_output=True, cwd=tmp_path)
    (from_sdist,) = tmp_path.glob("vmem-*.whl")
    assert sorted(zipfile.ZipFile(from_sdist).namelist()) == sorted(zipfile.ZipFile(wheel).namelist())


def test_settings_models_leave_their_defaulted_fields_optional_to_a_type_checker():
    # Checkers without pydantic's plugin (pyright, Pylance) read a field as optional only when its default is
    # given as `default=`: `IndexSettings(m=32)` read as missing eight arguments.
    import ast

    positional = []
    for package in ("vmem", "retrieval", "reranker", "prompts", "server", "eval"):
        for path in (REPO / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Call) and node.args and getattr(node.func, "id", None) == "Field" and not (
                        isinstance(node.args[0], ast.Constant) and node.args[0].value is Ellipsis):
                    positional.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not positional, positional


def test_on_windows_importing_vmem_says_in_one_sentence_that_it_needs_linux_or_macos():
    # Memories are locked with fcntl: on Windows the import failed with "No module named 'fcntl'" from deep inside.
    # `retrieval` is what vmem, the service and eval all import first of vmem's own (pretending to be Windows
    # for `import vmem` itself trips the standard library, which then looks for Windows' sysconfig data).
    pretend_windows = ("import sys; sys.platform = 'win32'\n"
                       "try:\n    import retrieval\nexcept ImportError as e:\n    print(e)")
    ran = subprocess.run([sys.executable, "-c", pretend_windows], cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert "vmem runs on Linux and macOS" in ran.stdout and "WSL" in ran.stdout, ran.stdout + ran.stderr


# Imported only where installed, each with its own message or fallback: not dependencies of the package.
OPTIONAL_IMPORTS = {
    "faiss": "vmem bench search's baselines (--no-faiss without it)",
    "scipy": "eval's ImageNet devkit meta.mat",
    "aiohttp": "the Gemini SDK's transport, whenever it is installed",
}


def test_every_package_the_code_imports_is_a_declared_dependency():
    # One that came with another dependency installs today and goes when that one drops it: vmem serve's
    # --env-file read python-dotenv, which only pydantic-settings had asked for.
    import ast
    import importlib.metadata
    import re
    import tomllib

    declared = {re.split(r"[<>=!~ \[;]", r, maxsplit=1)[0].lower().replace("_", "-")
                for r in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]}
    distributions = importlib.metadata.packages_distributions()
    undeclared = set()
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for top in {name.split(".")[0] for name in names}:
                    if top in sys.stdlib_module_names or top in PACKAGES or top in OPTIONAL_IMPORTS:
                        continue
                    owners = {d.lower().replace("_", "-") for d in distributions.get(top, [top])}
                    if not owners & declared:
                        undeclared.add(f"{top} ({', '.join(sorted(owners))}) in {path.relative_to(REPO)}")
    assert sorted(undeclared) == []


def test_the_tested_versions_pin_every_declared_dependency_within_its_range():
    # scripts/install.sh (so CI) installs scripts/tested-versions.txt as constraints: a dependency added to
    # pyproject.toml without a pin there would come in at whatever version the index serves that day, and a pin
    # outside pyproject.toml's range would make the install fail. scripts/pin-tested-versions.sh rewrites the file.
    import tomllib

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins = {}
    for line in (REPO / "scripts" / "tested-versions.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version and "+" not in version, f"not a plain name==version pin: {line!r}"
            pins[canonicalize_name(name)] = version
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = [Requirement(r) for r in
                [*project["dependencies"], *(r for extra in project["optional-dependencies"].values() for r in extra)]]
    unpinned = [str(r) for r in declared if canonicalize_name(r.name) not in pins]
    outside = [f"{r} (pinned {pins[canonicalize_name(r.name)]})" for r in declared
               if canonicalize_name(r.name) in pins and not r.specifier.contains(pins[canonicalize_name(r.name)],
                                                                                 prereleases=True)]
    assert (unpinned, outside) == ([], [])
    assert "vmem" not in pins, "the project itself is installed from the checkout, not pinned"
