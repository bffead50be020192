"""`hive ctl meta-inputs|update-meta-inputs`: the meta repo's pinned flake inputs."""

from __future__ import annotations

from typing import Annotated

import typer

from protocol import messages as m

from .common import JsonOut, RunDir, ago, app, call, echo, emit, request, table


def show_inputs(got: m.MetaInputs, as_json: bool) -> None:
    def human() -> None:
        if got.inputs:
            table(
                [[i.name, i.url, i.rev[:12], ago(i.last_modified)] for i in got.inputs],
                ["INPUT", "URL", "REV", "MODIFIED"],
            )
        if got.note:
            echo(got.note)

    emit(got, as_json, human)


@app.command("meta-inputs")
def meta_inputs(run_dir: RunDir = None, as_json: JsonOut = False) -> None:
    """The meta repo's pinned inputs (nixos backend only; elsewhere it says why there are none)."""
    show_inputs(call(run_dir, m.ListMetaInputs(), m.MetaInputs, timeout=None), as_json)


@app.command("update-meta-inputs")
def update_meta_inputs(
    names: Annotated[
        list[str] | None, typer.Argument(help="Inputs to update (default all).")
    ] = None,
    run_dir: RunDir = None,
    as_json: JsonOut = False,
) -> None:
    """Update the pinned inputs with `nix flake update` and commit the lock file."""
    req = request(m.UpdateMetaInputs, names=names or None)
    show_inputs(call(run_dir, req, m.MetaInputs, timeout=None), as_json)
