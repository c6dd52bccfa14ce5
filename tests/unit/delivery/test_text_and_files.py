"""Splitting at the platform limit, the leak guard, and the outbox file rules."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nanoclaw_common.messages import MAX_ATTACHMENT_BYTES
from nanoclaw_common.paths import SessionPaths
from nanoclaw_delivery.files import is_safe_name, remove_outbox, stage_files
from nanoclaw_delivery.outcome import Denied
from nanoclaw_delivery.text import contains_secret, split_text, truncate


def test_split_prefers_paragraph_then_line_then_word() -> None:
    assert split_text("aaa bbb\n\nccc", 9) == ["aaa bbb", "ccc"]
    assert split_text("aaa\nbbb ccc", 9) == ["aaa", "bbb ccc"]
    assert split_text("aaa bbb ccc", 9) == ["aaa bbb", "ccc"]
    assert split_text("abcdefghijkl", 5) == ["abcde", "fghij", "kl"]


def test_split_keeps_short_text_and_drops_blank() -> None:
    assert split_text("  hello  ", 100) == ["hello"]
    assert split_text(" \n\n ", 10) == []
    assert split_text("exactly10!", 10) == ["exactly10!"]
    with pytest.raises(ValueError):
        split_text("x", 0)


def test_split_separator_right_after_the_limit() -> None:
    assert split_text("12345 678", 5) == ["12345", "678"]


@given(
    st.text(alphabet=st.sampled_from(list("ab c\n")), max_size=300),
    st.integers(min_value=1, max_value=40),
)
def test_split_properties(text: str, limit: int) -> None:
    chunks = split_text(text, limit)
    assert all(0 < len(c) <= limit for c in chunks)
    assert all(c == c.strip() for c in chunks)
    # Only whitespace is lost (at the cuts): every other character survives, in order.
    assert "".join("".join(chunks).split()) == "".join(text.split())


def test_truncate() -> None:
    assert truncate("hello", 10) == "hello"
    assert truncate("hello world", 6) == "hello…"


def test_contains_secret() -> None:
    assert contains_secret(["a", "xx-KEY-yy"], ["KEY"])
    assert not contains_secret(["a"], ["KEY"])
    assert not contains_secret(["KEY"], [])


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "a\\b", "a\x00b", "../x"])
def test_unsafe_names(name: str) -> None:
    assert not is_safe_name(name)


@pytest.fixture
def session(tmp_path: Path) -> SessionPaths:
    paths = SessionPaths(tmp_path / "sess")
    paths.outbox.mkdir(parents=True)
    return paths


def outbox(paths: SessionPaths, out_id: str = "out-1") -> Path:
    folder = paths.outbox / out_id
    folder.mkdir()
    return folder


def test_stage_copies_regular_files(session: SessionPaths, tmp_path: Path) -> None:
    (outbox(session) / "a.txt").write_bytes(b"one")
    staged = stage_files(session, "out-1", ["a.txt"], tmp_path / "stage")
    assert [(f.name, f.path.read_bytes()) for f in staged] == [("a.txt", b"one")]
    assert staged[0].path.parent == tmp_path / "stage"


@pytest.mark.parametrize(
    ("setup", "error"),
    [
        ("missing", "not in the outbox"),
        ("symlink", "symlink"),
        ("fifo", "not a regular file"),
        ("big", "limit"),
        ("dir", "not a regular file"),
    ],
)
def test_stage_refuses_bad_files(
    session: SessionPaths, tmp_path: Path, setup: str, error: str
) -> None:
    folder = outbox(session)
    target = folder / "f"
    if setup == "symlink":
        os.symlink(tmp_path / "secret", target)
        (tmp_path / "secret").write_text("host file")
    elif setup == "fifo":
        os.mkfifo(target)
    elif setup == "big":
        with open(target, "wb") as handle:
            handle.truncate(MAX_ATTACHMENT_BYTES + 1)
    elif setup == "dir":
        target.mkdir()
    with pytest.raises(Denied, match=error):
        stage_files(session, "out-1", ["f"], tmp_path / "stage")


def test_stage_refuses_unsafe_names_and_ids(session: SessionPaths, tmp_path: Path) -> None:
    outbox(session)
    with pytest.raises(Denied, match="unsafe file name"):
        stage_files(session, "out-1", ["../inbound.db"], tmp_path / "stage")
    with pytest.raises(Denied, match="unsafe outbound message id"):
        stage_files(session, "..", ["x"], tmp_path / "stage")


def test_stage_refuses_symlinked_folders(session: SessionPaths, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "out-1").mkdir(parents=True)
    (elsewhere / "out-1" / "f").write_text("x")
    os.symlink(elsewhere / "out-1", session.outbox / "out-1")
    with pytest.raises(Denied, match="not a plain folder"):
        stage_files(session, "out-1", ["f"], tmp_path / "stage")
    # agent/outbox itself replaced by a symlink
    os.unlink(session.outbox / "out-1")
    session.outbox.rmdir()
    os.symlink(elsewhere, session.outbox)
    with pytest.raises(Denied, match="not a plain folder"):
        stage_files(session, "out-1", ["f"], tmp_path / "stage")


def test_remove_outbox_never_follows_links(session: SessionPaths, tmp_path: Path) -> None:
    keep = tmp_path / "keep.txt"
    keep.write_text("precious")
    folder = outbox(session)
    os.symlink(keep, folder / "link")
    assert remove_outbox(session, "out-1")
    assert not folder.exists()
    assert keep.read_text() == "precious"
    assert not remove_outbox(session, "out-1")  # already gone
