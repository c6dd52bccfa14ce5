"""Choosing the OCI runtime and ulimits (ENVIRONMENT.md), from facts, no containers."""

from __future__ import annotations

from pathlib import Path

from nanoclaw_common.paths import Layout
from nanoclaw_common.sandbox import runtime
from nanoclaw_common.sandbox.runtime import RuntimeChoice, RuntimeFacts

HYBRID = """\
tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
"""
V1 = """\
tmpfs /sys/fs/cgroup tmpfs ro,nosuid 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0
"""
V2 = "cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec,relatime 0 0\n"


def facts(**overrides: object) -> RuntimeFacts:
    values: dict[str, object] = {
        "cgroup_mode": "v2",
        "runtimes": ["crun", "runc"],
        "rootless": False,
        "nofile_hard": 1_048_576,
        "nproc_hard": 4_194_304,
        "cap_sys_resource": False,
    }
    values.update(overrides)
    return RuntimeFacts(**values)  # type: ignore[arg-type]


def test_cgroup_mode() -> None:
    assert runtime.cgroup_mode(V2) == "v2"
    assert runtime.cgroup_mode(HYBRID) == "hybrid"
    assert runtime.cgroup_mode(V1) == "v1"
    assert runtime.cgroup_mode("proc /proc proc rw 0 0\n") == "unknown"


def test_a_normal_vps_needs_nothing() -> None:
    choice = runtime.choose(facts())
    assert (choice.runtime, choice.lower_ulimits, choice.needs_conf) == (None, False, False)


def test_hybrid_cgroups_need_runc() -> None:
    choice = runtime.choose(facts(cgroup_mode="hybrid"))
    assert choice.runtime == "runc" and not choice.lower_ulimits
    missing = runtime.choose(facts(cgroup_mode="hybrid", runtimes=["crun"]))
    assert missing.runtime is None and "runc is not installed" in missing.reasons[0]


def test_low_hard_limits_need_lower_ulimits() -> None:
    assert runtime.choose(facts(nofile_hard=20_000)).lower_ulimits
    assert runtime.choose(facts(nproc_hard=96_365)).lower_ulimits
    # ...unless Podman may raise them, or uses the caller's own limits (rootless).
    assert not runtime.choose(facts(nofile_hard=20_000, cap_sys_resource=True)).lower_ulimits
    assert not runtime.choose(facts(nofile_hard=20_000, rootless=True)).lower_ulimits


def test_render_conf() -> None:
    text = runtime.render_conf(RuntimeChoice("runc", True, ["why"]))
    assert '[containers]\ndefault_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]' in text
    assert '[engine]\nruntime = "runc"' in text
    assert "#   why" in text
    assert (
        "runtime" not in runtime.render_conf(RuntimeChoice(None, True, ["x"])).split("[engine]")[1]
    )


def test_write_conf_and_ensure(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    needed = RuntimeChoice("runc", True, ["test"])
    path = runtime.write_conf(layout, needed)
    assert path == tmp_path / "podman" / "containers.conf"
    assert path.read_text() == runtime.render_conf(needed)
    # A decision on disk (the doctor's) is kept by ensure_containers_conf.
    assert runtime.ensure_containers_conf(layout) == path
    assert runtime.write_conf(layout, RuntimeChoice(None, False, ["fine"])) is None
    assert not path.exists()
    assert not list((tmp_path / "podman").glob("*.tmp*"))


def test_podman_env() -> None:
    base = {"PATH": "/bin", "CONTAINERS_CONF": "/elsewhere.conf"}
    assert runtime.podman_env(None, base) == {"PATH": "/bin"}
    assert runtime.podman_env(Path("/x.conf"), base) == {
        "PATH": "/bin",
        "CONTAINERS_CONF": "/x.conf",
    }


def test_gather_facts_reads_this_machine() -> None:
    found = runtime.gather_facts(V2)
    assert found.cgroup_mode == "v2"
    assert found.nofile_hard > 0 and found.nproc_hard > 0
