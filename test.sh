#!/usr/bin/env bash
# Install what the tests need, then lint, type-check and run the whole suite: ./test.sh [pytest args…]
set -euo pipefail
source "$(dirname "$0")/scripts/bootstrap.sh"
ensure_debian_packages git:git bwrap:bubblewrap chromium:chromium nix-instantiate:nix-bin nats-server:nats-server
ensure_venv test
ensure_claude_code
cd "$HIVE_ROOT"
echo "== ruff" && "$VENV/bin/ruff" check . && "$VENV/bin/ruff" format --check .
echo "== mypy --strict" && "$VENV/bin/mypy"
echo "== pytest"
# Two workers, a test file each at a time, the longest files first (tests/conftest.py,
# LONGEST_FIRST; xdist's own reordering is off): the suite keeps both cores ~80 % busy with
# what it runs for real (sandboxes, daemons, the Claude CLI, Chromium), so more workers do not
# help. HIVE_TEST_WORKERS=0 runs it in one process.
exec "$VENV/bin/python" -m pytest -p no:cacheprovider -n "${HIVE_TEST_WORKERS:-2}" --dist loadfile --no-loadscope-reorder "$@"
