"""The forge's verbs: one handler each, registered in the daemon's verb table (`handlers`).

Which socket may send which verb is decided by the role unions (`protocol.forge`'s tuples,
gathered in `protocol.messages`); a handler only turns the caller's socket into a `Who`
and asks the forge or the merge requests, which apply the per-repository rules.
"""

from __future__ import annotations

from protocol import forge as f
from protocol import messages as m

from .forge import Who
from .handlers import Caller, Emit, streaming, unary


def who(c: Caller) -> Who:
    return Who.of(c.role, c.agent)


@streaming(f.ForgeConnect)
async def forge_connect(c: Caller, req: f.ForgeConnect, emit: Emit) -> None:
    await c.hive.forge.serve(who(c), c.conn, c.call_id, req.repo, req.service, emit)


@unary(f.ForgeWrite)
async def forge_write(c: Caller, req: f.ForgeWrite) -> m.Reply:
    await c.hive.forge.session(c.conn, req.call).write(req.seq, req.data, req.eof)
    return m.Ok(id=0)


@unary(f.CreateRepo)
async def create_repo(c: Caller, req: f.CreateRepo) -> m.Reply:
    row = await c.hive.forge.create(who(c), req.repo, req.private, req.description)
    return f.RepoInfo(id=0, repo=row)


@unary(f.ListRepos)
async def list_repos(c: Caller, req: f.ListRepos) -> m.Reply:
    return f.Repos(id=0, repos=await c.hive.forge.list_repos(who(c), req.owner))


@unary(f.UpdateRepo)
async def update_repo(c: Caller, req: f.UpdateRepo) -> m.Reply:
    row = await c.hive.forge.update(who(c), req.repo, req.private, req.description)
    return f.RepoInfo(id=0, repo=row)


@unary(f.DeleteRepo)
async def delete_repo(c: Caller, req: f.DeleteRepo) -> m.Reply:
    targeted = await c.hive.forge.delete(who(c), req.repo)
    await c.hive.merge_requests.repo_deleted(targeted)
    return m.Ok(id=0)


@unary(f.GetRepo)
async def get_repo(c: Caller, req: f.GetRepo) -> m.Reply:
    return await c.hive.forge.view(who(c), req.repo, req.ref, req.commits)


@unary(f.ListTree)
async def list_tree(c: Caller, req: f.ListTree) -> m.Reply:
    return await c.hive.forge.tree(who(c), req.repo, req.rev, req.path)


@unary(f.ReadBlob)
async def read_blob(c: Caller, req: f.ReadBlob) -> m.Reply:
    return await c.hive.forge.blob(who(c), req.repo, req.rev, req.path)


@unary(f.OpenMergeRequest)
async def open_merge_request(c: Caller, req: f.OpenMergeRequest) -> m.Reply:
    return await c.hive.merge_requests.open_request(who(c), req)


@unary(f.ListMergeRequests)
async def list_merge_requests(c: Caller, req: f.ListMergeRequests) -> m.Reply:
    rows = await c.hive.merge_requests.list_requests(
        who(c), req.repo, req.state, req.involving, req.limit
    )
    return f.MergeRequests(id=0, merge_requests=rows)


@unary(f.GetMergeRequest)
async def get_merge_request(c: Caller, req: f.GetMergeRequest) -> m.Reply:
    return await c.hive.merge_requests.info(who(c), req.id)


@unary(f.CommentMergeRequest)
async def comment_merge_request(c: Caller, req: f.CommentMergeRequest) -> m.Reply:
    return await c.hive.merge_requests.comment(who(c), req.id, req.body)


@unary(f.ApproveMergeRequest)
async def approve_merge_request(c: Caller, req: f.ApproveMergeRequest) -> m.Reply:
    return await c.hive.merge_requests.approve(who(c), req.id, req.note)


@unary(f.MergeMergeRequest)
async def merge_merge_request(c: Caller, req: f.MergeMergeRequest) -> m.Reply:
    return await c.hive.merge_requests.merge(who(c), req.id, req.method, req.message)


@unary(f.CloseMergeRequest)
async def close_merge_request(c: Caller, req: f.CloseMergeRequest) -> m.Reply:
    return await c.hive.merge_requests.close(who(c), req.id, req.note)
