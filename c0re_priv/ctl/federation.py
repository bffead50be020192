"""`hive ctl federation`: how this hive's link to the others stands."""

from __future__ import annotations

from protocol import messages as m

from .common import JsonOut, RunDir, ago, app, call, echo, emit, table


@app.command("federation")
def federation(run_dir: RunDir = None, as_json: JsonOut = False) -> None:
    """The link to other hives: its state, the outbox, and every hive heard from."""
    fed = call(run_dir, m.FederationStatus(), m.Federation).federation

    def human() -> None:
        if not fed.enabled:
            echo("this hive is not federated (no [federation] in hive.toml)")
            return
        echo(f"hive:      {fed.hive}\nnats:      {fed.url}")
        echo(f"link:      {fed.link}{f' ({fed.detail})' if fed.detail else ''}")
        oldest = f", oldest {ago(fed.outbox_oldest_at)}" if fed.outbox_oldest_at else ""
        echo(f"outbox:    {fed.outbox_pending} waiting{oldest}")
        if fed.outbox_last_error:
            echo(f"           last error: {fed.outbox_last_error}")
        echo(
            f"traffic:   {fed.published} published, {fed.received} received,"
            f" {fed.duplicates} duplicates dropped, {fed.rejected} rejected (since start)"
        )
        if fed.hives:
            echo("")
            table(
                [[h.hive, str(h.agents), ago(h.heard_at)] for h in fed.hives],
                ["HIVE", "AGENTS", "LAST HEARD"],
            )

    emit(fed, as_json, human)
