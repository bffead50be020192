"""Agent uids: each agent its own, from a range that nobody else on the host uses.

A uid is taken only when it is free on the host: no passwd or group entry names it, no
`/etc/subuid` or `/etc/subgid` range holds it, no process runs as it, it lies outside
systemd's reserved ranges, and no other live hive has claimed it. Claims are files in a
directory every hive on the host shares (`<claims_dir>/<uid>`, holding the claiming hive's
id and state dir), made with an exclusive link, so two hives starting at once cannot take
the same uid. A claim whose hive is gone (its state dir no longer holds that id) is stale
and may be taken over.
"""

from __future__ import annotations

import contextlib
import grp
import json
import os
import pwd
from collections.abc import Iterable
from pathlib import Path

RESERVED = (
    (0, 60000),  # system users and regular accounts
    (60001, 60513),  # systemd-homed
    (61184, 65519),  # systemd DynamicUser=
    (65534, 65535),  # nobody, and the 16-bit -1
    (524288, 1879048191),  # systemd-nspawn container ranges
    (2147352576, 2147418111),  # systemd's foreign uid range
    (2147483648, 4294967295),  # the sign bit: too many tools mishandle it
)


class UidUnavailable(Exception):
    """No uid can be given: the range is used up, or a kept uid is another hive's."""


def in_reserved(uid: int) -> bool:
    return any(lo <= uid <= hi for lo, hi in RESERVED)


def subordinate_ranges(
    files: Iterable[Path] = (Path("/etc/subuid"), Path("/etc/subgid")),
) -> list[tuple[int, int]]:
    """`start`–`end` of every subordinate id range (rootless containers map them)."""
    out = []
    for path in files:
        try:
            lines = path.read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            parts = line.strip().split(":")
            if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
                start, count = int(parts[1]), int(parts[2])
                out.append((start, start + count - 1))
    return out


def process_uids(proc: Path = Path("/proc")) -> set[int]:
    """Every real, effective, saved and filesystem uid a running process has."""
    used: set[int] = set()
    for entry in os.scandir(proc):
        if not entry.name.isdigit():
            continue
        try:
            with open(os.path.join(entry.path, "status")) as fh:
                for line in fh:
                    if line.startswith("Uid:"):
                        used.update(int(v) for v in line.split()[1:])
                        break
        except OSError:
            continue
    return used


def names_on_host() -> set[int]:
    """Every uid and gid the passwd and group databases list (one pass over each)."""
    return {p.pw_uid for p in pwd.getpwall()} | {g.gr_gid for g in grp.getgrall()}


def named_on_host(uid: int) -> bool:
    for lookup in (pwd.getpwuid, grp.getgrgid):
        try:
            lookup(uid)
            return True
        except KeyError:
            pass
    return False


class UidAllocator:
    def __init__(self, first: int, last: int, claims_dir: Path, hive: str, state_dir: Path) -> None:
        if first > last:
            raise ValueError(f"uid range {first}–{last} is empty")
        self.first, self.last = first, last
        self.claims_dir = claims_dir
        self.hive = hive
        self.state_dir = state_dir

    def _path(self, uid: int) -> Path:
        return self.claims_dir / str(uid)

    def owner(
        self, uid: int, alive_cache: dict[tuple[str, str], bool] | None = None
    ) -> dict[str, str] | None:
        """The live claim on `uid` ({hive, state_dir, agent}), or None when free or stale.
        `alive_cache` keeps what one scan found of each hive (many claims share one)."""
        try:
            with open(os.path.join(self.claims_dir, str(uid)), "rb") as fh:
                claim = json.loads(fh.read())
            hive, state_dir = str(claim["hive"]), str(claim["state_dir"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):
            return None  # unreadable or damaged: nobody can prove it is theirs
        if hive == self.hive:
            return {"hive": hive, "state_dir": state_dir, "agent": str(claim.get("agent", ""))}
        alive = None if alive_cache is None else alive_cache.get((hive, state_dir))
        if alive is None:
            try:
                with open(os.path.join(state_dir, "hive-id")) as fh:
                    alive = fh.read().strip() == hive
            except OSError:
                alive = False
            if alive_cache is not None:
                alive_cache[(hive, state_dir)] = alive
        return (
            {"hive": hive, "state_dir": state_dir, "agent": str(claim.get("agent", ""))}
            if alive
            else None
        )

    def _write_claim(self, uid: int, agent: str) -> bool:
        """Make (or take over a stale) claim on `uid`; False when someone else holds it."""
        self.claims_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
        path = self._path(uid)
        tmp = self.claims_dir / f".{uid}.{os.getpid()}"
        tmp.write_text(
            json.dumps({"hive": self.hive, "state_dir": str(self.state_dir), "agent": agent})
        )
        try:
            for _ in range(2):
                try:
                    os.link(tmp, path)
                    return True
                except FileExistsError:
                    holder = self.owner(uid)
                    if holder is not None:
                        if holder["hive"] == self.hive:
                            os.replace(tmp, path)  # our own: refresh the agent's name
                            return True
                        return False
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()  # stale; the link below may still lose a race
            return False
        finally:
            tmp.unlink(missing_ok=True)

    def claim(self, uid: int, agent: str) -> None:
        """Keep `uid` (an agent's, from an earlier start) claimed for this hive."""
        holder = self.owner(uid)
        if holder is not None and holder["hive"] != self.hive:
            raise UidUnavailable(
                f"uid {uid} of {agent} is claimed by another hive ({holder['state_dir']});"
                " give one of them a different uid range (uid_first/uid_last)"
            )
        if not self._write_claim(uid, agent):
            raise UidUnavailable(f"uid {uid} of {agent} was just claimed by another hive")

    def allocate(self, agent: str, taken: set[int]) -> int:
        """A free uid for `agent`, claimed; `taken` are this hive's uids already.

        The lowest free uid wins. One scan reads the host's databases, the claims directory
        and each claiming hive once: a host where many hives (or test runs) left live claims
        costs a file read per claim, not a passwd lookup and two reads per uid."""
        subordinate = subordinate_ranges()
        running = process_uids()
        named = names_on_host()
        claimed = self._claimed()
        alive: dict[tuple[str, str], bool] = {}
        for uid in range(self.first, self.last + 1):
            if (
                uid in taken
                or uid in running
                or uid in named
                or in_reserved(uid)
                or any(lo <= uid <= hi for lo, hi in subordinate)
                or (uid in claimed and self._held_by_other_hive(uid, alive))
                or named_on_host(uid)  # a name only a lookup finds (NSS that cannot list)
            ):
                continue
            if self._write_claim(uid, agent):
                return uid
        raise UidUnavailable(
            f"no free uid left in {self.first}–{self.last}; widen uid_first/uid_last"
        )

    def _claimed(self) -> set[int]:
        """Every uid with a claim file (live or not)."""
        try:
            names = os.listdir(self.claims_dir)
        except OSError:
            return set()
        return {int(n) for n in names if n.isdigit()}

    def _held_by_other_hive(
        self, uid: int, alive_cache: dict[tuple[str, str], bool] | None = None
    ) -> bool:
        # one of our own claims whose agent is gone (not in `taken`) may be reused
        holder = self.owner(uid, alive_cache)
        return holder is not None and holder["hive"] != self.hive

    def release(self, uid: int) -> None:
        holder = self.owner(uid)
        if holder is not None and holder["hive"] == self.hive:
            self._path(uid).unlink(missing_ok=True)
