"""A real `nats-server -js` on loopback for the federation tests: own port, own store dir.

The server is Debian's `nats-server` (installed by scripts/bootstrap.sh). `NatsServer`
writes a config with one user per hive and the per-hive permissions of docs/federation.md,
plus an `admin` user for provisioning; `kill()` is SIGKILL, `start()` again reuses the port
and the store dir, so JetStream's state survives as it would on a real restart.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

NATS_SERVER = shutil.which("nats-server") or "/usr/bin/nats-server"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def hive_permissions(hive: str, namespace: str = "hyperhive") -> str:
    """The permissions block of docs/federation.md for one hive."""
    ns_upper = namespace.upper().replace("-", "_")
    msgs, status = f"{ns_upper}_MSGS", f"{ns_upper}_STATUS"
    allow = [
        f"{namespace}.msg.*.{hive}",
        f"{namespace}.status.{hive}",
        "$JS.API.INFO",
        f"$JS.API.STREAM.INFO.{msgs}",
        f"$JS.API.STREAM.INFO.{status}",
        f"$JS.API.CONSUMER.INFO.{msgs}.{hive}",
        f"$JS.API.CONSUMER.INFO.{status}.{hive}",
        f"$JS.API.CONSUMER.MSG.NEXT.{msgs}.{hive}",
        f"$JS.API.CONSUMER.MSG.NEXT.{status}.{hive}",
        f"$JS.ACK.{msgs}.{hive}.>",
        f"$JS.ACK.{status}.{hive}.>",
    ]
    quoted = ", ".join(f'"{s}"' for s in allow)
    return f'{{ publish: {{ allow: [{quoted}] }}, subscribe: {{ allow: ["_INBOX_{hive}.>"] }} }}'


def make_certificates(root: Path) -> dict[str, Path]:
    """A throwaway CA, a server certificate for 127.0.0.1 and one client certificate (openssl)."""

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=root)

    run(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=hive test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    )
    (root / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name, ext in (("server", ["-extfile", "san.ext"]), ("client", [])):
        run(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            f"/CN={name}",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
        )
        run(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            f"{name}.pem",
            *ext,
        )
    return {n: root / n for n in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")}


@dataclass
class NatsServer:
    root: Path
    hives: list[str]
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    certs: dict[str, Path] | None = None
    """With certificates (`make_certificates`), the server speaks TLS only and verifies clients."""

    @property
    def url(self) -> str:
        return f"{'tls' if self.certs else 'nats'}://127.0.0.1:{self.port}"

    def password(self, user: str) -> str:
        return f"pw-{user}-secret"

    def password_file(self, user: str) -> Path:
        path = self.root / f"{user}.pw"
        if not path.exists():
            path.write_text(self.password(user) + "\n")
            path.chmod(0o600)
        return path

    def write_config(self) -> Path:
        users = [f'{{ user: admin, password: "{self.password("admin")}" }}']
        users += [
            f'{{ user: {h}, password: "{self.password(h)}", permissions: {hive_permissions(h)} }}'
            for h in self.hives
        ]
        text = (
            f"listen: 127.0.0.1:{self.port}\n"
            f"server_name: hive-test-{self.port}\n"
            f'jetstream {{ store_dir: "{self.root / "js"}", max_memory_store: 64MB, max_file_store: 1GB }}\n'
            + (
                f'tls {{ cert_file: "{self.certs["server.pem"]}", key_file: "{self.certs["server.key"]}",'
                f' ca_file: "{self.certs["ca.pem"]}", verify: true, timeout: 2 }}\n'
                if self.certs
                else ""
            )
            + "accounts { HIVES: { jetstream: enabled, users: [\n  "
            + ",\n  ".join(users)
            + "\n] } }\n"
        )
        path = self.root / "nats.conf"
        path.write_text(text)
        return path

    def start(self, timeout: float = 15.0) -> None:
        conf = self.write_config()
        log = open(self.root / "nats.log", "ab")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen(
            [NATS_SERVER, "-c", str(conf)], stdout=log, stderr=log, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nats-server exited: {self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    if s.recv(7).startswith(b"INFO"):  # sent in clear text even with TLS
                        return
            except OSError:
                time.sleep(0.05)
        raise TimeoutError(f"nats-server did not come up: {self.log()}")

    def kill(self) -> None:
        """SIGKILL: no flush, no goodbye."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self) -> str:
        path = self.root / "nats.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""
