"""`hive ctl …`: the operator's control over admin.sock, one file per feature.

It is the daemon's admin surface, so it lives in the daemon's package, but it uses only the
protocol's client: running a `hive ctl` command loads no store, broker or container code.
Each feature module adds its commands to `app` (in `common`) when imported here, in the
order `hive ctl --help` lists them.
"""

from __future__ import annotations

# isort: off
from . import agents, events, messaging, questions, reminders  # noqa: F401
from . import lifecycle, approvals, tombstones, meta_inputs, federation  # noqa: F401
from . import operator_controls  # noqa: F401

# isort: on
from .common import app

__all__ = ["app"]
