"""Agent uids: two hives on one host never share one, and no uid the host uses is taken."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from c0re_priv.containers import uids
from c0re_priv.containers.host import hive_id
from c0re_priv.containers.uids import UidAllocator, UidUnavailable, in_reserved


def allocator(root: Path, name: str, first: int = 70000, last: int = 70009) -> UidAllocator:
    state = root / name
    state.mkdir(exist_ok=True)
    return UidAllocator(first, last, root / "claims", hive_id(state), state)


def test_two_hives_get_different_uids_and_keep_them(tmp_path: Path) -> None:
    one, two = allocator(tmp_path, "one"), allocator(tmp_path, "two")
    a = one.allocate("alice", set())
    b = two.allocate("alice", set())
    assert a != b
    assert one.allocate("bob", {a}) not in (a, b)
    one.claim(a, "alice")  # kept across restarts
    with pytest.raises(UidUnavailable, match=r"claimed by another hive \(.*/one\)"):
        two.claim(a, "alice")


def test_a_gone_hive_s_claims_are_taken_over(tmp_path: Path) -> None:
    one, two = allocator(tmp_path, "one"), allocator(tmp_path, "two")
    a = one.allocate("alice", set())
    (tmp_path / "one" / "hive-id").unlink()  # the hive was deleted
    assert two.allocate("alice", set()) == a
    claim = json.loads((tmp_path / "claims" / str(a)).read_text())
    assert claim == {"hive": two.hive, "state_dir": str(tmp_path / "two"), "agent": "alice"}


def test_a_released_uid_is_given_again(tmp_path: Path) -> None:
    one, two = allocator(tmp_path, "one"), allocator(tmp_path, "two")
    a = one.allocate("alice", set())
    one.release(a)
    assert two.allocate("bob", set()) == a


def test_uids_the_host_uses_are_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    one = allocator(tmp_path, "one")
    monkeypatch.setattr(uids, "named_on_host", lambda uid: uid == 70000)
    monkeypatch.setattr(uids, "process_uids", lambda: {70001})
    monkeypatch.setattr(uids, "subordinate_ranges", lambda: [(70002, 70004)])
    assert one.allocate("alice", {70005}) == 70006


def test_a_full_range_is_a_clear_error(tmp_path: Path) -> None:
    one = allocator(tmp_path, "one", 70000, 70001)
    one.allocate("a", set())
    one.allocate("b", {70000})
    with pytest.raises(UidUnavailable, match="no free uid left in 70000–70001"):
        one.allocate("c", {70000, 70001})


def test_reserved_ranges() -> None:
    assert in_reserved(0) and in_reserved(1000) and in_reserved(61184) and in_reserved(65519)
    assert in_reserved(65534) and in_reserved(600000) and in_reserved(2**31 + 5)
    assert not in_reserved(65536) and not in_reserved(99999)


def test_a_real_process_uid_and_passwd_entry_are_seen(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to run a process as another uid")
    one = allocator(tmp_path, "one", 70100, 70110)
    sleeper = subprocess.Popen(
        ["setpriv", "--reuid=70100", "--regid=70100", "--clear-groups", "sleep", "30"]
    )
    try:
        for _ in range(100):  # until setpriv has changed its uid
            if 70100 in uids.process_uids():
                break
            time.sleep(0.05)
        assert 70100 in uids.process_uids()
        assert one.allocate("alice", set()) == 70101
    finally:
        sleeper.kill()
        sleeper.wait()
    assert uids.named_on_host(0)
    assert uids.subordinate_ranges([tmp_path / "missing"]) == []
    subuid = tmp_path / "subuid"
    subuid.write_text("alice:100000:65536\nbroken line\n")
    assert uids.subordinate_ranges([subuid]) == [(100000, 165535)]
