"""The forge's naming rules, as properties: the wire patterns, the words that explain a
refusal, and git's own idea of a valid ref all agree, and nothing accepted can be used to
climb out of a directory or pass for an option."""

from __future__ import annotations

import re
import string
import subprocess

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from c0re_priv.safe_fs import UnsafePath, check_component
from protocol.messages import forge as f

NAME_CHARS = string.ascii_lowercase + string.digits + "._-"
BRANCH_CHARS = string.ascii_letters + string.digits + "._-/"
anything = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=80)
name_like = st.text(alphabet=NAME_CHARS, min_size=1, max_size=70)
branch_like = st.text(alphabet=BRANCH_CHARS, min_size=1, max_size=60)
hostile = st.sampled_from(
    [
        "..",
        "../",
        "/..",
        ".git",
        ".lock",
        "-",
        ".",
        "\x00",
        "\n",
        "\x1b[2J",
        "\u202e",
        "@{",
        " ",
        "~",
        "^",
        ":",
        "?",
        "*",
        "[",
        "\\",
    ]
)


def decodes(typ: type, **fields: object) -> bool:
    try:
        msgspec.convert(fields, typ)
    except msgspec.ValidationError:
        return False
    return True


@given(st.one_of(name_like, anything))
def test_repo_names_the_pattern_and_the_words_agree(name: str) -> None:
    accepted = f.repo_name_problem(name) is None
    assert accepted == bool(re.match(f.REPO_NAME_PATTERN, name))
    assert accepted == decodes(f.CreateRepo, repo=f"alice/{name}")
    if accepted:
        check_component(f"{name}.git")  # a safe directory name, as the forge stores it
        assert ".." not in name and not name.endswith((".git", ".lock", "."))
        assert name[0] not in "-." and name.isascii() and name == name.lower()
        assert f.parse_url(f"hive://alice/{name}") == f"alice/{name}"


@given(name_like, hostile, st.integers(min_value=0, max_value=70))
def test_a_hostile_piece_anywhere_in_a_repo_name_is_refused_or_harmless(
    name: str, piece: str, at: int
) -> None:
    mutated = name[:at] + piece + name[at:]
    if f.repo_name_problem(mutated) is None:
        # only the harmless pieces survive, and only where they are harmless
        assert piece in ("-", ".", ".lock", ".git") and ".." not in mutated
        check_component(mutated)
    else:
        assert not decodes(f.ForgeConnect, repo=f"alice/{mutated}", service="git-upload-pack")


@given(st.one_of(branch_like, anything))
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_branch_names_the_pattern_the_words_and_git_agree(name: str) -> None:
    accepted = f.branch_problem(name) is None
    assert accepted == bool(re.match(f.BRANCH_PATTERN, name))
    assert accepted == decodes(f.OpenMergeRequest, repo="a/b", source_branch=name, title="t")
    if accepted:
        # git takes it as a branch and as a ref, and it can never be read as an option
        for args in (["--branch", name], [f"refs/heads/{name}"]):
            done = subprocess.run(["git", "check-ref-format", *args], capture_output=True)
            assert done.returncode == 0, (name, done.stderr)
        assert all(part and part[0] not in ".-" for part in name.split("/"))
        assert name.isascii() and not any(c in name for c in string.whitespace)


@given(branch_like, hostile, st.integers(min_value=0, max_value=60))
def test_a_hostile_piece_in_a_branch_name_is_refused(name: str, piece: str, at: int) -> None:
    mutated = name[:at] + piece + name[at:]
    if piece not in ("-", ".", ".git", ".lock"):
        assert f.branch_problem(mutated) is not None, mutated


@given(st.one_of(st.text(alphabet=NAME_CHARS + "/", max_size=40), anything))
def test_tree_paths_never_climb(path: str) -> None:
    if decodes(f.ListTree, repo="a/b", rev="main", path=path):
        parts = path.split("/") if path else []
        assert all(p not in ("", ".", "..") for p in parts)
        assert not any(ord(c) < 0x20 or ord(c) == 0x7F for c in path)
        for p in parts:
            check_component(p)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("hive://alice/notes.git", "drop the `.git` suffix"),
        ("hive://alice/../x", "may not contain `..`"),
        ("hive://alice", "is not <owner>/<name>"),
        ("hive://Alice/notes", "is not an agent name"),
        ("hive://alice/-x", "starts with a lowercase letter or a digit"),
        ("hive://alice/x.lock", "may not end in `.` or `.lock`"),
        ("hive://alice/a/b", "made of lowercase letters"),
    ],
)
def test_a_refused_url_says_why(url: str, problem: str) -> None:
    with pytest.raises(ValueError, match=re.escape(problem)):
        f.parse_url(url)


def test_the_components_the_forge_relies_on_are_refused_by_safe_fs() -> None:
    for bad in ("..", ".", "a/b", ""):
        with pytest.raises(UnsafePath):
            check_component(bad)
