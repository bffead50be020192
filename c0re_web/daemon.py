"""The web process's one connection to the daemon's `web.sock`.

Routes make their calls over it and the `Hub` follows the event stream on it, so a web
process holds one connection and one subscription however many browsers watch. The link is
owned by the app's lifespan: `run` lives in its task group and reconnects with backoff when
the daemon goes away. Calls made meanwhile fail at once with `DaemonUnavailable`; nothing is
queued or retried behind the caller's back.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, TypeVar

import anyio
import anyio.abc

from protocol.client import HiveClient, HiveError
from protocol.messages import Reply, Request

if TYPE_CHECKING:
    from .live import Hub

log = logging.getLogger(__name__)
R = TypeVar("R", bound=Reply)
BACKOFF = (0.2, 0.5, 1.0, 2.0, 5.0)


class DaemonUnavailable(HiveError):
    def __init__(self, message: str) -> None:
        super().__init__("unavailable", message)


class DaemonLink:
    def __init__(self, path: str, hub: Hub) -> None:
        self.path = path
        self.hub = hub
        self._client: HiveClient | None = None
        self.last_error = "not connected yet"

    @property
    def connected(self) -> bool:
        return self._client is not None

    async def call(self, req: Request, reply_type: type[R]) -> R:
        """One request over the shared connection; its typed `Error` raises `HiveError`."""
        client = self._client
        if client is None:
            raise DaemonUnavailable(f"the daemon is not reachable ({self.last_error})")
        return await client.expect(req, reply_type)

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Connect, follow events, reconnect on loss; runs until its task group is cancelled."""
        task_status.started()
        attempt = 0
        while True:
            try:
                async with HiveClient.connect(self.path, client="hive-web") as client:
                    self._client = client
                    attempt = 0
                    log.info("connected to the daemon at %s", self.path)
                    await self.hub.follow(client)
            except HiveError as exc:
                if exc.message != self.last_error:
                    log.warning("daemon link: %s", exc.message)
                self.last_error = exc.message
            finally:
                self._client = None
            await anyio.sleep(BACKOFF[min(attempt, len(BACKOFF) - 1)])
            attempt += 1
