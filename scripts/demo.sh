#!/usr/bin/env bash
# The main job on an embedded default: synthesise from the MNI152 T1 template (see README).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup_env.sh"
exec "${MRSYNTHESIS_VENV:-$root/.venv}/bin/mrsynthesis" demo "$@"
