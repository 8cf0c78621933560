#!/usr/bin/env bash
# Create or refresh .venv with everything MRSynthesis needs (library, tests, training).
# Re-runs are cheap: the install is skipped while pyproject.toml and the constraints are unchanged.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${MRSYNTHESIS_VENV:-$root/.venv}"
python="${PYTHON:-python3}"
stamp="$venv/.mrsynthesis-stamp"
# hashed with Python: macOS has no sha256sum
want="$(cat "$root/pyproject.toml" "$root/requirements/constraints.txt" \
  | "$python" -c 'import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())')"
if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "setting up $venv (first run takes a few minutes) ..." >&2
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
# PyPI's Linux build of torch 2.13.0 is the CUDA one (GBs): MRSYNTHESIS_TORCH_INDEX=https://download.pytorch.org/whl/cpu
# takes the CPU build instead (a machine whose pip is configured for a local CPU wheel needs nothing)
"$venv/bin/python" -m pip install --quiet -c "$root/requirements/constraints.txt" \
  ${MRSYNTHESIS_TORCH_INDEX:+--index-url "$MRSYNTHESIS_TORCH_INDEX"} "torch==2.13.0"
"$venv/bin/python" -m pip install --quiet -c "$root/requirements/constraints.txt" -e "$root[test,slicer-test,train]"
echo "$want" > "$stamp"
