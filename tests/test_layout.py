"""The shape of the project: who may import whom, and docs that cannot drift from the code."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import msgspec.inspect as mi

from c0re_priv.config import AgentConfig, BudgetSettings, HiveSettings
from c0re_priv.handlers import STREAMING, UNARY
from protocol import docgen
from protocol import messages as m

ROOT = Path(__file__).resolve().parent.parent
UNPRIVILEGED = ("c0re_web", "ag3nt", "protocol")


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


# The daemon package bottom-up: a module may import only modules listed before it. `hive` is
# the wiring; below it are the services, each built from narrow dependencies, above it the
# reads across services, the verb tables, the transport and the commands.
_DAEMON_ORDER = """
__init__ config errors events log_once migrations safe_fs rate_limit federation_outbox
meta_repo containers.host containers.spawn containers.uids private_state store attachments
nats_link containers.base containers.bwrap containers.nixos containers.process
containers.cgroups containers open_threads registry roster broker agent_files tombstones questions
reminders forge_git forge merge_requests lifecycle federation agent_configs meta_inputs approvals
holds estop budgets escalation
hive
inbox snapshot handlers.base handlers.session handlers.events handlers.messaging handlers.questions
handlers.reminders handlers.lifecycle handlers.approvals handlers.dashboard handlers.federation
handlers.forge handlers.operator_controls handlers server host_sock daemon up ctl.common
ctl.agents ctl.events ctl.messaging ctl.questions ctl.reminders ctl.operator_controls
ctl.lifecycle ctl.approvals ctl.tombstones ctl.meta_inputs ctl.federation ctl.forge ctl
cli __main__
"""
DAEMON_ORDER = _DAEMON_ORDER.split()


def daemon_imports() -> dict[str, set[str]]:
    """c0re_priv's modules and the c0re_priv modules each imports (TYPE_CHECKING and
    function-level imports included), as dotted names relative to the package."""
    root = ROOT / "c0re_priv"
    graph: dict[str, set[str]] = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(root).with_suffix("").parts)
        package = parts[:-1]
        if parts[-1] == "__init__":
            parts = parts[:-1] or ["__init__"]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level == 0:
                if node.module and node.module.startswith("c0re_priv."):
                    deps.add(node.module.removeprefix("c0re_priv."))
                continue
            base = package[: len(package) - (node.level - 1)]
            if node.module:
                deps.add(".".join([*base, node.module]))
            else:
                deps.update(".".join([*base, alias.name]) for alias in node.names)
        graph[".".join(parts)] = deps
    return graph


def test_the_daemon_package_imports_bottom_up():
    graph = daemon_imports()
    assert set(graph) == set(DAEMON_ORDER), "place new modules in DAEMON_ORDER"
    rank = {name: i for i, name in enumerate(DAEMON_ORDER)}
    upward = sorted(
        (module, dep) for module, deps in graph.items() for dep in deps if rank[dep] >= rank[module]
    )
    assert upward == []


def test_nothing_below_the_wiring_imports_it():
    """No service is handed the whole `Hive` (it could not name the type): each is built
    from the narrow dependencies it needs."""
    graph = daemon_imports()
    below = DAEMON_ORDER[: DAEMON_ORDER.index("hive")]
    assert [module for module in below if "hive" in graph[module]] == []


def test_unprivileged_packages_never_import_the_daemon():
    offenders = []
    for package in UNPRIVILEGED:
        for path in (ROOT / package).rglob("*.py"):
            for name in imported_modules(path):
                if name == "c0re_priv" or name.startswith("c0re_priv."):
                    offenders.append(f"{path.relative_to(ROOT)} imports {name}")
    assert offenders == []


def test_importing_the_harness_and_web_loads_no_daemon_module():
    code = (
        "import sys, pkgutil, importlib\n"
        "for pkg in ('protocol', 'ag3nt', 'c0re_web'):\n"
        "    mod = importlib.import_module(pkg)\n"
        "    for info in pkgutil.walk_packages(mod.__path__, pkg + '.'):\n"
        "        if not info.name.endswith('__main__'):\n"
        "            importlib.import_module(info.name)\n"
        "print(sorted(n for n in sys.modules if n.split('.')[0] == 'c0re_priv'))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert out.stdout.strip() == "[]"


def test_every_verb_has_exactly_one_handler():
    verbs = {t for types in m.ROLE_REQUESTS.values() for t in types}
    assert set(UNARY) | set(STREAMING) == verbs
    assert not set(UNARY) & set(STREAMING)


def test_each_verb_has_one_row_whose_roles_are_the_decoders():
    """The verb tables say who may send each verb next to its handler; the role unions in
    `protocol.messages` decide it on the socket. The two must say the same thing."""
    from c0re_priv.handlers import TABLE

    requests = [row.request for row in TABLE]
    assert len(requests) == len(set(requests)), "a verb with two rows"
    for row in TABLE:
        decoded_by = {role for role, types in m.ROLE_REQUESTS.items() if row.request in types}
        assert row.roles == decoded_by, row.request.__name__


def test_handlers_leave_reply_ids_to_the_transport():
    for path in (ROOT / "c0re_priv").rglob("*.py"):
        if path.name == "server.py":  # the transport, and errors about undecodable calls
            continue
        assert "id=0" not in path.read_text(), path


def test_every_wire_shape_of_a_feature_module_is_re_exported():
    """`protocol.messages` is split by feature; `from protocol import messages as m` still
    names every Struct (the round-trip and docs tests find them there)."""
    import importlib
    import pkgutil

    import msgspec

    for info in pkgutil.iter_modules(m.__path__, m.__name__ + "."):
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if (
                isinstance(obj, type)
                and issubclass(obj, msgspec.Struct)
                and obj.__module__ == info.name
            ):
                assert getattr(m, name, None) is obj, f"{info.name}.{name} not re-exported"


def test_op_tags_are_unique_within_each_role():
    for role, types in m.ROLE_REQUESTS.items():
        ops = [m.op_of(t) for t in types]
        assert len(ops) == len(set(ops)), role


def test_protocol_reference_is_generated_from_the_structs():
    assert (ROOT / "docs" / "protocol.md").read_text() == docgen.render(), (
        "docs/protocol.md is stale: run `python -m protocol.docgen > docs/protocol.md`"
    )


def test_every_federation_key_is_documented():
    from c0re_priv.config import FederationSettings

    doc = (ROOT / "docs" / "federation.md").read_text()
    info = mi.type_info(FederationSettings)
    assert isinstance(info, mi.StructType)
    for field in info.fields:
        assert re.search(rf"^\| `{field.encode_name}` \|", doc, re.M), (
            f"[federation] {field.encode_name} undocumented in docs/federation.md"
        )


def test_every_forge_key_is_documented():
    from c0re_priv.config import ForgeSettings

    doc = (ROOT / "docs" / "forge.md").read_text()
    info = mi.type_info(ForgeSettings)
    assert isinstance(info, mi.StructType)
    for field in info.fields:
        assert re.search(rf"^\| `{field.encode_name}` \|", doc, re.M), (
            f"[forge] {field.encode_name} undocumented in docs/forge.md"
        )


def test_every_config_key_is_documented():
    doc = (ROOT / "docs" / "operating.md").read_text()
    for cls in (HiveSettings, AgentConfig, BudgetSettings, m.BudgetLimits):
        info = mi.type_info(cls)
        assert isinstance(info, mi.StructType)
        for field in info.fields:
            assert re.search(rf"`{field.encode_name}`", doc), (
                f"{cls.__name__}.{field.encode_name} undocumented"
            )


def test_every_reply_struct_is_in_the_reply_union():
    import typing

    from protocol import messages as m

    declared = {
        cls
        for cls in vars(m).values()
        if isinstance(cls, type) and issubclass(cls, m.Reply) and cls is not m.Reply
    }
    assert declared - set(typing.get_args(m.AnyReply)) == set()


def test_the_host_sock_doc_names_every_cmd_and_every_field():
    from protocol import host_v1 as h

    doc = (ROOT / "docs" / "host-sock.md").read_text()
    for cls in (
        *h.HOST_REQUESTS,
        h.Scope,
        h.HostResponse,
        h.AgentStatusRow,
        h.HiveUrls,
        h.Approval,
    ):
        info = mi.type_info(cls)
        assert isinstance(info, mi.StructType)
        tag = info.tag
        assert tag is None or f"`{tag}`" in doc, f"cmd {tag} undocumented"
        for field in info.fields:
            assert f"`{field.encode_name}`" in doc, (
                f"{cls.__name__}.{field.encode_name} undocumented"
            )


def test_what_runs_inside_a_container_never_imports_the_daemon(tmp_path: Path):
    """The harness command the daemon launches and the MCP server command the claude runtime
    writes into `--mcp-config`, each run through its real entry point (`python -m ag3nt`) up to
    the event loop, load no `c0re_priv` module."""
    from ag3nt.runtimes.base import AgentContext
    from ag3nt.runtimes.claude import ClaudeRuntime
    from c0re_priv.lifecycle import harness_command

    sock = tmp_path / "alice.sock"
    ctx = AgentContext(
        name="alice",
        role="agent",
        model="",
        socket=sock,
        state_dir=tmp_path / "alice",
        ag3nt_command=[sys.executable, "-m", "ag3nt"],
    )
    runtime = ClaudeRuntime(ctx)
    runtime._write_mcp_config()
    server = json.loads(runtime.mcp_config.read_text())["mcpServers"]["hyperhive"]
    commands = {
        "harness (claude)": harness_command("claude", sock, None),
        "harness (scripted)": harness_command("scripted", sock, tmp_path / "rules.toml"),
        "mcp server": [server["command"], *server["args"]],
    }
    probe = (
        "import json, runpy, sys, anyio\n"
        "argv = json.loads(sys.argv[1])\n"
        "assert argv[1:3] == ['-m', 'ag3nt'], argv\n"
        "ran = []\n"
        "anyio.run = lambda fn, *a, **k: ran.append(fn)  # stop at the event loop\n"
        "import ag3nt.serve\n"
        "if '--runtime' in argv:  # the runtime the harness would build\n"
        "    assert ag3nt.serve.make_runtime(argv[argv.index('--runtime') + 1])\n"
        "sys.argv = ['ag3nt', *argv[3:]]\n"
        "try:\n"
        "    runpy.run_module('ag3nt', run_name='__main__')\n"
        "except SystemExit as exc:\n"
        "    assert not exc.code, exc.code\n"
        "assert ran, 'the command never reached its event loop'\n"
        "print(json.dumps(sorted(n for n in sys.modules if n.split('.')[0] == 'c0re_priv')))\n"
    )
    for what, argv in commands.items():
        assert argv[0] == sys.executable and argv[1:3] == ["-m", "ag3nt"], (what, argv)
        out = subprocess.run(
            [sys.executable, "-c", probe, json.dumps(argv)],
            capture_output=True,
            text=True,
            cwd=ROOT,
            check=False,
        )
        assert out.returncode == 0, (what, out.stderr)
        assert json.loads(out.stdout.splitlines()[-1]) == [], what


def test_hive_agent_is_an_alias_of_python_m_ag3nt():
    got = subprocess.run(
        [sys.executable, "-m", "hive_cli", "agent", "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    )
    assert "serve" in got.stdout and "mcp" in got.stdout and "hive agent" in got.stdout
