"""Another uid floods the dashboard's TCP port: the operator still gets in.

The dashboard listens on TCP, which every local uid can reach, agents included (a sandbox
shares the host's network unless `network = false`). Found for real against a running
hive: one process that opened 20,000 connections, each with half a request head, held them
all (uvicorn waits for a head without end) and the web process, at its file limit, refused
the operator's browser ("Too many open files"). Here the attacker is a process of a uid of
its own; `hive web` runs as it runs under `hive up`, with short limits so the test is quick.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from protocol import messages as m
from tests.c0re_web.test_browser import web_hive
from tests.security.conftest import needs_root, unused_uid

SYSTEM_PYTHON = Path("/usr/bin/python3")
PER_CLIENT = 8
REQUEST_SECONDS = 2.0
FLOOD = 300
HALF_OPEN = r"""
import json, socket, sys, time
port, n = int(sys.argv[1]), int(sys.argv[2])
socks = []
for _ in range(n):
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n" % port)  # and never the end
    socks.append(s)

def still_open():
    n = 0
    for s in socks:
        s.setblocking(False)
        try:
            n += s.recv(1) != b""
        except BlockingIOError:
            n += 1
        except OSError:
            pass
    return n

time.sleep(0.5)
print(json.dumps({"after_connect": still_open()}), flush=True)
sys.stdin.readline()  # the test says when to look again
print(json.dumps({"later": still_open()}), flush=True)
"""

pytestmark = [
    needs_root,
    pytest.mark.skipif(not SYSTEM_PYTHON.exists(), reason="the attacker needs /usr/bin/python3"),
]


def get(url: str, cookie: str = "") -> int:
    req = urllib.request.Request(url, headers={"Cookie": cookie} if cookie else {})
    with urllib.request.urlopen(req, timeout=5) as r:
        return int(r.status)


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        return None


def login(link: str) -> str:
    """The session cookie (`name=value`) a login link gives."""
    opener = urllib.request.build_opener(NoRedirect)
    try:
        opener.open(link, timeout=5)
    except urllib.error.HTTPError as redirect:
        assert redirect.code == 303
        set_cookie = redirect.headers["set-cookie"]
        return str(set_cookie.split(";", 1)[0])
    raise AssertionError("the login link did not redirect")


def test_a_flood_of_half_sent_requests_from_one_uid_does_not_lock_the_operator_out():
    attacker_uid = unused_uid()
    with web_hive(
        '[hive]\nautostart = false\nbackend = "process"\n\n[agents.alice]\n',
        web_args=(
            "--max-connections-per-client",
            str(PER_CLIENT),
            "--request-timeout",
            str(REQUEST_SECONDS),
        ),
    ) as hive:
        port = int(hive.base.rsplit(":", 1)[1])
        cookie = login(hive.new_link())
        # the operator's live stream, opened before the flood, must outlive the request timeout
        stream = urllib.request.urlopen(
            urllib.request.Request(
                f"{hive.base}/events?page=dashboard", headers={"Cookie": cookie}
            ),
            timeout=10,
        )
        attacker = subprocess.Popen(
            [
                shutil.which("setpriv") or "setpriv",
                f"--reuid={attacker_uid}",
                f"--regid={attacker_uid}",
                "--clear-groups",
                "--no-new-privs",
                "--",
                str(SYSTEM_PYTHON),
                "-c",
                HALF_OPEN,
                str(port),
                str(FLOOD),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert attacker.stdin is not None and attacker.stdout is not None
            first = json.loads(attacker.stdout.readline())
            # all but its share were closed at once; the operator is served meanwhile
            assert first["after_connect"] == PER_CLIENT, first
            assert get(f"{hive.base}/login") == 200
            assert get(f"{hive.base}/", cookie) == 200
            time.sleep(REQUEST_SECONDS + 1.5)
            attacker.stdin.write("\n")
            attacker.stdin.flush()
            later = json.loads(attacker.stdout.readline())
            assert later["later"] == 0, later  # the half-sent requests timed out
        finally:
            attacker.kill()
            attacker.wait(10)
        # the stream is still live: a message sent now arrives on it
        with hive.agent("alice") as alice:
            alice.expect(m.Send(to="operator", body="after the flood"), m.Sent)
        deadline = time.monotonic() + 10
        seen = b""
        while b"after the flood" not in seen and time.monotonic() < deadline:
            seen += stream.read1(65536)
        stream.close()
        assert b"after the flood" in seen
        log = (Path(hive.daemon.root) / "web.log").read_text()
        refusals = re.findall(rf"refused a connection from uid {attacker_uid}\b", log)
        assert len(refusals) == 1, log  # said once, not once per connection


def test_out_of_file_descriptors_the_web_process_says_so_once_and_recovers():
    """At its file limit, asyncio called its handler for every accept it tried, each with a
    traceback: the flood above wrote 1.8 million lines in a minute, enough to fill a disk.
    Here the per-client limit is lifted, the web process runs with a file limit of 64
    (`prlimit`), and 150 connections reach it: one warning, no traceback, and once
    they are gone the operator is served again."""
    with web_hive(
        '[hive]\nautostart = false\nbackend = "process"\n\n[agents.alice]\n',
        web_args=("--max-connections-per-client", "1000", "--request-timeout", "60"),
        web_wrapper=("prlimit", "--nofile=64:64", "--"),
    ) as hive:
        port = int(hive.base.rsplit(":", 1)[1])
        assert get(f"{hive.base}/login") == 200
        held = []
        try:
            for _ in range(150):  # ~50 accepted, the rest wait in the listen backlog (128)
                held.append(socket.create_connection(("127.0.0.1", port), timeout=5))
            time.sleep(3)
        finally:
            for s in held:
                s.close()
        deadline = time.monotonic() + 15
        while True:
            try:
                assert get(f"{hive.base}/login") == 200
                break
            except (OSError, AssertionError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        log = (Path(hive.daemon.root) / "web.log").read_text()
        said = re.findall(r"cannot accept connections: \[Errno 24\]", log)
        assert len(said) == 1, log[-3000:]
        assert "out of system resource" not in log and "Traceback" not in log
