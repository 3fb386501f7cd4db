#!/usr/bin/env bash
# Write scripts/tested-versions.txt from .venv: the exact versions this checkout's tests passed with.
# scripts/install.sh installs those (pip constraints), so that CI on a fresh machine, and a user's setup, get what
# was tested rather than whatever the index serves that day. Run it after upgrading a package in .venv and running
# the tests; pyproject.toml keeps the floors a user's own environment needs.
set -euo pipefail
cd "$(dirname "$0")/.."
{
  echo "# The versions vmem's tests last passed with (scripts/pin-tested-versions.sh writes this from .venv)."
  echo "# scripts/install.sh installs them as pip constraints; VMEM_UNPINNED=1 bash scripts/install.sh takes the"
  echo "# newest the index serves instead (within pyproject.toml's ranges)."
  # --all keeps pip and setuptools (install.sh upgrades pip; the packaging test builds with setuptools). The editable
  # vmem itself is left out, and torch's local label (+cpu) too: the CPU index serves 2.13.0 as 2.13.0+cpu, a Mac
  # gets plain 2.13.0, and ==2.13.0 accepts both.
  .venv/bin/python -m pip freeze --all --exclude-editable | sed -E 's/^(torch==[^+]+)\+.*/\1/' | LC_ALL=C sort -f
} > scripts/tested-versions.txt
echo "wrote scripts/tested-versions.txt ($(grep -vc '^#' scripts/tested-versions.txt) packages)"
