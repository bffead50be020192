"""`hive ctl federation` and `hive federation provision`: the federation's commands.

`hive ctl federation` asks the daemon (admin socket) how its link stands. `hive federation
provision` talks to NATS itself, with an administrator's credentials, to create the
streams and each hive's consumers once (docs/federation.md); it never touches a daemon.
"""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path
from typing import Annotated

import typer

from protocol import messages as m
from protocol.federation import HIVE_NAME_PATTERN

from .cli import JsonOut, RunDir, StateDir, _admin, _ago, _die, _emit, _table, app, ctl

federation_app = typer.Typer(help="Federation over NATS JetStream (docs/federation.md).")
app.add_typer(federation_app, name="federation")


@ctl.command("federation")
def ctl_federation(
    run_dir: RunDir = None, state_dir: StateDir = None, as_json: JsonOut = False
) -> None:
    """The link to other hives: its state, the outbox, and every hive heard from."""
    with _admin(run_dir) as c:
        fed = c.expect(m.FederationStatus(), m.Federation).federation

    def human() -> None:
        if not fed.enabled:
            typer.echo("this hive is not federated (no [federation] in hive.toml)")
            return
        typer.echo(f"hive:      {fed.hive}\nnats:      {fed.url}")
        typer.echo(f"link:      {fed.link}{f' ({fed.detail})' if fed.detail else ''}")
        oldest = f", oldest {_ago(fed.outbox_oldest_at)}" if fed.outbox_oldest_at else ""
        typer.echo(f"outbox:    {fed.outbox_pending} waiting{oldest}")
        if fed.outbox_last_error:
            typer.echo(f"           last error: {fed.outbox_last_error}")
        typer.echo(
            f"traffic:   {fed.published} published, {fed.received} received,"
            f" {fed.duplicates} duplicates dropped, {fed.rejected} rejected (since start)"
        )
        if fed.hives:
            typer.echo("")
            _table(
                [[h.hive, str(h.agents), _ago(h.heard_at)] for h in fed.hives],
                ["HIVE", "AGENTS", "LAST HEARD"],
            )

    _emit(fed, as_json, human)


@federation_app.command("provision")
def federation_provision(
    hives: Annotated[list[str], typer.Argument(help="The hives to create consumers for.")],
    url: Annotated[str, typer.Option(help="NATS server URL(s), comma-separated.")] = (
        "nats://127.0.0.1:4222"
    ),
    user: Annotated[str, typer.Option(help="An administrator's NATS user.")] = "",
    password_file: Annotated[Path | None, typer.Option(help="That user's password.")] = None,
    token_file: Annotated[Path | None, typer.Option(help="A NATS token instead.")] = None,
    creds_file: Annotated[Path | None, typer.Option(help="A NATS .creds file instead.")] = None,
    tls_ca: Annotated[Path | None, typer.Option(help="CA bundle of the server (TLS).")] = None,
    tls_cert: Annotated[Path | None, typer.Option(help="Client certificate (TLS).")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="Its key.")] = None,
    namespace: Annotated[str, typer.Option(help="Subject prefix of the federation.")] = (
        "hyperhive"
    ),
    max_age_days: Annotated[
        float, typer.Option(help="How long an envelope nobody consumed is kept.")
    ] = 14.0,
    ack_wait_seconds: Annotated[
        float, typer.Option(help="How long NATS waits for a hive's ack.")
    ] = 30.0,
) -> None:
    """Create (or check) the federation's streams and the consumers of HIVES, once, as an
    administrator; hives then run with `provision = false` and no right to change them."""
    import msgspec

    from .config import FederationSettings
    from .nats_link import LinkError, provision_federation

    try:
        settings = msgspec.convert(
            {
                "hive": "provisioner",
                "url": url,
                "user": user,
                "password_file": str(password_file or ""),
                "token_file": str(token_file or ""),
                "creds_file": str(creds_file or ""),
                "tls_ca": str(tls_ca or ""),
                "tls_cert": str(tls_cert or ""),
                "tls_key": str(tls_key or ""),
                "namespace": namespace,
                "ack_wait_seconds": ack_wait_seconds,
            },
            FederationSettings,
        )
    except msgspec.ValidationError as exc:
        _die(str(exc))
    for hive in hives:
        if not re.match(HIVE_NAME_PATTERN, hive):
            _die(f"{hive!r} is not a hive name: a lowercase letter, then up to 30 of [a-z0-9-]")
    started = time.monotonic()
    try:
        created = asyncio.run(provision_federation(settings, hives, max_age_days))
    except LinkError as exc:
        _die(str(exc))
    for what in created:
        typer.echo(f"created {what}")
    typer.echo(
        f"federation {namespace!r} ready for {', '.join(hives)}"
        f" ({len(created)} created, {time.monotonic() - started:.1f}s)"
    )
