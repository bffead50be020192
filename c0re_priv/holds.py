"""Holds: which agents the daemon keeps from work right now, and why.

Two things hold an agent: the emergency stop (every agent but the managers, while it is
engaged) and its budget (per agent, until the operator raises the limit or resumes it). A
held agent's container and harness keep running; the broker simply leases it nothing
(`allows`), so a harness that reconnects, restarts or misbehaves still gets no message.
The operator's own `pause` is not a hold: it stops the container (`Lifecycle.set_paused`).

This class is memory only, the broker's fast path; the emergency stop (`estop`) and the
budgets (`budgets`) own the persisted state and set it here, at start and on every change.
"""

from __future__ import annotations

from .registry import Registry

ESTOP_REASON = "emergency stop"


class Holds:
    def __init__(self, registry: Registry) -> None:
        self._registry = registry
        self.estop = False
        """The emergency stop is engaged: every agent but the managers is held."""
        self.budget: dict[str, str] = {}
        """Agents held by their budget, with the reason."""

    def estop_holds(self, agent: str) -> bool:
        if not self.estop:
            return False
        record = self._registry.agents.get(agent)
        return record is None or record.role != "manager"

    def allows(self, agent: str) -> bool:
        """May `agent` be given work now? (The broker asks before every lease.)"""
        return agent not in self.budget and not self.estop_holds(agent)

    def reason(self, agent: str) -> str:
        """Why `agent` is held, in the operator's words; empty when it is not."""
        reasons = []
        if self.estop_holds(agent):
            reasons.append(ESTOP_REASON)
        if agent in self.budget:
            reasons.append(self.budget[agent])
        return "; ".join(reasons)

    def row_extras(self, agent: str) -> dict[str, object]:
        return {"held": self.reason(agent)}
