"""``nanoclaw doctor``, ``nanoclaw image build`` and ``nanoclaw podman-service`` against the
real Podman of this machine."""

from __future__ import annotations

import json
import secrets
import signal
import subprocess
import sys
from pathlib import Path

import podman
import pytest
from click.testing import CliRunner

from nanoclaw_cli import cli
from nanoclaw_common.paths import Layout
from nanoclaw_common.sandbox import images, mounts, runtime, seccomp
from nanoclaw_common.sandbox.service import socket_answers
from nanoclaw_common.store import CentralStore
from tests.environ import clean_environ
from tests.waiting import wait_until

pytestmark = pytest.mark.podman


def test_doctor_tries_containers_and_chooses(home: Path, agent_image: str) -> None:
    result = CliRunner().invoke(cli, ["--home", str(home), "doctor", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["ok"] is True
    assert report["agent_image_present"] is True and report["probe_image"] == agent_image
    assert report["podman"].startswith("podman version")
    assert report["probes"] and any(probe["ok"] for probe in report["probes"])
    # What it chose is what every later podman process of this data folder uses.
    chosen = report["chosen"]
    conf = runtime.conf_path(Layout(home))
    if chosen == "defaults":
        assert not conf.exists()
    else:
        assert chosen == str(conf) and conf.is_file()
        assert runtime.ensure_containers_conf(Layout(home)) == conf
    # The first candidate is the heuristic's own choice; a failed one says why.
    for probe in report["probes"]:
        assert probe["ok"] or probe["error"]
    # The confinement, tried in a container started as wake starts one.
    confinement = report["confinement"]
    assert confinement["in_force"] is True and confinement["error"] == ""
    assert confinement["profile"] == str(seccomp.profile_path())
    assert {check["name"]: check["ok"] for check in confinement["checks"]} == {
        "seccomp filter": True,
        "no new privileges": True,
        "FIFOs refused": True,
        "user namespaces refused": True,
        "binds nosuid,nodev": True,
        "runner starts isolated (python -I)": True,
    }
    human = CliRunner().invoke(cli, ["--home", str(home), "doctor"])
    assert human.exit_code == 0 and "Throwaway containers" in human.output
    assert "confinement in force" in human.output


def test_doctor_says_when_the_confinement_is_not_in_force(
    home: Path, agent_image: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A profile that allows everything still shows `Seccomp: 2`: the doctor goes by what the
    container can do, and fails."""
    permissive = tmp_path / "allow-all.json"
    permissive.write_text(json.dumps({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": []}))
    monkeypatch.setattr(seccomp, "profile_path", lambda: permissive)
    monkeypatch.setattr(mounts, "BIND_OPTIONS", ())
    result = CliRunner().invoke(cli, ["--home", str(home), "doctor", "--json"])
    assert result.exit_code == 1, result.output
    report = json.loads(result.output)
    assert report["ok"] is False and any(probe["ok"] for probe in report["probes"])
    confinement = report["confinement"]
    assert confinement["in_force"] is False and confinement["profile"] == str(permissive)
    failed = {check["name"]: check["found"] for check in confinement["checks"] if not check["ok"]}
    assert set(failed) == {"FIFOs refused", "user namespaces refused", "binds nosuid,nodev"}
    assert "mkfifo /workspace: allowed" in failed["FIFOs refused"]
    assert "unshare(CLONE_NEWUSER): allowed" in failed["user namespaces refused"]
    assert "/workspace: rw,relatime" in failed["binds nosuid,nodev"]
    human = CliRunner().invoke(cli, ["--home", str(home), "doctor"])
    assert human.exit_code == 1 and "confinement NOT in force" in human.output


def test_image_build_reuses_the_offline_base(home: Path, agent_image: str) -> None:
    """CI built the image moments ago, so this is the cached path: the debootstrapped base is
    not made again, and Podman's layer cache makes the build quick."""
    result = CliRunner().invoke(
        cli, ["--home", str(home), "image", "build", "--offline", "--tag", agent_image]
    )
    assert result.exit_code == 0, result.output
    assert "using the cached offline base localhost/nanoclaw-base:latest" in result.output
    assert f"built {agent_image} from localhost/nanoclaw-base:latest" in result.output


def test_a_rebuild_removes_the_image_it_replaces(home: Path, agent_image: str) -> None:
    """Each update of the checkout rebuilds the image; the one it replaces is removed, not
    left behind untagged. One that has another name stays."""
    env = runtime.podman_env(runtime.ensure_containers_conf(Layout(home)))
    repository = f"localhost/nanoclaw-test-{secrets.token_hex(4)}"
    target, other_name = f"{repository}:agent", f"{repository}:kept"
    build = ["--home", str(home), "image", "build", "--offline", "--tag", target]
    try:
        # The "old" image: one unrelated layer (an empty tar archive).
        podman_cli(env, "import", "-", target, stdin=b"\0" * 10240)
        old = images.image_id(target, env)
        result = CliRunner().invoke(cli, build)
        assert result.exit_code == 0, result.output
        assert f"removed the previous image {old[:12]}" in result.output  # type: ignore[index]
        assert old is not None and images.image_id(old, env) is None
        # Named elsewhere: kept.
        podman_cli(env, "import", "-", target, stdin=b"\0" * 10240)
        old = images.image_id(target, env)
        podman_cli(env, "tag", target, other_name)
        result = CliRunner().invoke(cli, build)
        assert result.exit_code == 0, result.output
        assert old is not None and images.image_id(other_name, env) == old
        assert "kept the previous image" in result.output
        assert images.image_id(target, env) not in (None, old)
    finally:
        # Only names: the image the build made is the checkout's agent image (or shares its
        # layers), which other tests use.
        # `podman untag IMAGE` alone would strip every name, the agent image's too.
        subprocess.run(
            ["podman", "untag", target, target], env=env, capture_output=True, check=False
        )
        subprocess.run(["podman", "rmi", other_name], env=env, capture_output=True, check=False)


def test_image_build_names_group_images_on_an_older_agent_image(
    home: Path, agent_image: str, central: CentralStore
) -> None:
    """Group images are built FROM the agent image; after a rebuild of it, those on an older
    one (or missing) are listed so the operator rebuilds them."""
    env = runtime.podman_env(runtime.ensure_containers_conf(Layout(home)))
    build = ["--home", str(home), "image", "build", "--offline"]
    # A first build brings the agent image up to this checkout (so the second one, below, is
    # a cache hit and keeps its layers).
    first = CliRunner().invoke(cli, build)
    assert first.exit_code == 0, first.output
    repository = f"localhost/nanoclaw-test-{secrets.token_hex(4)}"
    fresh, stale, gone = (f"{repository}:{name}" for name in ("fresh", "stale", "gone"))
    podman_cli(env, "tag", agent_image, fresh)
    # An image with one unrelated layer stands for one built on an older agent image.
    podman_cli(env, "import", "-", stale, stdin=b"\0" * 10240)  # an empty tar archive
    try:
        for name, tag in (("Fresh", fresh), ("Stale", stale), ("Gone", gone), ("Plain", None)):
            group = central.create_agent_group(name, name.lower())
            central.update_container_config(group.id, image_tag=tag)
        result = CliRunner().invoke(cli, build)
    finally:
        for tag in (fresh, stale):
            podman_cli(env, "rmi", tag)
    assert result.exit_code == 0, result.output
    assert f"note: 2 group image(s) are not built on this {agent_image}" in result.output
    note = result.output.split("note: ", 1)[1].splitlines()
    listed = [line.strip() for line in note[1:] if line.strip()]
    assert [line.split(" (", 1)[0] for line in listed] == ["Gone", "Stale"]
    assert listed[0].endswith(f"{gone} (missing)")
    assert listed[1].endswith(f"{stale} (built from an older agent image)")
    assert "nanoclaw image build --groups" in result.output


def test_image_build_groups_rebuilds_or_releases_outdated_group_images(
    home: Path, agent_image: str, central: CentralStore
) -> None:
    """--groups: a group with packages gets its image rebuilt FROM the new agent image (with
    the packages it had); a group with none goes back to the agent image."""
    env = runtime.podman_env(runtime.ensure_containers_conf(Layout(home)))
    build = ["--home", str(home), "image", "build", "--offline"]
    repository = f"localhost/nanoclaw-test-{secrets.token_hex(4)}"
    tools = central.create_agent_group("Tools", "tools")
    central.update_container_config(
        tools.id, image_tag=f"{repository}:tools", packages_apt='["jq"]'
    )
    bare = central.create_agent_group("Bare", "bare")
    central.update_container_config(bare.id, image_tag=f"{repository}:bare")
    rebuilt = CliRunner().invoke(cli, [*build, "--groups"])
    assert rebuilt.exit_code == 0, rebuilt.output
    assert "rebuilding the image of Tools" in rebuilt.output
    assert f"Bare ({bare.id}) uses the agent image again" in rebuilt.output
    tools_tag = central.get_container_config(tools.id).image_tag  # type: ignore[union-attr]
    try:
        assert tools_tag and tools_tag != f"{repository}:tools"
        assert central.get_container_config(bare.id).image_tag is None  # type: ignore[union-attr]
        jq = subprocess.run(
            ["podman", "run", "--rm", "--network", "none", tools_tag, "jq", "--version"],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        assert jq.returncode == 0 and jq.stdout.startswith("jq-"), jq.stderr
        again = CliRunner().invoke(cli, build)
        assert again.exit_code == 0 and "note:" not in again.output
    finally:
        if tools_tag:
            podman_cli(env, "rmi", "--force", tools_tag)


def podman_cli(env: dict[str, str], *argv: str, stdin: bytes | None = None) -> None:
    subprocess.run(["podman", *argv], env=env, input=stdin, capture_output=True, check=True)


def test_podman_service_command(home: Path) -> None:
    """supervisord's ``podman-api`` program: our containers.conf, then podman itself (exec),
    serving the data folder's socket until TERM."""
    socket_path = home / "run" / "podman.sock"
    env = clean_environ()
    process = subprocess.Popen(
        [str(Path(sys.executable).with_name("nanoclaw")), "--home", str(home), "podman-service"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_until(
            lambda: socket_answers(socket_path), timeout_s=30.0, what="podman system service"
        )
        with open(f"/proc/{process.pid}/cmdline", "rb") as handle:
            assert handle.read().split(b"\0")[:3] == [b"podman", b"system", b"service"]
        with podman.PodmanClient(base_url=f"unix://{socket_path}") as client:
            assert client.ping()
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
        assert process.stderr is not None
        process.stderr.close()
