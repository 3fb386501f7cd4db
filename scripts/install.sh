#!/usr/bin/env bash
# Set up vmem on a fresh machine: a virtualenv in .venv with the project and its test tools.
# torch is pinned to 2.13.0 and installed first: that version has a CPU wheel here, and an
# unpinned torch would drag in gigabytes of CUDA packages.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
. .venv/bin/activate
pip install -q --upgrade pip
pip install -q "torch==2.13.0"
pip install -q -e '.[dev]'

# Headless Chromium for the browser test of the page (Debian's package; the test fails in CI without it).
# Both: the test drives the browser through chromedriver, which a machine with chromium alone lacks.
if ! { command -v chromium && command -v chromedriver; } >/dev/null 2>&1 && [ "${VMEM_SKIP_CHROMIUM:-0}" != 1 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium chromium-driver >/dev/null
fi
echo "vmem installed in .venv ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
