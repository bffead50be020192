"""The link to other hives, as the operator sees it.

The `VERBS` table at the end is this feature's surface: each row names a verb, the roles
whose socket may decode it, and its handler."""

from __future__ import annotations

from protocol import messages as m

from .base import OPERATOR, Caller, Verb


async def federation_status(c: Caller, req: m.FederationStatus) -> m.Reply:
    federation = c.hive.federation
    row = await federation.row() if federation is not None else m.FederationRow(enabled=False)
    return m.Federation(federation=row)


VERBS: tuple[Verb, ...] = (Verb(m.FederationStatus, OPERATOR, federation_status),)
