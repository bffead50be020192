"""`hive up` with the dashboard's port already taken (another hive's dashboard, say)."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent


def test_hive_up_refuses_a_dashboard_port_that_is_taken_before_starting_anything(tmp_path):
    """Before, the hive came up and said so, and its dashboard failed behind it again and
    again ("Address already in use", retried for ever): two hives on one host with the same
    port gave the second no dashboard and no clear word. Now it is one sentence, at once,
    naming a free port to use instead, and nothing is started or created."""
    config = tmp_path / "hive.toml"
    config.write_text('[hive]\nautostart = false\n\n[agents.alice]\nruntime = "scripted"\n')
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        out = subprocess.run(
            [
                sys.executable,
                "-c",
                "import hive_cli; hive_cli.main()",
                "up",
                "--config",
                str(config),
                "--state-dir",
                str(tmp_path / "state"),
                "--run-dir",
                str(tmp_path / "run"),
                "--web-port",
                str(port),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        )
    assert out.returncode == 1, out
    (line,) = out.stderr.strip().splitlines()
    assert f"the dashboard's port 127.0.0.1:{port} is taken" in line
    assert "--web-port " in line and "web_port = " in line
    assert "Traceback" not in out.stderr and "is up" not in out.stdout
    assert not (tmp_path / "run").exists() and not (tmp_path / "state").exists()
