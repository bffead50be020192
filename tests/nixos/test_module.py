"""The NixOS module, checked structurally: every .nix file parses, and module.nix evaluated
against stand-in `lib`/`pkgs` (nixos-module/tests/fixture-*.nix) generates the units,
permissions and containers an operator relies on. This is not a NixOS boot: no NixOS host is
available here (see nixos-module/tests/vm-test.nix for that)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
NIX_INSTANTIATE = shutil.which("nix-instantiate")
pytestmark = pytest.mark.skipif(
    NIX_INSTANTIATE is None, reason="nix-instantiate (Debian nix-bin) not installed"
)


def nix(*args: str, tmp: Path) -> subprocess.CompletedProcess[str]:
    assert NIX_INSTANTIATE is not None
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp),
        "NIX_STATE_DIR": str(tmp / "nix-state"),  # no nix daemon or /nix here: keep it private
        "NIX_REMOTE": "",
    }
    return subprocess.run(
        [NIX_INSTANTIATE, "--option", "build-users-group", "", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def evaluate(tmp: Path, user: str = "{}") -> dict[str, Any]:
    out = nix(
        "--eval",
        "--strict",
        "--json",
        "--arg",
        "user",
        user,
        str(ROOT / "nixos-module/tests/eval.nix"),
        tmp=tmp,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return evaluate(tmp_path_factory.mktemp("nix"))


def test_every_nix_file_parses(tmp_path: Path) -> None:
    files = sorted(p for p in ROOT.rglob("*.nix") if ".venv" not in p.parts)
    assert ROOT / "nixos-module/module.nix" in files and ROOT / "flake.nix" in files
    for path in files:
        out = nix("--parse", str(path), tmp=tmp_path)
        assert out.returncode == 0, f"{path}: {out.stderr}"


def test_the_daemon_unit_runs_as_root_and_signals_readiness(generated: dict[str, Any]) -> None:
    unit = generated["systemd"]["services"]["hive-c0re"]
    service = unit["serviceConfig"]
    assert (service["Type"], service["User"], service["Restart"]) == (
        "notify",
        "root",
        "on-failure",
    )
    assert service["ExecStart"].split()[1:] == [
        "c0re",
        "--state-dir",
        "/var/lib/hyperhive",
        "--run-dir",
        "/run/hyperhive",
        "--config",
        "/nix/store/00000000000000000000000000000000-hive.toml",
    ]
    assert service["ExecStart"].split()[0].endswith("-hyperhive/bin/hive")
    assert "multi-user.target" in unit["wantedBy"]
    assert any(p.endswith("-nixos-container") for p in unit["path"])


def test_the_web_unit_is_unprivileged_and_hardened(generated: dict[str, Any]) -> None:
    service = generated["systemd"]["services"]["hive-web"]["serviceConfig"]
    assert service["User"] == "hive-web" != "root"
    assert service["ExecStart"].split()[1:] == [
        "web",
        "--run-dir",
        "/run/hyperhive",
        "--bind",
        "127.0.0.1:8765",
    ]
    assert service["NoNewPrivileges"] is True
    assert service["ProtectSystem"] == "strict"
    assert service["ProtectHome"] is True and service["PrivateTmp"] is True
    # AF_NETLINK for sock_diag: which local uid holds a connection to the dashboard
    assert service["RestrictAddressFamilies"] == ["AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"]
    assert service["CapabilityBoundingSet"] == "" and service["AmbientCapabilities"] == ""
    assert "/var/lib/hyperhive" in service["InaccessiblePaths"]
    user = generated["users"]["users"]["hive-web"]
    assert user["isSystemUser"] is True and user["group"] == "hive-web"


def test_socket_permissions_and_groups(generated: dict[str, Any]) -> None:
    rules = generated["systemd"]["tmpfiles"]["rules"]
    assert "d /run/hyperhive 0751 root root -" in rules
    assert "d /run/hyperhive/agents 0711 root root -" in rules
    assert "d /var/lib/hyperhive/shared 1777 root root -" in rules
    # the daemon's state is private (nixos backend: no agent uid needs to pass through)
    assert "d /var/lib/hyperhive 0700 root root -" in rules
    assert "d /var/lib/hyperhive/agents 0700 root root -" in rules
    assert generated["users"]["groups"]["hive-admin"]["members"] == ["ops"]
    hive = generated["hiveToml"]["hive"]
    # the daemon gives admin.sock to hive-admin and web.sock to hive-web (both 0660)
    assert (hive["admin_group"], hive["web_group"]) == ("hive-admin", "hive-web")
    assert (hive["backend"], hive["nixos_declarative"]) == ("nixos", True)


def test_hive_toml_carries_every_agent_in_the_daemons_own_keys(generated: dict[str, Any]) -> None:
    import msgspec

    from c0re_priv.config import HiveConfig

    parsed = msgspec.convert(generated["hiveToml"], HiveConfig)  # what the daemon would load
    assert set(parsed.agents) == {"boss", "alice", "bob"}
    assert parsed.agents["boss"].role == "manager" and parsed.agents["boss"].model == "opus"
    assert parsed.agents["alice"].allowed_recipients == ["boss"]
    assert parsed.agents["alice"].memory_mb == 2048
    assert parsed.agents["bob"].runtime == "scripted"
    assert parsed.hive.state_dir == "/var/lib/hyperhive" and parsed.hive.run_dir == "/run/hyperhive"


def test_each_agent_gets_a_container_with_its_state_and_shared_at_the_same_paths(
    generated: dict[str, Any],
) -> None:
    containers = generated["containers"]
    assert set(containers) == {"h-boss", "h-alice", "h-bob"}
    for name in ("boss", "alice", "bob"):
        c = containers[f"h-{name}"]
        assert c["autoStart"] is False  # the daemon starts and supervises it
        binds = c["bindMounts"]
        state = f"/var/lib/hyperhive/agents/{name}/state"
        assert binds[state] == {"hostPath": state, "isReadOnly": False}
        assert binds["/shared"] == {"hostPath": "/var/lib/hyperhive/shared", "isReadOnly": False}
        sock = f"/run/hyperhive/agents/{name}.sock"
        assert binds[sock]["hostPath"] == sock
        others = {p for p in binds if p.startswith("/run/")} - {sock}
        assert others == set(), "an agent sees only its own socket"
        harness = c["config"]["systemd"]["services"]["hive-agent"]
        assert harness["environment"]["HIVE_AGENT_SOCKET"] == sock
        exec_start = harness["serviceConfig"]["ExecStart"].split()
        assert exec_start[0].endswith("/bin/ag3nt") and exec_start[1:3] == ["serve", "--runtime"]
    manager = containers["h-boss"]["bindMounts"]
    assert manager["/var/lib/hyperhive/agents/alice/state"]["isReadOnly"] is True
    assert "/var/lib/hyperhive/agents/boss/state" not in containers["h-alice"]["bindMounts"]


def test_the_firewall_opens_only_when_asked(generated: dict[str, Any], tmp_path: Path) -> None:
    assert generated["networking"]["firewall"]["allowedTCPPorts"] == []
    opened = evaluate(
        tmp_path, '{ web = { openFirewall = true; port = 9000; listen = "0.0.0.0"; }; }'
    )
    assert opened["networking"]["firewall"]["allowedTCPPorts"] == [9000]
    assert opened["systemd"]["services"]["hive-web"]["serviceConfig"]["ExecStart"].endswith(
        "--bind 0.0.0.0:9000"
    )


def test_other_backends_and_a_disabled_web_generate_no_containers_and_no_web_unit(
    tmp_path: Path,
) -> None:
    bwrap = evaluate(tmp_path, '{ backend = "bwrap"; web.enable = false; }')
    assert bwrap["containers"] == {}
    assert "hive-web" not in bwrap["systemd"]["services"]
    assert bwrap["hiveToml"]["hive"]["nixos_declarative"] is False
    disabled = evaluate(tmp_path, "{ enable = false; }")
    assert disabled["containers"] == {} and "systemd" not in disabled
