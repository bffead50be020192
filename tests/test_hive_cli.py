"""The `hive` root: each package owns its commands, mounted lazily; the daemon's package
imports neither client, even to start them."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import typer

import hive_cli

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("c0re_priv", "c0re_web", "ag3nt")


def loaded_after(argv: list[str]) -> list[str]:
    """Which of our packages' modules `hive ARGV` has imported when it exits."""
    probe = (
        "import json, sys, hive_cli\n"
        "sys.argv = ['hive', *json.loads(sys.argv[1])]\n"
        "try:\n"
        "    hive_cli.main()\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(json.dumps(sorted(n for n in sys.modules if n.split('.')[0] in "
        f"{PACKAGES!r})))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe, json.dumps(argv)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    )
    return list(json.loads(out.stdout.splitlines()[-1]))


def test_the_root_lists_every_command_without_importing_one():
    assert loaded_after(["--help"]) == []


def test_a_ctl_command_loads_neither_client_nor_the_daemons_services(tmp_path: Path):
    loaded = loaded_after(["ctl", "ping", "--run-dir", str(tmp_path)])
    assert not [n for n in loaded if n.split(".")[0] in ("c0re_web", "ag3nt")], loaded
    heavy = {"c0re_priv.store", "c0re_priv.broker", "c0re_priv.hive", "c0re_priv.server"}
    assert heavy.isdisjoint(loaded), loaded


def test_hive_web_and_hive_agent_load_no_daemon_module():
    for argv in (["web", "--help"], ["agent", "serve", "--help"], ["agent", "mcp", "--help"]):
        loaded = loaded_after(argv)
        assert not [n for n in loaded if n.startswith("c0re_priv")], (argv, loaded)


def test_each_listed_help_line_is_the_commands_own():
    for name, (_, _, listed) in hive_cli.COMMANDS.items():
        command = hive_cli.load(name)
        assert command.help is not None, name
        assert " ".join(command.help.split()).startswith(listed), (name, command.help)


def test_the_root_mounts_exactly_what_the_packages_define():
    assert set(hive_cli.COMMANDS) == {"c0re", "up", "web", "ctl", "agent", "federation"}
    ctl = hive_cli.load("ctl")
    assert isinstance(ctl, typer.core.TyperGroup)
    # 37 verbs, the `agent` group (add, rm), and the operator controls: estop, thaw, inbox
    # and the `budget` group (set, reset, warn, dismiss)
    assert len(ctl.commands) == 42
    assert {"estop", "thaw", "inbox", "budget"} <= set(ctl.commands)


def test_the_daemon_package_imports_neither_client():
    offenders = []
    for path in (ROOT / "c0re_priv").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            offenders += [
                f"{path.relative_to(ROOT)} imports {n}"
                for n in names
                if n.split(".")[0] in ("c0re_web", "ag3nt", "hive_cli")
            ]
    assert offenders == []


def test_ctl_commands_take_no_ignored_state_dir():
    ctl = hive_cli.load("ctl")
    groups = [ctl, ctl.commands["agent"]]
    for group in groups:
        for name, command in group.commands.items():
            opts = {o for p in command.params for o in getattr(p, "opts", [])}
            assert "--state-dir" not in opts, name


def test_python_m_c0re_web_and_python_m_ag3nt_are_the_packages_own_apps():
    for module, expected in (("c0re_web", "web"), ("ag3nt", "serve")):
        got = subprocess.run(
            [sys.executable, "-m", module, "--help"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            check=True,
        )
        assert expected in got.stdout, (module, got.stdout)
