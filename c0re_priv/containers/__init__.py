"""Container backends: how an agent's harness is isolated and run (bwrap, nixos, process)."""

from __future__ import annotations

from .base import Backend, ContainerSpec, Limits
from .bwrap import BwrapBackend
from .nixos import NixosBackend
from .process import ProcessBackend

BACKENDS: dict[str, type[BwrapBackend] | type[NixosBackend] | type[ProcessBackend]] = {
    "bwrap": BwrapBackend,
    "nixos": NixosBackend,
    "process": ProcessBackend,
}

__all__ = ["BACKENDS", "Backend", "ContainerSpec", "Limits"]
