# Sourced by ./up.sh and ./test.sh: system packages (as root) and the project virtualenv.
# Usage: bootstrap <extra> <debian packages...>
set -euo pipefail

HIVE_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${HIVE_VENV:-$HIVE_ROOT/.venv}"

pick_python() {
  for candidate in python3.13 python3.12 python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
      echo "$candidate"; return 0
    fi
  done
  echo "hyperhive needs Python 3.11 or newer (apt-get install python3)" >&2
  return 1
}

ensure_debian_packages() {
  # $@: "command:package" pairs; installs the missing ones as root, names them otherwise.
  local missing=()
  for pair in "$@"; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing: ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "missing system packages; install them first:  sudo apt-get install ${missing[*]}" >&2
    return 1
  fi
}

ensure_venv() {
  local extra="$1" py
  py="$(pick_python)"
  if [ ! -x "$VENV/bin/python" ]; then
    if ! "$py" -m venv "$VENV" 2>/dev/null; then
      rm -rf "$VENV"
      ensure_debian_packages "nonexistent-venv-probe:python3-venv"
      "$py" -m venv "$VENV"
    fi
  fi
  local stamp="$VENV/.hyperhive-$extra" want
  want="$(cat "$HIVE_ROOT/pyproject.toml" | sha256sum | cut -c1-16)"
  if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -U pip >/dev/null
    if [ "$extra" = "none" ]; then
      "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e "$HIVE_ROOT"
    else
      "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e "$HIVE_ROOT[$extra]"
    fi
    echo "$want" > "$stamp"
  fi
}
