"""`hive.toml`: the typed hive configuration, its defaults, and where state and sockets live.

Decoding goes through msgspec, so an unknown key or a wrong type is a `ConfigError` that
names the key, never a silently ignored setting. Every key is documented in
`docs/operating.md`; a test checks the two agree.
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Struct

from protocol.client import default_run_dir
from protocol.framing import DEFAULT_MAX_FRAME
from protocol.messages import AgentName, AgentRole, BudgetLimits, ModelName, RecipientName, Runtime

ROOT_STATE_DIR = Path("/var/lib/hyperhive")
DEFAULT_UID_FIRST = 65536
DEFAULT_UID_LAST = 99999
"""systemd calls 65536–524287 unused by it; Debian's subordinate ids start at 100000."""


class ConfigError(Exception):
    pass


EnvName = Annotated[str, Meta(pattern=r"^(?!HIVE_)[A-Za-z_][A-Za-z0-9_]{0,127}$")]
"""An environment variable an agent's config may set; `HIVE_*` belong to the daemon."""


class AgentConfig(Struct, kw_only=True, forbid_unknown_fields=True):
    role: AgentRole = "agent"
    model: ModelName = ""
    runtime: Runtime = "scripted"
    allowed_recipients: list[RecipientName] | None = None
    memory_mb: Annotated[int, Meta(ge=16)] | None = None
    cpus: Annotated[float, Meta(gt=0)] | None = None
    pids: Annotated[int, Meta(ge=8)] | None = None
    network: bool = True
    rules: str = ""
    env: dict[EnvName, Annotated[str, Meta(max_length=4096)]] = {}
    """Extra environment for the agent's harness and runtime (e.g. an API token)."""
    # per-agent overrides of the [hive] reminder limits
    reminder_burst: Annotated[int, Meta(ge=1)] | None = None
    reminder_refill_per_minute: Annotated[float, Meta(gt=0)] | None = None
    reminder_max_pending: Annotated[int, Meta(ge=1)] | None = None


class HiveSettings(Struct, kw_only=True, forbid_unknown_fields=True):
    state_dir: str = ""
    run_dir: str = ""
    agents_root: str = ""
    web_port: Annotated[int, Meta(ge=1, le=65535)] = 8765
    backend: Literal["bwrap", "nixos", "process"] = "bwrap"
    max_frame_bytes: Annotated[int, Meta(ge=4096, le=64 * 1024 * 1024)] = DEFAULT_MAX_FRAME
    body_max_bytes: Annotated[int, Meta(ge=64)] = 1024
    lease_seconds: Annotated[float, Meta(gt=0)] = 900.0
    recv_max_wait_seconds: Annotated[float, Meta(ge=0)] = 60.0
    message_retention_days: Annotated[float, Meta(gt=0)] = 30.0
    event_replay: Annotated[int, Meta(ge=16)] = 4096
    admin_group: str = ""
    web_group: str = ""
    host_sock: bool = True
    """Serve `<run_dir>/host.sock`, the original hyperhive's JSON-line host socket."""
    web_url: Annotated[str, Meta(pattern=r"^(https?://[^\s/?#]+(/[^\s?#]*)?)?\Z")] = ""
    """The dashboard's address as browsers reach it; `hive up` fills it in when empty."""
    autostart: bool = True
    max_restarts: Annotated[int, Meta(ge=0)] = 3
    restart_window_seconds: Annotated[float, Meta(gt=0)] = 300.0
    stop_grace_seconds: Annotated[float, Meta(ge=0)] = 30.0
    uid_first: Annotated[int, Meta(ge=1000, le=2**31 - 1)] = DEFAULT_UID_FIRST
    uid_last: Annotated[int, Meta(ge=1000, le=2**31 - 1)] = DEFAULT_UID_LAST
    uid_claims_dir: str = "/var/lib/hyperhive-uids"
    """Shared by every hive on the host: which hive holds which agent uid."""
    max_attempts: Annotated[int, Meta(ge=1, le=1000)] = 5
    """Turns a message may fail (or leases it may lose) before it is set aside as dead."""
    retry_backoff_seconds: Annotated[float, Meta(gt=0)] = 2.0
    retry_backoff_max_seconds: Annotated[float, Meta(gt=0)] = 300.0
    shared_dir: str = ""
    nixos_declarative: bool = False
    claude_pass_env: list[EnvName] = msgspec.field(
        default_factory=lambda: [
            "ANTHROPIC_API_KEY",
            "ANTHROPIC_AUTH_TOKEN",
            "CLAUDE_CODE_OAUTH_TOKEN",
        ]
    )
    claude_credentials: str = ""
    claude_base_url: Annotated[str, Meta(pattern=r"^(https?://[^\s]+)?$", max_length=2048)] = ""
    """ANTHROPIC_BASE_URL for every claude agent: an Anthropic-compatible gateway or proxy."""
    claude_env: dict[EnvName, Annotated[str, Meta(max_length=4096)]] = {}
    """Extra environment for every claude agent (an agent's own `env` wins)."""
    claude_bin: Annotated[str, Meta(pattern=r"^(/.*)?$", max_length=4096)] = ""
    """Absolute path of the Claude Code CLI inside the containers (HIVE_CLAUDE_BIN)."""
    reminder_burst: Annotated[int, Meta(ge=1)] = 10
    reminder_refill_per_minute: Annotated[float, Meta(gt=0)] = 6.0
    reminder_max_pending: Annotated[int, Meta(ge=1)] = 100
    reminder_max_attempts: Annotated[int, Meta(ge=1)] = 5
    reminder_retry_seconds: Annotated[float, Meta(gt=0)] = 30.0
    reminder_batch: Annotated[int, Meta(ge=1, le=100_000)] = 64
    reminder_chunk_ms: Annotated[float, Meta(ge=0, le=60_000)] = 2.0
    # what one peer (an agent, the web process, the operator's `hive ctl`s) may hold of the
    # daemon: see docs/security.md
    agent_max_connections: Annotated[int, Meta(ge=1, le=10_000)] = 32
    web_max_connections: Annotated[int, Meta(ge=1, le=10_000)] = 64
    admin_max_connections: Annotated[int, Meta(ge=1, le=10_000)] = 64
    peer_max_calls: Annotated[int, Meta(ge=1, le=100_000)] = 256
    peer_buffer_bytes: Annotated[int, Meta(ge=8192, le=1 << 34)] | None = None
    """Unset: 4 × `max_frame_bytes` (4 MiB by default); see `peer_buffer`."""
    total_buffer_bytes: Annotated[int, Meta(ge=8192, le=1 << 38)] | None = None
    """Unset: 16 × the peer budget (64 MiB by default); see `total_buffer`."""
    frame_timeout_seconds: Annotated[float, Meta(gt=0)] = 30.0
    idle_timeout_seconds: Annotated[float, Meta(gt=0)] = 600.0
    write_timeout_seconds: Annotated[float, Meta(gt=0)] = 30.0
    fd_reserve: Annotated[int, Meta(ge=16, le=1_000_000)] = 256
    # the operator's controls (docs/operating.md, "Operator controls")
    estop_grace_seconds: Annotated[float, Meta(gt=0, le=3600)] = 5.0
    """How long the emergency stop waits for a harness to park before stopping its container."""
    question_stale_seconds: Annotated[float, Meta(ge=0)] = 1800.0
    """An open question is raised again (then escalated) after waiting this long; 0: never."""

    @property
    def peer_buffer(self) -> int:
        """Bytes of unfinished frames one peer may have buffered in the daemon."""
        return self.peer_buffer_bytes or 4 * self.max_frame_bytes

    @property
    def total_buffer(self) -> int:
        """The same for every peer but the operator, together."""
        return self.total_buffer_bytes or 16 * self.peer_buffer

    def __post_init__(self) -> None:
        # a frame is only ever buffered whole or not at all: the budgets must hold one
        if self.peer_buffer < self.max_frame_bytes + 4:
            raise ValueError(
                f"peer_buffer_bytes ({self.peer_buffer}) must be at least "
                f"max_frame_bytes + 4 ({self.max_frame_bytes + 4})"
            )
        if self.total_buffer < self.peer_buffer:
            raise ValueError(
                f"total_buffer_bytes ({self.total_buffer}) must be at least "
                f"peer_buffer_bytes ({self.peer_buffer})"
            )


class FederationSettings(Struct, kw_only=True, forbid_unknown_fields=True):
    """`[federation]`: this hive's link to the others over NATS JetStream (docs/federation.md)."""

    hive: Annotated[str, Meta(pattern=r"^[a-z][a-z0-9-]{0,30}\Z")]
    url: Annotated[str, Meta(min_length=1, max_length=2048)] = "nats://127.0.0.1:4222"
    creds_file: str = ""
    user: Annotated[str, Meta(max_length=256)] = ""
    password_file: str = ""
    token_file: str = ""
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    namespace: Annotated[str, Meta(pattern=r"^[a-z][a-z0-9-]{0,30}\Z")] = "hyperhive"
    provision: bool = True
    max_age_days: Annotated[float, Meta(gt=0)] = 14.0
    status_interval_seconds: Annotated[float, Meta(gt=0)] = 30.0
    publish_batch: Annotated[int, Meta(ge=1, le=10_000)] = 256
    fetch_batch: Annotated[int, Meta(ge=1, le=10_000)] = 256
    ack_wait_seconds: Annotated[float, Meta(ge=1)] = 30.0
    retry_backoff_seconds: Annotated[float, Meta(gt=0)] = 1.0
    retry_backoff_max_seconds: Annotated[float, Meta(gt=0)] = 60.0


class ForgeSettings(Struct, kw_only=True, forbid_unknown_fields=True):
    """`[forge]`: the hive's git repositories (docs/forge.md)."""

    enabled: bool = True
    max_repos_per_owner: Annotated[int, Meta(ge=1, le=100_000)] = 100
    max_push_bytes: Annotated[int, Meta(ge=1024, le=1 << 40)] = 512 * 1024 * 1024
    session_timeout_seconds: Annotated[float, Meta(gt=0)] = 600.0
    max_sessions_per_agent: Annotated[int, Meta(ge=1, le=1000)] = 8
    lock_wait_seconds: Annotated[float, Meta(gt=0)] = 30.0


class BudgetSettings(Struct, kw_only=True, forbid_unknown_fields=True):
    """`[budget]`: spending limits that pause agents by themselves (docs/operating.md)."""

    warn_fraction: Annotated[float, Meta(gt=0, le=1)] = 0.8
    hive: BudgetLimits = msgspec.field(default_factory=BudgetLimits)
    """`[budget.hive]`: every agent together; at a limit, every agent but the managers stops."""
    each_agent: BudgetLimits = msgspec.field(default_factory=BudgetLimits)
    """`[budget.each_agent]`: every agent on its own, unless `[budget.agents.<name>]` says."""
    agents: dict[AgentName, BudgetLimits] = msgspec.field(default_factory=dict)
    """`[budget.agents.<name>]`: one agent's own limits (a key it leaves out: `each_agent`'s)."""


class HiveConfig(Struct, kw_only=True, forbid_unknown_fields=True):
    hive: HiveSettings = msgspec.field(default_factory=HiveSettings)
    federation: FederationSettings | None = None
    forge: ForgeSettings = msgspec.field(default_factory=ForgeSettings)
    budget: BudgetSettings = msgspec.field(default_factory=BudgetSettings)
    agents: dict[Annotated[str, Meta(pattern=r"^[a-z][a-z0-9-]{0,30}\Z")], AgentConfig] = (
        msgspec.field(default_factory=dict)
    )


def load_config(path: Path) -> HiveConfig:
    try:
        raw = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    try:
        return msgspec.convert(raw, HiveConfig)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


DEFAULT_CONFIG = """\
# hyperhive configuration; every key is explained in docs/operating.md.
[hive]
web_port = 8765
backend = "bwrap"        # bwrap | nixos | process
body_max_bytes = 1024    # longer message bodies are moved to a file in the sender's state dir
lease_seconds = 900      # a leased message not acked in this time is queued again

[agents.manager]
role = "manager"
runtime = "{runtime}"

[agents.alice]
runtime = "{runtime}"

[agents.bob]
runtime = "{runtime}"
"""


def write_default_config(path: Path, runtime: str = "scripted") -> None:
    text = DEFAULT_CONFIG.format(runtime=runtime)
    if runtime == "claude":
        config_dir = Path(os.environ.get("CLAUDE_CONFIG_DIR") or Path.home() / ".claude")
        creds = config_dir / ".credentials.json"
        if creds.is_file():
            # agents' HOME is their state dir: each gets a copy of this login on first start
            text = text.replace(
                "[agents.manager]",
                f"claude_credentials = {json.dumps(str(creds))}\n\n[agents.manager]",
                1,
            )
    path.write_text(text)


def default_dirs() -> tuple[Path, Path]:
    """(state_dir, run_dir) from the environment, else root's or this user's defaults (the
    run dir by the rule every client uses: `protocol.client.default_run_dir`)."""
    if os.geteuid() == 0:
        state = ROOT_STATE_DIR
    else:
        xdg_state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
        state = Path(xdg_state) / "hyperhive"
    return Path(os.environ.get("HIVE_STATE_DIR") or state), default_run_dir()


class Paths(Struct, frozen=True):
    state_dir: Path
    run_dir: Path
    agents_root: Path

    @property
    def db(self) -> Path:
        return self.state_dir / "hive.sqlite"

    @property
    def admin_sock(self) -> Path:
        return self.run_dir / "admin.sock"

    @property
    def web_sock(self) -> Path:
        return self.run_dir / "web.sock"

    @property
    def host_sock(self) -> Path:
        return self.run_dir / "host.sock"

    def agent_sock(self, name: str) -> Path:
        return self.run_dir / "agents" / f"{name}.sock"

    def agent_state(self, name: str) -> Path:
        return self.agents_root / name / "state"


def resolve_paths(
    settings: HiveSettings, state_dir: Path | None = None, run_dir: Path | None = None
) -> Paths:
    """Command-line dirs win over the config file, which wins over the defaults."""
    default_state, default_run = default_dirs()
    state = (state_dir or Path(settings.state_dir or default_state)).absolute()
    run = (run_dir or Path(settings.run_dir or default_run)).absolute()
    agents_root = (
        Path(settings.agents_root).absolute() if settings.agents_root else state / "agents"
    )
    return Paths(state, run, agents_root)
