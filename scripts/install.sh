#!/usr/bin/env bash
# Set up vmem on a fresh machine: a virtualenv in .venv with the project and its test tools.
# torch is pinned to 2.13.0 and installed first: that version has a CPU wheel here, and an
# unpinned torch would drag in gigabytes of CUDA packages.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
# vmem needs Python 3.11 or later (a Mac's own python3 is 3.9): say so, rather than pip's "no matching distribution".
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "vmem needs Python 3.11 or later; $PYTHON is $("$PYTHON" --version 2>/dev/null || echo missing)." \
       "Set PYTHON=/path/to/python3.11 (or later) and run this again." >&2
  exit 1
fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
. .venv/bin/activate
# The versions the tests last passed with (scripts/tested-versions.txt), as constraints: pyproject.toml's floors
# alone let a fresh machine get whatever the index serves that day, and one upstream release could break a setup
# (or CI) that passed here. VMEM_UNPINNED=1 takes the newest within pyproject.toml's ranges instead.
# (${PINS[@]+...}: an empty array under set -u is an error in the bash 3.2 a Mac has.)
PINS=(-c scripts/tested-versions.txt)
[ "${VMEM_UNPINNED:-0}" != 1 ] || PINS=()
pip install -q --upgrade ${PINS[@]+"${PINS[@]}"} pip
pip install -q ${PINS[@]+"${PINS[@]}"} "torch==2.13.0"
pip install -q ${PINS[@]+"${PINS[@]}"} -e '.[dev]'

# Headless Chromium for the browser test of the page (Debian's package; the test fails in CI without it).
# Both: the test drives the browser through chromedriver, which a machine with chromium alone lacks.
# Only where apt-get is (Debian, Ubuntu): elsewhere (a Mac) it had asked for a sudo password, failed, and gone on.
if ! { command -v chromium && command -v chromedriver; } >/dev/null 2>&1 && [ "${VMEM_SKIP_CHROMIUM:-0}" != 1 ]; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    # Not fatal: the project is installed by now, and only the browser test needs them.
    { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium chromium-driver \
        >/dev/null; } || echo "warning: chromium and chromium-driver could not be installed: the browser test" \
                             "will skip (outside CI) or fail (in CI)." >&2
  else
    echo "note: no chromium and chromedriver here, and no apt-get to install them: the browser test of the page" \
         "(tests/test_browser.py) will skip (outside CI). Install both to run it." >&2
  fi
fi
echo "vmem installed in .venv ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
