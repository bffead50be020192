"""The MCP server a claude agent's harness keeps loaded answers its own uid only.

Its socket is the agent's tools: whoever connects speaks as the agent. The harness makes it in
a fresh 0700 directory of its uid under `/tmp` (the sandbox's own `/tmp`, so other agents do
not even see it). Attacked here on the host, where `/tmp` is shared: a stranger's uid tries
to connect, after the same probe is shown to connect to a socket any uid may use.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
from pathlib import Path

import anyio

from ag3nt.mcp_listener import listening
from tests.conftest import DaemonProcess
from tests.security.conftest import as_uid, needs_root, unused_uid

CONNECT = "import socket, sys; socket.socket(socket.AF_UNIX).connect(sys.argv[1]); print('in')"


def system_python() -> str:
    """An interpreter any uid may run (this venv's may live under root's home)."""
    return shutil.which("python3", path="/usr/bin:/bin") or sys.executable


def can_connect(uid: int, path: Path) -> bool:
    done = as_uid(uid, [system_python(), "-c", CONNECT, str(path)])
    return done.returncode == 0 and done.stdout.strip() == "in"


@needs_root
def test_another_uid_cannot_reach_the_loaded_mcp_server(
    daemon_process: DaemonProcess, open_tmp: Path
) -> None:
    stranger = unused_uid()
    open_socket = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    open_socket.bind(str(open_tmp / "open.sock"))
    open_socket.listen(4)
    os.chmod(open_tmp / "open.sock", 0o777)

    async def main() -> tuple[bool, bool]:
        async with listening(str(daemon_process.paths.agent_sock("alice")), "agent") as path:
            probe_works = await anyio.to_thread.run_sync(
                can_connect, stranger, open_tmp / "open.sock"
            )
            refused = not await anyio.to_thread.run_sync(can_connect, stranger, path)
            return probe_works, refused

    try:
        probe_works, refused = anyio.run(main, backend="asyncio")
    finally:
        open_socket.close()
    assert probe_works, "the probe must connect to a socket any uid may use"
    assert refused, "a stranger's uid connected to the agent's MCP server"
