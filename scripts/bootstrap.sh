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

# The Claude Code CLI the tests drive (against a scripted Messages API on loopback). Pinned:
# this version ships its native binary inside an npm package (the platform optional
# dependency @anthropic-ai/claude-code-linux-x64 and siblings), and its postinstall only copies
# that binary into place, so it installs from the npm registry alone and runs with no network.
CLAUDE_CODE_VERSION="2.1.328"
CLAUDE_CODE_PREFIX="$VENV/claude-code"

claude_code_bin() {
  echo "$CLAUDE_CODE_PREFIX/node_modules/.bin/claude"
}

ensure_claude_code() {
  # Installs @anthropic-ai/claude-code@$CLAUDE_CODE_VERSION into $VENV/claude-code (never
  # globally), with node and npm from Debian when they are missing.
  local bin
  bin="$(claude_code_bin)"
  if [ -x "$bin" ] && "$bin" --version 2>/dev/null | grep -q "^$CLAUDE_CODE_VERSION "; then
    return 0
  fi
  ensure_debian_packages node:nodejs npm:npm
  echo "installing Claude Code $CLAUDE_CODE_VERSION into $CLAUDE_CODE_PREFIX" >&2
  rm -rf "$CLAUDE_CODE_PREFIX"
  mkdir -p "$CLAUDE_CODE_PREFIX"
  # engines asks for node 22; the package's only script (install.cjs) runs on older ones too
  npm install --prefix "$CLAUDE_CODE_PREFIX" --no-audit --no-fund --no-save --loglevel=error \
    --engine-strict=false "@anthropic-ai/claude-code@$CLAUDE_CODE_VERSION" >&2
  if ! "$bin" --version | grep -q "^$CLAUDE_CODE_VERSION "; then
    echo "Claude Code $CLAUDE_CODE_VERSION did not install a working binary at $bin" >&2
    return 1
  fi
}
