#!/usr/bin/env bash
# Bring up a hive on embedded defaults: ./up.sh [hive up options…]
set -euo pipefail
source "$(dirname "$0")/scripts/bootstrap.sh"
ensure_debian_packages git:git bwrap:bubblewrap
ensure_venv none
cd "$HIVE_ROOT"
exec "$VENV/bin/hive" up "$@"
