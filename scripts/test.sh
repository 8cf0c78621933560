#!/usr/bin/env bash
# The whole test suite (sets up .venv first). Extra arguments go to pytest.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup_env.sh"
cd "$root"
export QT_QPA_PLATFORM=offscreen
exec "${MRSYNTHESIS_VENV:-$root/.venv}/bin/python" -m pytest Testing/Python "$@"
