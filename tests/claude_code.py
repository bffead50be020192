"""Where the tests find the real Claude Code CLI: the pinned copy scripts/bootstrap.sh installs
into `<venv>/claude-code` (`./test.sh` runs it). A missing CLI fails the test that needs it,
with the command that installs it: it is never skipped."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BOOTSTRAP = ROOT / "scripts" / "bootstrap.sh"


def pinned_version() -> str:
    found = re.search(r'^CLAUDE_CODE_VERSION="([^"]+)"', BOOTSTRAP.read_text(), re.M)
    assert found, "scripts/bootstrap.sh pins no CLAUDE_CODE_VERSION"
    return found.group(1)


@cache
def claude_bin() -> Path:
    """The pinned CLI, checked to run and to be the pinned version."""
    path = Path(os.environ.get("HIVE_TEST_CLAUDE") or "")
    if not os.environ.get("HIVE_TEST_CLAUDE"):
        path = Path(sys.prefix) / "claude-code" / "node_modules" / ".bin" / "claude"
    if not os.access(path, os.X_OK):
        pytest.fail(
            f"the Claude Code CLI is not installed at {path}: run ./test.sh, or "
            "`bash -c 'source scripts/bootstrap.sh; ensure_claude_code'`"
        )
    out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=60)
    assert out.stdout.startswith(f"{pinned_version()} "), (out.stdout, out.stderr)
    return path.resolve()
