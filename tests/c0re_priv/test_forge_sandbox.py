"""The forge from inside real bubblewrap sandboxes: each agent runs plain `git` as its own uid,
with only its socket to reach the daemon, exactly as in its container.

Each step runs a shell script in the agent's sandbox, built from the daemon's own
`Lifecycle.spec` (the PATH that finds `git-remote-hive`, the git identity, the binds, the
uid drop) with the harness command swapped for the script.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import textwrap
from pathlib import Path

import pytest

from c0re_priv.hive import Hive
from protocol.client import HiveClient, HiveError
from protocol.messages import forge as f
from tests.conftest import make_config

pytestmark = [
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed"),
    pytest.mark.skipif(os.geteuid() != 0, reason="agents run as their own uids only as root"),
]


@pytest.fixture
def config():  # type: ignore[no-untyped-def]
    return make_config(
        backend="bwrap", agents={"boss": {"role": "manager"}, "alice": {}, "bob": {}}
    )


async def in_sandbox(hive: Hive, name: str, script: str, log: Path) -> tuple[int, str]:
    """Run `script` with /bin/sh in `name`'s sandbox, as its uid; its status and output."""
    lifecycle = hive.lifecycle
    assert lifecycle is not None and lifecycle.backend.name == "bwrap"
    spec = dataclasses.replace(
        lifecycle.spec(name),
        command=["/bin/sh", "-c", "set -u\n" + textwrap.dedent(script)],
        log_file=log,
    )
    await lifecycle.backend.create(spec)
    status = await lifecycle.backend.run(spec, None)
    return status, log.read_text()


async def test_agents_clone_push_and_are_refused_from_inside_their_sandboxes(
    hive: Hive, tmp_path: Path
) -> None:
    state = hive.paths.state_dir
    status, out = await in_sandbox(
        hive,
        "alice",
        f"""
        cd "$HOME"
        test "$(id -u)" != 0 || {{ echo "still root"; exit 9; }}
        test -e {state}/forge && {{ echo "the forge's repositories are visible"; exit 8; }}
        test -S {hive.paths.admin_sock} && {{ echo "admin.sock is visible"; exit 7; }}
        git init -q -b main notes && cd notes
        printf 'alpha\\n' > a.md && git add a.md && git commit -qm first
        git push -q hive://alice/notes main || exit 10
        git log -1 --format='%an <%ae>'
        """,
        tmp_path / "alice-1.log",
    )
    assert status == 0, out
    assert "hive forge: created alice/notes" in out and "alice <alice@hyperhive>" in out
    async with HiveClient.connect(str(hive.paths.admin_sock)) as admin:
        view = await admin.expect(f.GetRepo(repo="alice/notes"), f.RepoView)
    assert view.repo.created_by == "alice" and [c.author for c in view.commits] == ["alice"]

    status, out = await in_sandbox(
        hive,
        "bob",
        """
        cd "$HOME"
        git clone -q hive://alice/notes notes || exit 10
        cd notes && git checkout -q -b feat
        printf 'from bob\\n' > bob.md && git add bob.md && git commit -qm "bob's part"
        if git push -q origin feat 2>../err1; then echo "pushed to alice's repo"; exit 11; fi
        cat ../err1
        git clone -q hive://org-shared/docs ../docs || exit 12
        cd ../docs && printf 'mine\\n' >> README.md && git commit -qam "take over"
        if git push -q 2>../err2; then echo "pushed to the docs"; exit 13; fi
        cat ../err2
        cd ../notes && git push -q hive://bob/notes main feat || exit 14
        echo done
        """,
        tmp_path / "bob-1.log",
    )
    assert status == 0, out
    assert "forbidden: alice/notes belongs to alice" in out
    assert "org-shared/docs is read-only for agents" in out
    assert "hive forge: created bob/notes" in out and out.rstrip().endswith("done")

    # the merge request, through bob's and alice's own sockets
    async with HiveClient.connect(str(hive.paths.agent_sock("bob"))) as bob:
        opened = await bob.expect(
            f.OpenMergeRequest(
                repo="alice/notes", source_repo="bob/notes", source_branch="feat", title="bob.md"
            ),
            f.MergeRequestInfo,
        )
    async with HiveClient.connect(str(hive.paths.agent_sock("alice"))) as alice:
        await alice.expect(f.ApproveMergeRequest(id=opened.mr.id), f.MergeRequestInfo)
        merged = await alice.expect(f.MergeMergeRequest(id=opened.mr.id), f.MergeRequestInfo)
    assert merged.mr.state == "merged"

    status, out = await in_sandbox(
        hive,
        "alice",
        """
        cd "$HOME/notes"
        git pull -q hive://alice/notes main || exit 10
        cat bob.md
        git fetch -q hive://alice/notes refs/mr/1/head || exit 11
        git rev-parse FETCH_HEAD
        """,
        tmp_path / "alice-2.log",
    )
    assert status == 0, out
    assert "from bob" in out and merged.mr.head_sha in out


async def test_the_manager_writes_the_docs_from_its_sandbox(hive: Hive, tmp_path: Path) -> None:
    status, out = await in_sandbox(
        hive,
        "boss",
        """
        cd "$HOME"
        git clone -q hive://org-shared/docs docs && cd docs || exit 10
        printf 'deploy on fridays? no.\\n' > runbook.md
        git add runbook.md && git commit -qm runbook && git push -q || exit 11
        echo pushed
        """,
        tmp_path / "boss.log",
    )
    assert status == 0, out
    async with HiveClient.connect(str(hive.paths.agent_sock("alice"))) as alice:
        blob = await alice.expect(
            f.ReadBlob(repo=f.DOCS_REPO, rev="main", path="runbook.md"), f.RepoBlob
        )
        assert blob.data == b"deploy on fridays? no.\n"
        with pytest.raises(HiveError) as refused:
            await alice.expect(f.UpdateRepo(repo=f.DOCS_REPO, description="mine"), f.RepoInfo)
        assert refused.value.code == "forbidden"
