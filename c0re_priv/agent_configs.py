"""Every agent's config as the meta repo holds it, and which commit each agent runs.

`agents/<name>/agent.toml` on the meta repo's `main` is what an agent should run; its
*deployed* commit (sqlite `agents.deployed_sha`, shown as `AgentRow.deployed_sha`) is what it
runs, and `needs_update` says the two differ. While the daemon runs, `hive.config.agents[name]` (this service's `agents`)
holds the deployed agent.toml with hive.toml's `env` laid over it, so the container
supervisor, the reminder limits and the config view all read one place. hive.toml's
`[agents.*]` only seed the repo for agents it does not hold yet, and their `env` never enters
git: it may hold credentials, and the manager reads the repo.

The manager never writes `main` or a deploy. `propose` commits on a `proposals/<name>` branch
for it; only the operator's acts (an approval, adding an agent, a rebuild) move `main` or
what an agent runs, through `apply`, `spawn`, `init_config`, `adopt` and `sync_from_main`.
"""

from __future__ import annotations

import difflib
import logging
import os
import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, get_args

import msgspec
import trio
from msgspec import Meta

from protocol import messages as m

from .config import AgentConfig, HiveSettings, Paths
from .containers.nixos import render_agent_nix
from .errors import Fail
from .events import EventBus
from .lifecycle import Lifecycle, read_tail
from .meta_repo import GitError, MetaRepo
from .registry import Registry
from .roster import Roster
from .store import Store

log = logging.getLogger(__name__)
RUNTIMES: tuple[str, ...] = get_args(m.Runtime)
DEPLOY_WAIT = 60.0
"""How long a deploy waits for the rebuilt (or spawned) agent's harness to report in."""
LOG_TAIL = 20
DIFF_MAX = 65_536


class AgentToml(AgentConfig, kw_only=True, forbid_unknown_fields=True):
    """`agents/<name>/agent.toml`: the `[agents.<name>]` keys of hive.toml, and two more."""

    description: Annotated[str, Meta(max_length=2000)] = ""
    """What the agent is for (a spawn request's `role_description`)."""
    parent: Annotated[str, Meta(max_length=31)] = ""
    """The manager that asked for it, when it was spawned."""


class DeployFailed(Exception):
    """Carrying out an approved change failed; the message says why (with a log tail)."""


@dataclass(frozen=True)
class Deployed:
    sha: str
    blob: str
    """The blob id of its agent.toml at `sha` (compared with `main`'s for `needs_update`)."""
    config: AgentToml
    """As committed (without hive.toml's `env`)."""


@dataclass(frozen=True)
class PreparedApply:
    sha: str
    base: str
    diff: str
    description: str


def toml_path(name: str) -> str:
    return f"agents/{name}/agent.toml"


def agent_dir(name: str) -> str:
    return f"agents/{name}/"


def instructions_path(name: str) -> str:
    return f"agents/{name}/instructions.md"


def nix_path(name: str) -> str:
    """Generated from the deployed config (nixos backend): never proposed, never diffed."""
    return f"agents/{name}/agent.nix"


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return msgspec.json.encode(value).decode()
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"no TOML form for {type(value).__name__}")


def render(cfg: AgentToml, name: str, kept_env: list[str] | None = None) -> str:
    """agent.toml text with every key written out, so editing one means changing one line."""
    lines = [
        f"# {name}'s config in the hyperhive meta repo (agents/{name}/agent.toml).",
        "# Changes reach the agent only through an approval: propose_config, then",
        "# request_apply_commit; the operator approves and the daemon rebuilds it.",
    ]
    if kept_env:
        lines.append(
            f"# hive.toml also sets env {', '.join(sorted(kept_env))} for {name} "
            "(values stay there, out of git)."
        )
    for key, value in msgspec.structs.asdict(cfg).items():
        if value is None:
            lines.append(f"# {key} is unset")
        else:
            lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def parse(data: bytes | str, where: str) -> AgentToml:
    text = data.decode(errors="replace") if isinstance(data, bytes) else data
    try:
        return msgspec.convert(tomllib.loads(text), AgentToml)
    except tomllib.TOMLDecodeError as exc:
        raise Fail("invalid", f"{where} is not TOML: {exc}") from None
    except msgspec.ValidationError as exc:
        raise Fail("invalid", f"{where}: {exc}") from None


def key_changes(old: AgentToml | None, new: AgentToml) -> list[str]:
    """What `new` changes against `old`, one `key: old → new` per key (env values shown)."""
    before = msgspec.structs.asdict(old or AgentToml())
    after = msgspec.structs.asdict(new)
    return [
        f"{key}: {_toml_value(before[key]) if before[key] is not None else 'unset'} → "
        f"{_toml_value(value) if value is not None else 'unset'}"
        for key, value in after.items()
        if before[key] != value
    ]


def cap(text: str, limit: int = DIFF_MAX) -> str:
    if len(text) <= limit:
        return text
    return text[:limit] + f"\n… ({len(text) - limit} more characters not shown)\n"


class AgentConfigs:
    def __init__(
        self,
        store: Store,
        bus: EventBus,
        registry: Registry,
        roster: Roster,
        settings: HiveSettings,
        paths: Paths,
        agents: dict[str, AgentConfig],
    ) -> None:
        self.store = store
        self.bus = bus
        self.registry = registry
        self.roster = roster
        self.settings = settings
        self.paths = paths
        self.state_dir = paths.state_dir
        self.agents = agents
        """What each agent runs (hive.toml's `[agents.*]`, each deployed config laid over):
        the dict the supervisor and the reminders read; this service keeps it current."""
        self.lifecycle: Lifecycle | None = None
        """The container supervisor, once it runs (`Hive.serving` hands it over)."""
        self.repo = MetaRepo(paths.state_dir / "meta")
        self.seeds: dict[str, AgentConfig] = dict(agents)
        """hive.toml's `[agents.*]` as loaded: seeds, and the `env` laid over each deploy."""
        self.deployed: dict[str, Deployed] = {}
        self.main_blobs: dict[str, str] = {}
        self.unavailable: str | None = "not opened yet"

    def require(self) -> None:
        if self.unavailable is not None:
            raise Fail("unavailable", f"the meta repo is unavailable: {self.unavailable}")

    # ---------------------------------------------------------------- start-up

    async def open(self) -> None:
        """Create the repo if needed and load what every registered agent runs.

        When the repo cannot be opened (or read), nothing falls back to hive.toml: each agent
        runs the config last deployed to it, kept in `<state>/deployed/` beside the commit,
        and an agent with none is not started (`not_runnable` says why) until it opens.
        """
        reason: str | None = None
        if not self.repo.available:
            reason = "git is not installed"
        else:
            try:
                await self.repo.open()
            except (GitError, OSError, subprocess.CalledProcessError) as exc:
                reason = f"cannot open {self.repo.path}: {exc}"
        rows: list[tuple[str, str]] = await self.store.read(
            lambda c: [
                (r[0], r[1])
                for r in c.execute(
                    "SELECT name, deployed_sha FROM agents WHERE deployed_sha IS NOT NULL"
                )
            ]
        )
        if reason is None:
            for name, sha in rows:
                try:
                    cfg, blob = await self._config_at(sha, name)
                except (Fail, GitError) as exc:
                    log.warning(
                        "%s: its deployed config %s cannot be read from the meta repo: %s",
                        name,
                        sha[:12],
                        exc,
                    )
                    continue
                self.deployed[name] = Deployed(sha, blob, cfg)
                self._install(name, cfg)
                self._keep_if_missing(name, sha, blob, cfg)
            try:
                await self._refresh_main()
            except GitError as exc:
                reason = f"cannot read {self.repo.path}: {exc}"
        kept = 0
        for name, sha in rows:
            if name not in self.deployed and (d := self._read_kept(name, sha)) is not None:
                self.deployed[name] = d
                self._install(name, d.config)
                kept += 1
        if reason is None:
            self.unavailable = None
            return
        self.unavailable = reason
        log.error(
            "meta repo unavailable: %s; %d agent(s) run the config last deployed to them "
            "(kept in %s), agents without one are not started, and approvals are refused "
            "until it opens; hive.toml's [agents.*] are not used instead",
            reason,
            kept,
            self.kept_dir,
        )

    def not_runnable(self, name: str) -> str | None:
        """Why `name` must not be started now (it has no approved config), or None."""
        if name in self.deployed:
            return None
        if self.unavailable is not None:
            return (
                f"it has no deployed config and the meta repo is unavailable "
                f"({self.unavailable}); hive.toml is not used in its place"
            )
        return None

    # ---------------------------------------------------------------- last deployed configs

    @property
    def kept_dir(self) -> Path:
        return self.paths.state_dir / "deployed"

    def _keep(self, name: str, sha: str, blob: str, cfg: AgentToml) -> None:
        """Keep what `name` runs outside git (atomically, 0600), for a daemon that starts
        while the meta repo cannot be opened."""
        self.kept_dir.mkdir(mode=0o700, exist_ok=True)
        path = self.kept_dir / f"{name}.toml"
        tmp = path.with_suffix(".tmp")
        tmp.unlink(missing_ok=True)
        text = f"# deployed {sha} {blob}\n" + render(cfg, name)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)

    def _keep_if_missing(self, name: str, sha: str, blob: str, cfg: AgentToml) -> None:
        """A hive deployed before copies were kept gets them at its next start."""
        path = self.kept_dir / f"{name}.toml"
        try:
            with open(path) as fh:
                if fh.readline() == f"# deployed {sha} {blob}\n":
                    return
        except OSError:
            pass
        try:
            self._keep(name, sha, blob, cfg)
        except OSError as exc:
            log.warning("%s: cannot keep a copy of its deployed config: %s", name, exc)

    def _read_kept(self, name: str, sha: str) -> Deployed | None:
        path = self.kept_dir / f"{name}.toml"
        try:
            text = path.read_text()
        except OSError:
            log.error("%s: no kept copy of its deployed config %s at %s", name, sha[:12], path)
            return None
        first, _, body = text.partition("\n")
        parts = first.split()
        if parts[:2] != ["#", "deployed"] or len(parts) != 4 or parts[2] != sha:
            log.error("%s: %s is not its deployed config %s", name, path, sha[:12])
            return None
        try:
            cfg = parse(body, str(path))
        except Fail as exc:
            log.error("%s: %s", name, exc.message)
            return None
        return Deployed(sha, parts[3], cfg)

    async def seed_missing(self) -> None:
        """Give every registered agent without a deployed commit one: `main`'s agent.toml when
        it has one, else a seed from hive.toml (or the registry record), in one commit."""
        if self.unavailable is not None:
            return
        missing = [n for n in self.registry.names() if n not in self.deployed]
        if not missing:
            return
        try:
            await self._seed(missing, overwrite=False, message="seed " + ", ".join(missing))
        except GitError as exc:
            # the hive still runs (on hive.toml's configs); the gate stays shut until fixed
            self.unavailable = f"seeding failed: {exc}"
            log.error("meta repo disabled: %s", self.unavailable)

    async def adopt(self, name: str) -> None:
        """An agent the operator just added: its config on `main` becomes its registry record."""
        if self.unavailable is None:
            await self._seed([name], overwrite=True, message=f"add {name} (operator)")

    async def forget(self, name: str, message: str) -> None:
        """An agent that was removed or destroyed: its dir leaves `main` (history keeps it)."""
        self.deployed.pop(name, None)
        (self.kept_dir / f"{name}.toml").unlink(missing_ok=True)
        if name in self.seeds:
            self.agents[name] = self.seeds[name]
        else:
            self.agents.pop(name, None)
        if self.unavailable is not None:
            return
        async with self.repo.lock:
            main = await self.repo.head()
            if main is None:
                return
            files = await self.repo.files(main, agent_dir(name))
            if files:
                new = await self.repo.commit(main, dict.fromkeys(files), message)
                if new is not None:
                    await self.repo.move_branch("main", new, main)
        await self._refresh_main()

    async def _seed(self, names: list[str], *, overwrite: bool, message: str) -> None:
        async with self.repo.lock:
            main = await self.repo.head()
            changes: dict[str, bytes | None] = {}
            for name in names:
                if overwrite or main is None or await self.repo.read(main, toml_path(name)) is None:
                    seed = self.seeds.get(name)
                    kept = sorted(seed.env) if seed is not None else []
                    changes[toml_path(name)] = render(self._seed_config(name), name, kept).encode()
            new = await self.repo.commit(main, changes, message) if changes else None
            if new is not None:
                await self.repo.move_branch("main", new, main)
                main = new
        assert main is not None
        for name in names:
            cfg, blob = await self._config_at(main, name)
            await self._record(name, main, blob, cfg)
        await self._refresh_main()

    def _seed_config(self, name: str) -> AgentToml:
        seed = self.seeds.get(name) or AgentConfig()
        record = self.registry.get(name)
        fields: dict[str, Any] = msgspec.structs.asdict(seed)
        fields.update(
            env={},
            role=record.role,
            model=record.model,
            runtime=record.runtime,
            allowed_recipients=record.allowed_recipients,
        )
        return AgentToml(**fields)

    # ---------------------------------------------------------------- state

    def _install(self, name: str, cfg: AgentToml) -> None:
        seed = self.seeds.get(name)
        env = {**cfg.env, **(seed.env if seed is not None else {})}
        self.agents[name] = msgspec.structs.replace(cfg, env=env)

    async def _record(self, name: str, sha: str, blob: str, cfg: AgentToml) -> None:
        """`name` runs `cfg` from commit `sha` from now on (kept copy, sqlite, registry, memory)."""
        await trio.to_thread.run_sync(self._keep, name, sha, blob, cfg)
        await self.store.write(
            lambda c: c.execute("UPDATE agents SET deployed_sha = ? WHERE name = ?", (sha, name))
        )
        await self.registry.set_config(name, cfg.model, cfg.runtime, cfg.allowed_recipients)
        self.deployed[name] = Deployed(sha, blob, cfg)
        self._install(name, cfg)
        self.bus.publish(m.AgentStateChanged(name=name, state="deployed", reason=sha[:12]))
        await self.render_nix([name])

    async def render_nix(self, names: list[str]) -> None:
        """nixos backend: commit each agent's `agent.nix`, rendered from what it runs, to `main`."""
        lifecycle = self.lifecycle
        if self.settings.backend != "nixos" or lifecycle is None or self.unavailable:
            return
        async with self.repo.lock:
            main = await self._main()
            changes: dict[str, bytes | None] = {}
            for name in names:
                if name in self.registry.agents:
                    spec = lifecycle.spec(name)
                    text = render_agent_nix(spec, self.paths.agents_root / name).encode()
                    if await self.repo.read(main, nix_path(name)) != text:
                        changes[nix_path(name)] = text
            new = await self.repo.commit(main, changes, "render agent.nix") if changes else None
            if new is not None:
                await self.repo.move_branch("main", new, main)

    async def _refresh_main(self) -> None:
        main = await self.repo.head()
        files = await self.repo.files(main, "agents/") if main is not None else {}
        self.main_blobs = {
            path.split("/")[1]: blob
            for path, blob in files.items()
            if path.count("/") == 2 and path.endswith("/agent.toml")
        }

    def row_extras(self, name: str) -> dict[str, object]:
        d = self.deployed.get(name)
        if d is None:
            return {}
        main_blob = self.main_blobs.get(name)
        return {
            "deployed_sha": d.sha[:12],
            "needs_update": main_blob not in (None, d.blob),
            "parent": d.config.parent or None,
        }

    async def _config_at(self, rev: str, name: str) -> tuple[AgentToml, str]:
        data = await self.repo.read(rev, toml_path(name))
        blob = await self.repo.blob_id(rev, toml_path(name))
        if data is None or blob is None:
            raise Fail("not_found", f"commit {rev[:12]} has no {toml_path(name)}")
        where = f"{toml_path(name)} at {rev[:12]}"
        cfg = parse(data, where)
        self.check_paths(name, cfg, where)
        return cfg, blob

    def check_paths(self, name: str, cfg: AgentConfig, where: str) -> None:
        """A path in a config from the meta repo (which the manager writes) stays under the
        roots allowed for it: `rules` is a file in the agent's own state dir, or exactly the
        path the operator's hive.toml gives that agent. Anything else would have the daemon
        bind a host file of the manager's choosing into a sandbox."""
        if not cfg.rules:
            return
        seed = self.seeds.get(name)
        if seed is not None and cfg.rules == seed.rules:
            return
        rules = Path(cfg.rules)
        own = self.paths.agent_state(name)
        if rules.is_absolute() and ".." not in rules.parts and rules.is_relative_to(own):
            return
        raise Fail(
            "invalid",
            f"{where}: rules = {cfg.rules!r} is outside {name}'s state dir {own} "
            "(and is not the path hive.toml gives it)",
        )

    async def _main(self) -> str:
        main = await self.repo.head()
        if main is None:
            raise Fail("unavailable", "the meta repo has no main branch yet")
        return main

    async def _current(self, name: str) -> tuple[AgentToml, str]:
        """What `name` runs (or, not registered yet, what `main` holds for it) and its commit."""
        if name in self.deployed:
            d = self.deployed[name]
            return d.config, d.sha
        if name in self.registry.agents:
            raise Fail("unavailable", f"{name} has no deployed config yet")
        main = await self._main()
        try:
            cfg, _ = await self._config_at(main, name)
        except Fail:
            raise Fail(
                "not_found", f"no agent named {name!r} and no {toml_path(name)} on main"
            ) from None
        return cfg, main

    # ---------------------------------------------------------------- the manager's side

    async def read_text(self, name: str) -> m.AgentConfigText:
        """`main`'s agent.toml of `name`, as the manager edits it."""
        self.require()
        main = await self._main()
        data = await self.repo.read(main, toml_path(name))
        if data is None:
            raise Fail("not_found", f"no {toml_path(name)} on main")
        d = self.deployed.get(name)
        deployed = f"deployed {d.sha[:12]}" if d is not None else "not deployed: not registered"
        return m.AgentConfigText(
            agent=name,
            source=f"meta repo {toml_path(name)} on main {main[:12]} ({deployed})",
            text=data.decode(errors="replace"),
        )

    async def propose(self, by: str, name: str, text: str, message: str) -> m.Proposed:
        """Commit `text` as `name`'s agent.toml on `proposals/<name>`, on top of `main`."""
        self.require()
        cfg = parse(text, "agent_toml")
        self.check_paths(name, cfg, "agent_toml")
        current, _ = await self._current(name)
        if cfg.role != current.role:
            raise Fail("invalid", "role cannot be changed by a config commit")
        branch = f"proposals/{name}"
        async with self.repo.lock:
            main = await self._main()
            sha = await self.repo.commit(
                main,
                {toml_path(name): text.encode()},
                (message or f"propose a config for {name}") + f"\n\nproposed by {by}",
            )
            if sha is None:
                raise Fail("invalid", f"this is what main holds for {name}: nothing to propose")
            await self.repo.force_branch(branch, sha)
        changes = key_changes(current, cfg)
        return m.Proposed(
            agent=name,
            sha=sha,
            branch=branch,
            summary="; ".join(changes) or "no key changes (comments or formatting only)",
        )

    async def prepare_apply(self, name: str, ref: str) -> PreparedApply:
        """Resolve `ref` now and check that its `agents/<name>/` can be deployed."""
        self.require()
        sha = await self.repo.resolve(ref)
        if sha is None:
            raise Fail("not_found", f"no commit {ref!r} in the meta repo")
        cfg, _ = await self._config_at(sha, name)
        current, base = await self._current(name)
        if cfg.role != current.role:
            raise Fail("invalid", "role cannot be changed by a config commit")
        diff = await self.repo.diff(base, sha, [agent_dir(name), f":(exclude){nix_path(name)}"])
        if not diff.strip():
            raise Fail("invalid", f"agents/{name}/ at {sha[:12]} is what {name} runs already")
        changes = key_changes(current, cfg) or [f"files under agents/{name}/ change"]
        return PreparedApply(
            sha=sha,
            base=base,
            diff=cap(diff),
            description=f"apply {sha[:12]} to {name}: " + "; ".join(changes),
        )

    async def spawn_preview(
        self, by: str, req: m.RequestSpawn
    ) -> tuple[AgentToml, dict[str, bytes | None], str]:
        """The config a spawn would write, the files, and their diff against `main`."""
        self.require()
        self._check_new_name(req.name)
        main = await self._main()
        existing = await self.repo.read(main, toml_path(req.name))
        base = parse(existing, toml_path(req.name)) if existing is not None else AgentToml()
        cfg = msgspec.structs.replace(
            base,
            role="agent",
            model=req.model or base.model,
            runtime=req.runtime or base.runtime or self.registry.get(by).runtime,
            description=req.role_description or base.description,
            parent=by,
        )
        if cfg.runtime not in RUNTIMES:
            raise Fail("invalid", f"unknown runtime {cfg.runtime!r} (one of {', '.join(RUNTIMES)})")
        files: dict[str, bytes | None] = {}
        if existing is None or cfg != base:
            files[toml_path(req.name)] = render(cfg, req.name).encode()
        if req.instructions:
            files[instructions_path(req.name)] = req.instructions.encode()
        diff = []
        for path, data in files.items():
            old = await self.repo.read(main, path)
            diff.append(_file_diff(path, old, data))
        return cfg, files, cap("".join(diff))

    def _check_new_name(self, name: str) -> None:
        if name in ("operator", "system"):
            raise Fail("invalid", f"{name!r} is reserved")
        if name in self.registry.agents:
            raise Fail("conflict", f"an agent named {name!r} exists")
        if (self.paths.state_dir / "tombstones" / name).exists():
            raise Fail("conflict", f"a tombstone for {name!r} exists; the operator must purge it")

    async def init_preview(self, by: str, name: str) -> tuple[str, str]:
        """The template `init_config` would commit, and its diff."""
        self.require()
        self._check_new_name(name)
        main = await self._main()
        if await self.repo.read(main, toml_path(name)) is not None:
            raise Fail("conflict", f"{toml_path(name)} exists on main already")
        runtime = self.registry.get(by).runtime
        template = render(
            AgentToml(runtime=runtime if runtime in RUNTIMES else "scripted", parent=by),  # type: ignore[arg-type]
            name,
        )
        return template, _file_diff(toml_path(name), None, template.encode())

    # ---------------------------------------------------------------- carrying out (approved)

    async def apply(self, name: str, sha: str) -> str:
        """Make `main`'s `agents/<name>/` that of `sha`, then deploy `sha` to `name`."""
        try:
            cfg, _ = await self._config_at(sha, name)
            current, _ = await self._current(name)
        except Fail as exc:
            raise DeployFailed(exc.message) from None
        if cfg.role != current.role:
            raise DeployFailed("role cannot be changed by a config commit")
        async with self.repo.lock:
            main = await self._main()
            target = await self.repo.files(sha, agent_dir(name))
            target.pop(nix_path(name), None)
            now = await self.repo.files(main, agent_dir(name))
            now.pop(nix_path(name), None)
            changes: dict[str, bytes | None] = dict.fromkeys(set(now) - set(target))
            for path, blob in target.items():
                if now.get(path) != blob:
                    changes[path] = await self.repo.read(sha, path)
            candidate = await self.repo.commit(
                main, changes, f"deploy agents/{name}/ from {sha[:12]}"
            )
            if candidate is not None:
                fast_forward = await self.repo.is_ancestor(main, sha) and (
                    await self.repo.tree_of(candidate) == await self.repo.tree_of(sha)
                )
                await self.repo.move_branch("main", sha if fast_forward else candidate, main)
        await self._refresh_main()
        if name not in self.registry.agents:
            return (
                f"main now holds agents/{name}/ from {sha[:12]}; {name} is not registered yet: "
                "request_spawn creates it with this config"
            )
        return await self.deploy(name, sha)

    async def deploy(self, name: str, sha: str) -> str:
        """`name` runs `sha`'s agent.toml from now on; a running agent is rebuilt with it and
        must report in, else the previous config is put back and `DeployFailed` says why."""
        try:
            cfg, blob = await self._config_at(sha, name)
        except Fail as exc:
            raise DeployFailed(exc.message) from None
        old = self.deployed.get(name)
        lifecycle = self.lifecycle
        running = (
            lifecycle is not None
            and name in lifecycle.agents
            and lifecycle.agents[name].scope is not None
        )
        await self._record(name, sha, blob, cfg)
        if not running:
            return f"{name} runs {sha[:12]} from its next start (it is not running now)"
        try:
            await self._start_and_wait(name, rebuild=True)
        except DeployFailed as failed:
            if old is not None:
                await self._record(name, old.sha, old.blob, old.config)
                try:
                    await self._start_and_wait(name, rebuild=True)
                    back = f"; {name} runs {old.sha[:12]} again"
                except DeployFailed as again:
                    back = f"; putting {old.sha[:12]} back failed too: {again}"
            else:
                back = ""
            raise DeployFailed(f"{failed}{back}") from None
        return f"{name} was rebuilt and runs {sha[:12]}"

    async def spawn(self, by: str, req: m.RequestSpawn) -> str:
        """Write the new agent's config on `main`, register it, hand it its instructions and
        start it. A start that fails leaves it registered (the operator can retry or destroy)."""
        try:
            cfg, files, _ = await self.spawn_preview(by, req)
        except Fail as exc:
            raise DeployFailed(exc.message) from None
        name = req.name
        async with self.repo.lock:
            main = await self._main()
            new = await self.repo.commit(main, files, f"spawn {name}\n\nrequested by {by}")
            if new is not None:
                await self.repo.move_branch("main", new, main)
                main = new
        await self._refresh_main()
        await self.roster.add(name, cfg.role, cfg.model, cfg.runtime, cfg.allowed_recipients)
        saved, blob = await self._config_at(main, name)
        await self._record(name, main, blob, saved)
        if req.role_description or req.instructions:
            await trio.to_thread.run_sync(self._write_instructions, name, req)
        lifecycle = self.lifecycle
        if lifecycle is None:
            return f"{name} is registered with config {main[:12]}; the supervisor is not running"
        await self._start_and_wait(name, rebuild=False)
        return f"{name} is registered and running config {main[:12]}"

    def _write_instructions(self, name: str, req: m.RequestSpawn) -> None:
        """`CLAUDE.md` in the new agent's state dir (Claude Code reads it from its cwd)."""
        state = self.paths.agent_state(name)
        text = f"# {name}\n\n{req.role_description}\n\n{req.instructions}\n".replace(
            "\n\n\n", "\n\n"
        )
        try:
            fd = os.open(
                state / "CLAUDE.md", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644
            )
        except FileExistsError:
            return
        with os.fdopen(fd, "w") as fh:
            os.fchmod(fh.fileno(), 0o644)  # the agent's file, readable as its own are
            fh.write(text)
        uid = self.registry.get(name).uid
        if uid is not None:
            os.chown(state / "CLAUDE.md", uid, uid, follow_symlinks=False)

    async def init_config(self, by: str, name: str) -> str:
        try:
            template, _ = await self.init_preview(by, name)
        except Fail as exc:
            raise DeployFailed(exc.message) from None
        async with self.repo.lock:
            main = await self._main()
            new = await self.repo.commit(
                main, {toml_path(name): template.encode()}, f"init config for {name}\n\nby {by}"
            )
            assert new is not None
            await self.repo.move_branch("main", new, main)
        await self._refresh_main()
        return (
            f"{toml_path(name)} is on main at {new[:12]}: change it with propose_config "
            f"(agent={name}) and request_apply_commit, then request_spawn"
        )

    async def sync_from_main(self, name: str) -> bool:
        """Before an operator's rebuild: deploy `main`'s config when it differs (`needs_update`)."""
        if self.unavailable is not None or name not in self.deployed:
            return False
        d = self.deployed[name]
        if self.main_blobs.get(name) in (None, d.blob):
            return False
        main = await self._main()
        cfg, blob = await self._config_at(main, name)
        if cfg.role != d.config.role:
            raise Fail("invalid", f"main changes {name}'s role; that cannot be deployed")
        await self._record(name, main, blob, cfg)
        return True

    async def _start_and_wait(self, name: str, *, rebuild: bool) -> None:
        """Rebuild (or start) `name` and wait until its new harness reports in."""
        lifecycle = self.lifecycle
        assert lifecycle is not None
        sub, _ = self.bus.subscribe(["agent_state_changed"], None)
        try:
            try:
                if rebuild:
                    await lifecycle.rebuild(name)
                else:
                    await lifecycle.start(name)
            except Fail as exc:
                raise DeployFailed(exc.message + self._tail(name)) from None
            started = False
            with trio.move_on_after(DEPLOY_WAIT):
                async for ev in sub.recv:
                    if not isinstance(ev, m.AgentStateChanged) or ev.name != name:
                        continue
                    if ev.state == "starting":
                        started = True
                    elif ev.state == "harness:idle" and started:
                        return
                    elif ev.state == "harness:error" and started:
                        raise DeployFailed(
                            f"{name}'s harness failed to start: {ev.reason}" + self._tail(name)
                        )
                    elif ev.state == "failed":
                        raise DeployFailed(
                            f"{name}'s container failed: {ev.reason}" + self._tail(name)
                        )
            raise DeployFailed(
                f"{name}'s harness did not report in within {DEPLOY_WAIT:.0f}s" + self._tail(name)
            )
        finally:
            sub.close()

    def _tail(self, name: str) -> str:
        lifecycle = self.lifecycle
        if lifecycle is None:
            return ""
        lines = read_tail(lifecycle.log_file(name), LOG_TAIL)
        return "\nLast log lines:\n" + "\n".join(lines) if lines else ""


def _file_diff(path: str, old: bytes | None, new: bytes | None) -> str:
    before = (old or b"").decode(errors="replace").splitlines(keepends=True)
    after = (new or b"").decode(errors="replace").splitlines(keepends=True)
    return "".join(
        difflib.unified_diff(
            before,
            after,
            fromfile=f"a/{path}" if old is not None else "/dev/null",
            tofile=f"b/{path}" if new is not None else "/dev/null",
        )
    )
