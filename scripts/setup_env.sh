#!/usr/bin/env bash
# Create or refresh .venv with everything MRSynthesis needs (library, tests, training).
# Re-runs are cheap: the install is skipped while pyproject.toml and the constraints are unchanged.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${MRSYNTHESIS_VENV:-$root/.venv}"
python="${PYTHON:-python3}"
stamp="$venv/.mrsynthesis-stamp"
want="$(cat "$root/pyproject.toml" "$root/requirements/constraints.txt" | sha256sum | cut -d' ' -f1)"
if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "setting up $venv (first run takes a few minutes) ..." >&2
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet -c "$root/requirements/constraints.txt" "torch==2.13.0"
"$venv/bin/python" -m pip install --quiet -c "$root/requirements/constraints.txt" -e "$root[test,slicer-test,train]"
echo "$want" > "$stamp"
