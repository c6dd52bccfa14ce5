"""The container's mounts and the extra-mount allowlist (upstream-host.md §6.6), no Podman."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nanoclaw_common.paths import SessionPaths
from nanoclaw_common.sandbox import mounts
from nanoclaw_common.sandbox.mounts import (
    AllowedRoot,
    Allowlist,
    AllowlistError,
    Mount,
    RequestedMount,
    check_extra_mounts,
    load_allowlist,
    parse_requested,
    proxy_mount,
    session_mounts,
)


def test_session_mounts_are_exactly_the_documented_ones(tmp_path: Path) -> None:
    paths = SessionPaths(tmp_path / "sessions" / "ag" / "sess")
    group = tmp_path / "groups" / "main"
    sock = tmp_path / "run" / "proxy.sock"
    extra = Mount("bind", "/srv/docs", "/workspace/extra/docs", read_only=True)
    found = session_mounts(paths, group, proxy_mount(sock, tmp_path / "run"), [extra])
    assert [(m.kind, m.source, m.target, m.read_only) for m in found] == [
        ("bind", str(paths.root), "/session", True),
        ("bind", str(paths.agent_dir), "/session/agent", False),
        ("bind", str(group), "/workspace", False),
        ("tmpfs", "tmpfs", "/tmp", False),
        ("bind", str(sock), "/run/nanoclaw/proxy.sock", True),
        ("bind", "/srv/docs", "/workspace/extra/docs", True),
    ]
    # Without a proxy socket (the scripted model) there is no socket mount at all.
    assert all(m.target != "/run/nanoclaw/proxy.sock" for m in session_mounts(paths, group, None))


def test_proxy_mount_prefers_a_folder_of_its_own(tmp_path: Path) -> None:
    run = tmp_path / "run"
    # In run/ next to the other sockets: only the socket file is mounted.
    assert proxy_mount(run / "proxy.sock", run) == Mount(
        "bind", str(run / "proxy.sock"), "/run/nanoclaw/proxy.sock", read_only=True
    )
    # In a folder of its own: the folder, so a restarted proxy's new socket is seen at once.
    assert proxy_mount(run / "proxy" / "proxy.sock", run) == Mount(
        "bind", str(run / "proxy"), "/run/nanoclaw", read_only=True
    )
    # A socket with another name could not appear at /run/nanoclaw/proxy.sock that way.
    assert proxy_mount(run / "proxy" / "other.sock", run).source == str(
        run / "proxy" / "other.sock"
    )


def test_mount_to_podman() -> None:
    # Every bind is nosuid,nodev (podman-py passes options only through volumes=).
    assert Mount("bind", "/a", "/b", read_only=True).to_podman_volume() == {
        "bind": "/b",
        "mode": "ro",
        "extended_mode": ["nosuid", "nodev"],
    }
    assert Mount("bind", "/a", "/b", read_only=False).to_podman_volume()["mode"] == "rw"
    tmpfs = Mount("tmpfs", "tmpfs", "/tmp", read_only=False).to_podman()
    assert tmpfs["type"] == "tmpfs" and tmpfs["target"] == "/tmp" and tmpfs["mode"] == "1777"
    with pytest.raises(ValueError):
        Mount("bind", "/a", "/b", read_only=True).to_podman()
    with pytest.raises(ValueError):
        Mount("tmpfs", "tmpfs", "/tmp", read_only=False).to_podman_volume()


# -- the allowlist file ---------------------------------------------------------------------


def write_allowlist(
    path: Path, roots: list[dict[str, object]], blocked: tuple[str, ...] = ()
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"allowedRoots": roots, "blockedPatterns": list(blocked)}))
    return path


def test_missing_allowlist_means_nothing_extra(tmp_path: Path) -> None:
    assert load_allowlist(tmp_path / "none.json", tmp_path / "data") is None
    result = check_extra_mounts([RequestedMount(str(tmp_path))], None, protected=[])
    assert result.mounts == []
    assert [r.reason for r in result.refusals] == ["no mount allowlist file"]


def test_allowlist_inside_the_data_folder_is_refused(tmp_path: Path) -> None:
    home = tmp_path / "data"
    path = write_allowlist(home / "groups" / "main" / "allow.json", [{"path": str(tmp_path)}])
    with pytest.raises(AllowlistError, match="inside the data folder"):
        load_allowlist(path, home)
    # ...also when reached through a symlink from outside.
    link = tmp_path / "allow-link.json"
    link.symlink_to(path)
    with pytest.raises(AllowlistError, match="inside the data folder"):
        load_allowlist(link, home)


def test_bad_allowlist_files_are_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(AllowlistError):
        load_allowlist(bad, tmp_path / "data")
    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps({"allowedRoots": [], "nonMainReadOnly": True}))
    with pytest.raises(AllowlistError):
        load_allowlist(unknown, tmp_path / "data")
    big = tmp_path / "big.json"
    big.write_text(" " * (mounts.MAX_ALLOWLIST_BYTES + 1))
    with pytest.raises(AllowlistError, match="larger"):
        load_allowlist(big, tmp_path / "data")


def test_allowlist_round_trip(tmp_path: Path) -> None:
    path = write_allowlist(
        tmp_path / "allow.json",
        [{"path": "~/projects", "allowReadWrite": True, "description": "code"}],
        ("secrets",),
    )
    allowlist = load_allowlist(path, tmp_path / "data")
    assert allowlist == Allowlist(
        allowed_roots=[AllowedRoot("~/projects", allow_read_write=True, description="code")],
        blocked_patterns=["secrets"],
    )


def test_parse_requested(tmp_path: Path) -> None:
    assert parse_requested('[{"hostPath": "/srv", "containerPath": "s", "readonly": false}]') == [
        RequestedMount("/srv", "s", readonly=False)
    ]
    for bad in ('{"hostPath": "/x"}', '[{"host_path": "/x"}]', "[1]", "nope"):
        with pytest.raises(AllowlistError):
            parse_requested(bad)
    too_many = json.dumps([{"hostPath": f"/x{i}"} for i in range(mounts.MAX_EXTRA_MOUNTS + 1)])
    with pytest.raises(AllowlistError, match="at most"):
        parse_requested(too_many)


# -- checking requested mounts ----------------------------------------------------------------


@pytest.fixture
def tree(tmp_path: Path) -> dict[str, Path]:
    """An allowed root with a few folders, a blocked one, and places outside it."""
    root = tmp_path / "projects"
    (root / "docs").mkdir(parents=True)
    (root / "docs" / "readme.txt").write_text("hello")
    (root / ".ssh").mkdir()
    (root / "app-credentials").mkdir()
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (root / "escape").symlink_to(outside)
    (root / "innocent").symlink_to(root / ".ssh")
    (root / "file.txt").write_text("x")
    home = tmp_path / "data"
    home.mkdir()
    return {"root": root, "outside": outside, "home": home, "tmp": tmp_path}


def check(tree: dict[str, Path], *requests: RequestedMount, rw: bool = False) -> mounts.ExtraMounts:
    allowlist = Allowlist(
        allowed_roots=[
            AllowedRoot(str(tree["root"]), allow_read_write=rw),
            AllowedRoot(str(tree["tmp"] / "no-such-root")),
        ],
        blocked_patterns=["private-stuff"],
    )
    return check_extra_mounts(
        requests, allowlist, protected=[tree["home"], tree["tmp"] / "allow.json"]
    )


def reasons(result: mounts.ExtraMounts) -> list[str]:
    return [r.reason for r in result.refusals]


def test_accepted_mount_is_read_only_by_default(tree: dict[str, Path]) -> None:
    result = check(tree, RequestedMount(str(tree["root"] / "docs")))
    assert result.refusals == []
    assert result.mounts == [
        Mount("bind", str(tree["root"] / "docs"), "/workspace/extra/docs", read_only=True)
    ]


def test_blocked_pattern_is_refused(tree: dict[str, Path]) -> None:
    result = check(
        tree,
        RequestedMount(str(tree["root"] / ".ssh")),
        RequestedMount(str(tree["root"] / "app-credentials")),
    )
    assert result.mounts == []
    assert reasons(result) == [
        "path matches blocked pattern '.ssh'",
        "path matches blocked pattern 'credentials'",
    ]


def test_blocked_pattern_behind_a_symlink_is_refused(tree: dict[str, Path]) -> None:
    result = check(tree, RequestedMount(str(tree["root"] / "innocent")))
    assert result.mounts == []
    assert "matches blocked pattern '.ssh'" in reasons(result)[0]


def test_file_patterns_merge_with_the_defaults(tree: dict[str, Path]) -> None:
    private = tree["root"] / "private-stuff"
    private.mkdir()
    assert reasons(check(tree, RequestedMount(str(private)))) == [
        "path matches blocked pattern 'private-stuff'"
    ]


def test_symlink_escaping_the_root_is_refused(tree: dict[str, Path]) -> None:
    result = check(tree, RequestedMount(str(tree["root"] / "escape"), container_path="x"))
    assert result.mounts == []
    assert reasons(result) == [f"real path {tree['outside']} is not inside an allowed root"]


def test_path_outside_every_root_is_refused(tree: dict[str, Path]) -> None:
    result = check(tree, RequestedMount(str(tree["outside"])))
    assert result.mounts == []
    assert "is not inside an allowed root" in reasons(result)[0]


def test_read_write_needs_a_root_that_allows_it(tree: dict[str, Path]) -> None:
    wanted = RequestedMount(str(tree["root"] / "docs"), readonly=False)
    refused = check(tree, wanted, rw=False)
    assert [m.read_only for m in refused.mounts] == [True]
    assert reasons(refused) == [f"read-write not allowed under {tree['root']}; mounted read-only"]
    allowed = check(tree, wanted, rw=True)
    assert [m.read_only for m in allowed.mounts] == [False]
    assert allowed.refusals == []


def test_protected_paths_cannot_be_mounted(tree: dict[str, Path]) -> None:
    # An allowed root that contains the data folder must still not expose it, whole or part.
    allowlist = Allowlist(allowed_roots=[AllowedRoot(str(tree["tmp"]))])
    result = check_extra_mounts(
        [RequestedMount(str(tree["tmp"]), container_path="all"), RequestedMount(str(tree["home"]))],
        allowlist,
        protected=[tree["home"]],
    )
    assert result.mounts == []
    assert all("overlaps" in reason for reason in reasons(result))


def test_bad_requests_are_refused(tree: dict[str, Path]) -> None:
    docs = str(tree["root"] / "docs")
    result = check(
        tree,
        RequestedMount("projects/docs"),
        RequestedMount(docs, container_path="../up"),
        RequestedMount(docs, container_path="a/b"),
        RequestedMount(docs, container_path=""),
        RequestedMount(docs, container_path="c:d"),
        RequestedMount(str(tree["root"] / "missing")),
        RequestedMount(str(tree["root"] / "file.txt")),
    )
    assert result.mounts == []
    assert reasons(result) == [
        "host path must be absolute (or start with ~)",
        "container path '../up' must be one plain name",
        "container path 'a/b' must be one plain name",
        "container path '' must be one plain name",
        "container path 'c:d' must be one plain name",
        "host path does not exist",
        "host path is not a directory",
    ]


def test_a_name_is_used_once(tree: dict[str, Path]) -> None:
    docs = str(tree["root"] / "docs")
    result = check(tree, RequestedMount(docs), RequestedMount(docs))
    assert len(result.mounts) == 1
    assert reasons(result) == ["container path 'docs' used twice"]


def test_a_host_folder_is_mounted_once(tree: dict[str, Path]) -> None:
    # Two names for one folder: podman-py keys binds by host path (spec.bind_volumes).
    docs = str(tree["root"] / "docs")
    result = check(
        tree,
        RequestedMount(docs, container_path="a"),
        RequestedMount(docs, container_path="b"),
    )
    assert [m.target for m in result.mounts] == ["/workspace/extra/a"]
    assert reasons(result) == [f"host folder {Path(docs).resolve()} used twice"]
