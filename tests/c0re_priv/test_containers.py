"""Container backends with real sandboxes: what an agent can and cannot see, and its limits."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import trio

from c0re_priv.containers import ContainerSpec, Limits
from c0re_priv.containers.bwrap import BwrapBackend, bwrap_argv
from c0re_priv.containers.cgroups import Cgroups
from c0re_priv.containers.nixos import NixosBackend
from c0re_priv.containers.process import ProcessBackend
from c0re_priv.lifecycle import _interpreter_paths

needs_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (uid drop, cgroups)")

PROBE = textwrap.dedent(
    """
    import json, os, sys
    def can(op, path):
        try:
            if op == "read":
                if os.path.isdir(path):
                    os.listdir(path)
                else:
                    open(path).read()
            else:
                with open(path, "w") as fh:
                    fh.write("x")
            return True
        except OSError:
            return False
    print(json.dumps({
        "uid": os.getuid(),
        "pid": os.getpid(),
        "hostname": os.uname().nodename,
        "checks": {f"{op} {p}": can(op, p) for op, p in json.loads(sys.argv[1])},
    }))
    """
)


def make_spec(root: Path, name: str, command: list[str], **kw: object) -> ContainerSpec:
    agents = root / "state" / "agents"
    state = agents / name / "state"
    state.mkdir(parents=True, exist_ok=True)
    sock = root / "run" / "agents" / f"{name}.sock"
    sock.parent.mkdir(parents=True, exist_ok=True)
    sock.touch()
    shared = root / "state" / "shared"
    shared.mkdir(parents=True, exist_ok=True)
    os.chmod(shared, 0o1777)
    return ContainerSpec(
        name=name,
        role=str(kw.pop("role", "agent")),
        command=command,
        socket=sock,
        state_dir=state,
        log_file=agents / name / "harness.log",
        shared_dir=shared,
        hide=(root / "state", root / "run"),
        **kw,  # type: ignore[arg-type]
    )


async def run_probe(spec: ContainerSpec, backend: BwrapBackend | ProcessBackend) -> dict:
    await backend.create(spec)
    status = await backend.run(spec, None)
    assert status == 0, spec.log_file.read_text()
    import json

    return json.loads(spec.log_file.read_text().strip().splitlines()[-1])


def probe_command(checks: list[tuple[str, str]]) -> list[str]:
    import json

    return [sys.executable, "-c", PROBE, json.dumps(checks)]


def test_bwrap_argv_hides_daemon_state_and_binds_only_what_the_agent_owns(short_tmp):
    spec = make_spec(short_tmp, "alice", ["harness"], uid=61000, gid=61000, network=False)
    argv = bwrap_argv(spec)
    joined = " ".join(argv)
    assert "--unshare-pid" in argv and "--unshare-ipc" in argv and "--unshare-net" in argv
    assert f"--tmpfs {short_tmp / 'state'}" in joined and f"--tmpfs {short_tmp / 'run'}" in joined
    assert f"--bind {spec.state_dir} {spec.state_dir}" in joined
    assert f"--bind {spec.socket} {spec.socket}" in joined
    assert f"--bind {spec.shared_dir} /shared" in joined
    assert "--ro-bind /root" not in joined and "--ro-bind /home" not in joined
    # the uid drop happens inside the sandbox, with every capability gone
    tail = argv[argv.index("--") + 1 :]
    assert tail[:3] == ["setpriv", "--reuid=61000", "--regid=61000"]
    assert "--bounding-set=-all" in tail and tail[-1] == "harness"


@needs_bwrap
@needs_root
async def test_agents_see_only_their_own_state_the_manager_sees_all_and_shared_is_shared(short_tmp):
    backend = BwrapBackend(ro_extra=_interpreter_paths())
    alice_state = short_tmp / "state" / "agents" / "alice" / "state"
    bob_state = short_tmp / "state" / "agents" / "bob" / "state"
    for state, uid in ((alice_state, 61001), (bob_state, 61002)):
        state.mkdir(parents=True)
        os.chown(state, uid, uid)
        os.chmod(state, 0o755)  # as the roster makes it, whatever the umask
        (state / "notes.md").write_text("private")
        os.chown(state / "notes.md", uid, uid)
        os.chmod(state / "notes.md", 0o644)  # what the manager's check assumes, whatever the umask
    db = short_tmp / "state" / "hive.sqlite"
    db.write_text("secret")
    checks = [
        ("read", str(alice_state / "notes.md")),
        ("write", str(alice_state / "new.md")),
        ("read", str(bob_state / "notes.md")),
        ("write", str(bob_state / "evil.md")),
        ("write", "/shared/from-alice.md"),
        ("read", str(db)),
        ("read", "/etc/shadow"),
        ("write", "/usr/evil"),
    ]
    alice = await run_probe(
        make_spec(short_tmp, "alice", probe_command(checks), uid=61001, gid=61001), backend
    )
    assert alice["uid"] == 61001
    assert alice["hostname"] == "h-alice"
    assert alice["pid"] < 10  # its own pid namespace
    assert alice["checks"] == {
        f"read {alice_state / 'notes.md'}": True,
        f"write {alice_state / 'new.md'}": True,
        f"read {bob_state / 'notes.md'}": False,
        f"write {bob_state / 'evil.md'}": False,
        "write /shared/from-alice.md": True,
        f"read {db}": False,
        "read /etc/shadow": False,
        "write /usr/evil": False,
    }
    manager_checks = [
        ("read", str(alice_state / "notes.md")),
        ("read", str(bob_state / "notes.md")),
        ("write", str(bob_state / "evil.md")),
        ("read", "/shared/from-alice.md"),
    ]
    boss = await run_probe(
        make_spec(
            short_tmp,
            "boss",
            probe_command(manager_checks),
            role="manager",
            uid=61003,
            gid=61003,
            peers=(alice_state, bob_state),
        ),
        backend,
    )
    # the manager reads both agents' state (files are 0644 here) but cannot write it
    assert boss["checks"] == {
        f"read {alice_state / 'notes.md'}": True,
        f"read {bob_state / 'notes.md'}": True,
        f"write {bob_state / 'evil.md'}": False,
        "read /shared/from-alice.md": True,
    }
    assert not (bob_state / "evil.md").exists()


@needs_bwrap
@needs_root
async def test_a_state_dir_inside_the_code_checkout_still_works_and_stays_hidden(short_tmp):
    """`HIVE_STATE_DIR=$PWD/state ./up.sh`: the hive's state and run dirs inside the checkout,
    which every sandbox binds read-only as the harness's code. Bound after the state dir's
    hiding tmpfs, the checkout uncovered the host's state dir (0700 root), so the agent's uid
    could not reach its own state dir: every harness failed on its first file and no message
    was ever delivered (found running `./up.sh` from a fresh clone). Now deeper mounts land on
    top: the agent's own dir works, the daemon's files stay hidden."""
    checkout = short_tmp / "checkout"
    hive = checkout / "hive"
    alice_state = hive / "state" / "agents" / "alice" / "state"
    alice_state.mkdir(parents=True)
    for d in (hive / "state", hive / "state" / "agents", hive / "state" / "agents" / "alice"):
        os.chmod(d, 0o700)  # as the daemon makes them
    os.chown(alice_state, 61004, 61004)
    os.chmod(alice_state, 0o755)
    db = hive / "state" / "hive.sqlite"
    db.write_text("secret")
    (checkout / "code.py").write_text("print('code')")
    # explicit modes: an in-process daemon test before this one leaves the worker's umask 077
    os.chmod(checkout / "code.py", 0o644)
    os.chmod(hive, 0o755)
    os.chmod(checkout, 0o755)
    checks = [
        ("write", str(alice_state / "notes.md")),
        ("read", str(alice_state / "notes.md")),
        ("read", str(checkout / "code.py")),
        ("read", str(db)),
        ("read", str(hive / "state")),
    ]
    backend = BwrapBackend(ro_extra=(*_interpreter_paths(), checkout))
    spec = make_spec(hive, "alice", probe_command(checks), uid=61004, gid=61004)
    probe = await run_probe(spec, backend)
    assert probe["checks"] == {
        f"write {alice_state / 'notes.md'}": True,
        f"read {alice_state / 'notes.md'}": True,
        f"read {checkout / 'code.py'}": True,
        f"read {db}": False,  # a tmpfs hides the daemon's state dir
        f"read {hive / 'state'}": True,  # the tmpfs, with only the agent's own dir in it
    }


@needs_root
async def test_a_memory_hungry_agent_is_held_to_its_limit(short_tmp):
    cgroups = Cgroups()
    if cgroups.version() is None:
        pytest.skip("no cgroup controllers on this host")
    hog = [sys.executable, "-c", "x = bytearray(400 * 1024 * 1024); print('survived')"]
    spec = make_spec(short_tmp, "hog", hog, limits=Limits(memory_bytes=64 * 1024 * 1024, pids=64))
    applied = cgroups.prepare("hog", spec.limits)
    assert applied.enter is not None, applied.description
    assert applied.description.startswith("memory=64MiB pids=64")
    try:
        status = await ProcessBackend().run(spec, applied.enter)
    finally:
        cgroups.remove(applied)
    assert status != 0
    assert "survived" not in spec.log_file.read_text()
    # the same program without the limit runs fine: the limit, not the program, stopped it
    free = make_spec(short_tmp, "free", hog)
    assert await ProcessBackend().run(free, None) == 0


def test_limits_that_cannot_be_applied_say_so(tmp_path):
    none = Cgroups(root=tmp_path).prepare("a", Limits())
    assert none.description == "none configured"
    missing = Cgroups(root=tmp_path).prepare("a", Limits(memory_bytes=1 << 26))
    assert missing.description.startswith("not applied")
    assert missing.enter is None


async def test_process_backend_stops_a_child_that_ignores_sigterm_after_the_grace(short_tmp):
    stubborn = [
        sys.executable,
        "-c",
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(60)",
    ]
    spec = make_spec(short_tmp, "stubborn", stubborn, grace_seconds=0.5)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            pid = await nursery.start(ProcessBackend().run, spec, None)
            await trio.sleep(0.3)
            nursery.cancel_scope.cancel()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


STAND_IN_NIXOS = """#!/usr/bin/env python3
# TEST STAND-IN for nixos-container (no NixOS host here): records argv, keeps a tiny state file.
import json, os, sys
log, state_file = os.environ["STANDIN_LOG"], os.environ["STANDIN_STATE"]
with open(log, "a") as fh:
    fh.write(json.dumps(sys.argv[1:]) + "\\n")
state = json.load(open(state_file)) if os.path.exists(state_file) else {}
cmd, rest = sys.argv[1], sys.argv[2:]
if cmd == "list":
    print("\\n".join(state))
elif cmd in ("create", "update"):
    assert rest[1] == "--config-file" and os.path.exists(rest[2]), rest
    state.setdefault(rest[0], "down")
elif cmd == "start":
    state[rest[0]] = "up"
elif cmd == "stop":
    state[rest[0]] = "down"
elif cmd == "status":
    print(state.get(rest[0], "down"))
elif cmd == "destroy":
    state.pop(rest[0], None)
else:
    sys.exit(f"unknown command {cmd}")
if cmd not in ("list", "status"):  # readers run concurrently: write only on change, atomically
    json.dump(state, open(state_file + ".tmp", "w"))
    os.replace(state_file + ".tmp", state_file)
"""


async def test_nixos_backend_drives_nixos_container(short_tmp, monkeypatch):
    binary = short_tmp / "nixos-container"
    binary.write_text(STAND_IN_NIXOS)
    binary.chmod(binary.stat().st_mode | stat.S_IEXEC)
    log = short_tmp / "argv.jsonl"
    monkeypatch.setenv("STANDIN_LOG", str(log))
    monkeypatch.setenv("STANDIN_STATE", str(short_tmp / "containers.json"))
    backend = NixosBackend(binary=str(binary))
    spec = make_spec(short_tmp, "alice", ["hive", "agent", "serve"])
    await backend.create(spec)
    await backend.create(spec)  # the second time it updates
    config = (spec.state_dir.parent / "agent.nix").read_text()
    assert 'networking.hostName = "h-alice"' in config
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(backend.run, spec, None)
            assert await backend.status(spec) == "up"
            nursery.cancel_scope.cancel()
    assert await backend.status(spec) == "down"
    await backend.destroy(spec)
    import json

    calls = [
        json.loads(line)[:2]
        for line in log.read_text().splitlines()
        if not line.startswith('["list"') and not line.startswith('["status"')
    ]
    assert calls == [
        ["create", "h-alice"],
        ["update", "h-alice"],
        ["start", "h-alice"],
        ["stop", "h-alice"],
        ["destroy", "h-alice"],
    ]
    if shutil.which("nix-instantiate"):
        parsed = subprocess.run(
            ["nix-instantiate", "--parse", str(spec.state_dir.parent / "agent.nix")],
            capture_output=True,
            text=True,
        )
        assert parsed.returncode == 0, parsed.stderr


async def test_a_harness_that_cannot_even_be_executed_fails_the_agent_not_the_daemon(
    short_tmp, monkeypatch, nursery
):
    from functools import partial

    from c0re_priv import lifecycle
    from c0re_priv.daemon import run_hive
    from protocol import messages as m
    from protocol.client import HiveClient
    from tests.conftest import make_config, paths_in

    missing = short_tmp / "no-such-interpreter"
    monkeypatch.setattr(lifecycle, "harness_command", lambda *a: [str(missing), "agent", "serve"])
    config = make_config(max_restarts=1, agents={"boss": {"role": "manager"}, "alice": {}})
    hive = await nursery.start(
        partial(
            run_hive,
            config,
            paths_in(short_tmp, config),
            handle_signals=False,
            backend=ProcessBackend(),
        )
    )
    async with HiveClient.connect(str(hive.paths.admin_sock)) as admin:
        await admin.expect(m.Start(name="alice"), m.AgentInfo)
        with trio.fail_after(30):
            while not (
                row := (await admin.expect(m.AgentStatus(name="alice"), m.AgentInfo)).agent
            ).failed:
                await trio.sleep(0.05)
        assert row.container == "failed"
        log = (hive.paths.agents_root / "alice" / "harness.log").read_text()
        assert "could not run the container" in log and str(missing) in log
        await admin.expect(m.Ping(), m.Pong)  # the daemon is still serving


async def test_claude_agents_inherit_the_operators_login_and_their_env(
    short_tmp, monkeypatch, nursery
):
    import msgspec

    from c0re_priv.config import AgentConfig
    from c0re_priv.daemon import run_hive
    from tests.conftest import make_config, paths_in

    creds = short_tmp / "operator-creds.json"
    creds.write_text('{"claudeAiOauth": {"accessToken": "tok"}}')
    monkeypatch.setenv("CLAUDE_CODE_OAUTH_TOKEN", "from-the-daemon")
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    config = make_config(
        claude_credentials=str(creds),
        agents={
            "cl": {"runtime": "claude", "env": {"EXTRA": "1"}},
            "sc": {"runtime": "scripted"},
            "own": {"runtime": "claude"},
        },
    )
    paths = paths_in(short_tmp, config)
    own = paths.agent_state("own") / ".claude"
    own.mkdir(parents=True)
    (own / ".credentials.json").write_text("the agent's own login")
    hive = await nursery.start(partial_run(run_hive, config, paths))
    lifecycle = hive.lifecycle
    copied = paths.agent_state("cl") / ".claude" / ".credentials.json"
    assert copied.read_text() == creds.read_text()
    assert copied.stat().st_mode & 0o777 == 0o600
    if os.geteuid() == 0:
        assert copied.stat().st_uid == hive.registry.get("cl").uid
    assert (own / ".credentials.json").read_text() == "the agent's own login"
    assert not (paths.agent_state("sc") / ".claude").exists()
    cl_env = lifecycle.spec("cl").env
    assert cl_env["CLAUDE_CODE_OAUTH_TOKEN"] == "from-the-daemon" and cl_env["EXTRA"] == "1"
    assert "ANTHROPIC_API_KEY" not in cl_env
    assert "CLAUDE_CODE_OAUTH_TOKEN" not in lifecycle.spec("sc").env
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"env": {"HIVE_AGENT_SOCKET": "/elsewhere"}}, AgentConfig)

    # a token the operator gives one agent wins over the daemon's, is kept root-only, never echoed
    from protocol import messages as m
    from protocol.client import HiveClient

    async with HiveClient.connect(str(paths.admin_sock)) as admin:
        row = (
            await admin.expect(m.SetAgentLogin(name="cl", token="sk-ant-oat-given"), m.AgentInfo)
        ).agent
        assert row.has_login_token and "sk-ant-oat-given" not in msgspec.json.encode(row).decode()
        token_file = lifecycle.login_token_file("cl")
        assert token_file.stat().st_mode & 0o777 == 0o600
        assert token_file.parent.stat().st_mode & 0o777 == 0o700
        assert not token_file.is_relative_to(paths.agents_root)
        assert lifecycle.spec("cl").env["CLAUDE_CODE_OAUTH_TOKEN"] == "sk-ant-oat-given"
        row = (await admin.expect(m.SetAgentLogin(name="cl", token=None), m.AgentInfo)).agent
        assert not row.has_login_token and not token_file.exists()
        assert lifecycle.spec("cl").env["CLAUDE_CODE_OAUTH_TOKEN"] == "from-the-daemon"
        with pytest.raises(Exception, match="invalid"):
            await admin.expect(m.SetAgentLogin(name="cl", token="has spaces in it"), m.AgentInfo)


def partial_run(run_hive, config, paths):
    from functools import partial

    return partial(run_hive, config, paths, handle_signals=False)


async def test_declared_nixos_containers_are_only_started_and_stopped(short_tmp, monkeypatch):
    import json

    from c0re_priv.errors import Fail

    binary = short_tmp / "nixos-container"
    binary.write_text(STAND_IN_NIXOS)
    binary.chmod(binary.stat().st_mode | stat.S_IEXEC)
    log = short_tmp / "argv.jsonl"
    state = short_tmp / "containers.json"
    monkeypatch.setenv("STANDIN_LOG", str(log))
    monkeypatch.setenv("STANDIN_STATE", str(state))
    backend = NixosBackend(binary=str(binary), declarative=True)
    undeclared = make_spec(short_tmp, "bob", ["hive", "agent", "serve"])
    with pytest.raises(Fail, match=r"services\.hyperhive\.agents\.bob"):
        await backend.create(undeclared)
    state.write_text(json.dumps({"h-alice": "up"}))  # declared, and left running by a daemon before
    spec = make_spec(short_tmp, "alice", ["hive", "agent", "serve"])
    await backend.create(spec)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(backend.run, spec, None)
            nursery.cancel_scope.cancel()
    await backend.destroy(spec)
    calls = [json.loads(line)[:2] for line in log.read_text().splitlines()]
    changes = [c for c in calls if c[0] not in ("list", "status")]
    # restarted so its socket bind is fresh; never created, updated or destroyed
    assert changes == [["stop", "h-alice"], ["start", "h-alice"], ["stop", "h-alice"]]
    assert not (spec.state_dir.parent / "agent.nix").exists()


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed")
async def test_stopping_a_sandbox_signals_its_harness_and_leaves_nothing_behind(short_tmp):
    from c0re_priv.containers.base import _start_time, _stat, descendants

    def alive(pid: int, started: str) -> bool:  # a zombie waiting for its reaper is gone
        fields = _stat(pid)
        return _start_time(pid) == started and fields is not None and fields[0] != "Z"

    script = 'trap "echo got-term > $HOME/stopped; exit 0" TERM; sleep 300 & sleep 300 & wait'
    spec = make_spec(short_tmp, "alice", ["sh", "-c", script], grace_seconds=10)
    backend = BwrapBackend()
    await backend.create(spec)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            pid = await nursery.start(backend.run, spec, None)
            while len(inside := descendants(pid)) < 4:  # bwrap's init, sh, two sleeps
                await trio.sleep(0.05)
            nursery.cancel_scope.cancel()
    # the harness was asked, not shot: its trap ran
    assert (spec.state_dir / "stopped").read_text().strip() == "got-term"
    # and nothing of the sandbox outlived it (its sleeps ignore the shell's exit)
    with trio.fail_after(5):
        while survivors := [p for p, started in inside.items() if alive(p, started)]:
            await trio.sleep(0.05)
    assert survivors == []
