"""The forge's verbs: repositories, git over the caller's socket, and merge requests.

The `VERBS` table at the end is this feature's surface: each row names a verb, the roles
whose socket may decode it (`protocol.messages.forge`'s `FORGE_*_REQUESTS`, gathered in the
role unions), and its handler. A handler only turns the caller's socket into a `Who` and
asks the forge or the merge requests, which apply the per-repository rules (docs/forge.md).
"""

from __future__ import annotations

from protocol import messages as m
from protocol.messages import forge as f

from ..forge import Who
from .base import ADMIN, AGENTS, OPERATOR, Caller, Emit, Verb


def who(c: Caller) -> Who:
    return Who.of(c.role, c.agent)


async def forge_connect(c: Caller, req: f.ForgeConnect, emit: Emit) -> None:
    await c.hive.forge.serve(who(c), c.conn, c.call_id, req.repo, req.service, emit)


async def forge_write(c: Caller, req: f.ForgeWrite) -> m.Reply:
    await c.hive.forge.session(c.conn, req.call).write(req.seq, req.data, req.eof)
    return m.Ok()


async def create_repo(c: Caller, req: f.CreateRepo) -> m.Reply:
    row = await c.hive.forge.create(who(c), req.repo, req.private, req.description)
    return f.RepoInfo(repo=row)


async def list_repos(c: Caller, req: f.ListRepos) -> m.Reply:
    return f.Repos(repos=await c.hive.forge.list_repos(who(c), req.owner))


async def update_repo(c: Caller, req: f.UpdateRepo) -> m.Reply:
    row = await c.hive.forge.update(who(c), req.repo, req.private, req.description)
    return f.RepoInfo(repo=row)


async def delete_repo(c: Caller, req: f.DeleteRepo) -> m.Reply:
    targeted = await c.hive.forge.delete(who(c), req.repo)
    await c.hive.merge_requests.repo_deleted(targeted)
    return m.Ok()


async def get_repo(c: Caller, req: f.GetRepo) -> m.Reply:
    return await c.hive.forge.view(who(c), req.repo, req.ref, req.commits)


async def list_tree(c: Caller, req: f.ListTree) -> m.Reply:
    return await c.hive.forge.tree(who(c), req.repo, req.rev, req.path)


async def read_blob(c: Caller, req: f.ReadBlob) -> m.Reply:
    return await c.hive.forge.blob(who(c), req.repo, req.rev, req.path)


async def open_merge_request(c: Caller, req: f.OpenMergeRequest) -> m.Reply:
    return await c.hive.merge_requests.open_request(who(c), req)


async def list_merge_requests(c: Caller, req: f.ListMergeRequests) -> m.Reply:
    rows = await c.hive.merge_requests.list_requests(
        who(c), req.repo, req.state, req.involving, req.limit
    )
    return f.MergeRequests(merge_requests=rows)


async def get_merge_request(c: Caller, req: f.GetMergeRequest) -> m.Reply:
    return await c.hive.merge_requests.info(who(c), req.id)


async def comment_merge_request(c: Caller, req: f.CommentMergeRequest) -> m.Reply:
    return await c.hive.merge_requests.comment(who(c), req.id, req.body)


async def approve_merge_request(c: Caller, req: f.ApproveMergeRequest) -> m.Reply:
    return await c.hive.merge_requests.approve(who(c), req.id, req.note)


async def merge_merge_request(c: Caller, req: f.MergeMergeRequest) -> m.Reply:
    return await c.hive.merge_requests.merge(who(c), req.id, req.method, req.message)


async def close_merge_request(c: Caller, req: f.CloseMergeRequest) -> m.Reply:
    return await c.hive.merge_requests.close(who(c), req.id, req.note)


EVERY_CALLER = AGENTS | OPERATOR
"""Agents, the manager and the operator (on web.sock and admin.sock) alike."""
GIT = AGENTS | ADMIN
"""git transport: an agent's own socket, or `admin.sock` for the operator's clones."""

VERBS: tuple[Verb, ...] = (
    Verb(f.ForgeConnect, GIT, forge_connect, streaming=True),
    Verb(f.ForgeWrite, GIT, forge_write),
    Verb(f.CreateRepo, EVERY_CALLER, create_repo),
    Verb(f.ListRepos, EVERY_CALLER, list_repos),
    Verb(f.UpdateRepo, EVERY_CALLER, update_repo),
    Verb(f.DeleteRepo, ADMIN, delete_repo),
    Verb(f.GetRepo, EVERY_CALLER, get_repo),
    Verb(f.ListTree, EVERY_CALLER, list_tree),
    Verb(f.ReadBlob, EVERY_CALLER, read_blob),
    Verb(f.OpenMergeRequest, EVERY_CALLER, open_merge_request),
    Verb(f.ListMergeRequests, EVERY_CALLER, list_merge_requests),
    Verb(f.GetMergeRequest, EVERY_CALLER, get_merge_request),
    Verb(f.CommentMergeRequest, EVERY_CALLER, comment_merge_request),
    Verb(f.ApproveMergeRequest, EVERY_CALLER, approve_merge_request),
    Verb(f.MergeMergeRequest, EVERY_CALLER, merge_merge_request),
    Verb(f.CloseMergeRequest, EVERY_CALLER, close_merge_request),
)
