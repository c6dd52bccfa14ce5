"""The container's flags (DESIGN.md §7) as podman-py create() arguments, no Podman."""

from __future__ import annotations

import os

import pytest

from nanoclaw_common.errors import Refused
from nanoclaw_common.sandbox import seccomp, spec
from nanoclaw_common.sandbox.mounts import Mount
from nanoclaw_common.sandbox.ownership import AGENT_GID, AGENT_UID


def make_spec(**overrides: object) -> spec.RunSpec:
    values: dict[str, object] = {
        "name": "nanoclaw-inst-sess-1",
        "image": "localhost/nanoclaw-agent:latest",
        "command": None,
        "labels": spec.labels("inst", "sess-1", "ag-1", "run-1"),
        "env": spec.run_env("run-1", "Europe/Paris"),
        "mounts": [Mount("bind", "/h/s", "/session", read_only=True)],
        "memory_mb": 512,
        "cpus": 1.5,
        "pids": 128,
    }
    values.update(overrides)
    return spec.RunSpec(**values)  # type: ignore[arg-type]


def test_container_name() -> None:
    assert spec.container_name("ab12cd34", "sess-1-x") == "nanoclaw-ab12cd34-sess-1-x"
    for bad in ("a:b", "a/b", "a b"):
        with pytest.raises(Refused):
            spec.container_name("inst", bad)


def test_security_flags() -> None:
    kwargs = spec.create_kwargs(make_spec())
    assert kwargs["network_mode"] == "none"
    assert kwargs["read_only"] is True
    assert kwargs["cap_drop"] == ["ALL"]
    assert kwargs["no_new_privileges"] is True
    assert kwargs["user"] == f"{AGENT_UID}:{AGENT_GID}"
    assert min(AGENT_UID, AGENT_GID) > 0  # never root
    assert "userns_mode" not in kwargs
    assert "privileged" not in kwargs and "cap_add" not in kwargs


def test_limits() -> None:
    kwargs = spec.create_kwargs(make_spec())
    assert kwargs["mem_limit"] == "512m" and kwargs["memswap_limit"] == "512m"
    assert kwargs["cpu_period"] == 100_000 and kwargs["cpu_quota"] == 150_000
    assert kwargs["pids_limit"] == 128
    assert kwargs["ulimits"] == [
        {"Name": "nofile", "Soft": 4096, "Hard": 4096},
        {"Name": "nproc", "Soft": 4096, "Hard": 4096},
    ]
    assert spec.create_kwargs(make_spec(cpus=0.001))["cpu_quota"] == 1_000  # never zero


def test_identity_and_environment() -> None:
    kwargs = spec.create_kwargs(make_spec())
    assert kwargs["name"] == "nanoclaw-inst-sess-1"
    assert kwargs["labels"] == {
        "nanoclaw.install": "inst",
        "nanoclaw.session": "sess-1",
        "nanoclaw.group": "ag-1",
        "nanoclaw.run": "run-1",
    }
    # The environment is exactly this: nothing secret (PID 1's environ is readable inside),
    # nothing inherited from the host. The proxy token goes through agent/.proxy-token.
    assert kwargs["environment"] == {"NANOCLAW_RUN_ID": "run-1", "TZ": "Europe/Paris"}
    assert kwargs["mounts"] == []
    assert kwargs["volumes"] == {
        "/h/s": {"bind": "/session", "mode": "ro", "extended_mode": ["nosuid", "nodev"]}
    }
    assert kwargs["init"] is True


def test_confinement() -> None:
    kwargs = spec.create_kwargs(make_spec())
    # Our own profile, from the installed package, for every container.
    assert kwargs["seccomp_profile_path"] == str(seccomp.profile_path())
    assert seccomp.profile_path().is_file()
    # The runner's working folder is nothing a mount makes writable.
    assert kwargs["working_dir"] == "/"


def test_mounts_split_between_binds_and_tmpfs() -> None:
    mounts = [
        Mount("bind", "/h/s", "/session", read_only=True),
        Mount("bind", "/h/s/agent", "/session/agent", read_only=False),
        Mount("tmpfs", "tmpfs", "/tmp", read_only=False),
    ]
    kwargs = spec.create_kwargs(make_spec(mounts=mounts))
    assert [m["target"] for m in kwargs["mounts"]] == ["/tmp"]
    options = ["nosuid", "nodev"]
    assert kwargs["volumes"] == {
        "/h/s": {"bind": "/session", "mode": "ro", "extended_mode": options},
        "/h/s/agent": {"bind": "/session/agent", "mode": "rw", "extended_mode": options},
    }
    # Keyed by host path: a second bind of one folder would silently replace the first.
    twice = [*mounts, Mount("bind", "/h/s", "/workspace/extra/s", read_only=True)]
    with pytest.raises(Refused, match="mounted twice"):
        spec.create_kwargs(make_spec(mounts=twice))


def test_rootless_keeps_the_host_user() -> None:
    kwargs = spec.create_kwargs(make_spec(rootless=True))
    assert kwargs["userns_mode"] == "keep-id"
    assert kwargs["user"] == f"{os.getuid()}:{os.getgid()}"


def test_the_environment_holds_no_test_hooks_unless_asked() -> None:
    assert spec.run_env("run-1", "UTC") == {"NANOCLAW_RUN_ID": "run-1", "TZ": "UTC"}
    armed = spec.run_env("run-1", "UTC", test_faults=True)
    # The runner arms its test-only crash points from its own agent/ folder.
    assert armed["NANOCLAW_TEST_FAULTS"] == "/session/agent/.test-faults"
