"""Group images through the podman command line (what delivery uses after an approval): the
merge with earlier packages, the strict name checks, recording only on success, and no
podman-py. The ``podman`` run here is a real child process (tests/fakes/podman_cli.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from nanoclaw_common.errors import Refused
from nanoclaw_common.paths import Layout
from nanoclaw_common.sandbox.group_image import GroupImageBuilder, build_recorded_group_image
from nanoclaw_common.sandbox.images import ImageBuildError
from nanoclaw_common.settings import Settings
from nanoclaw_common.store import CentralStore, rows
from tests.fakes.podman_cli import FakePodmanCli

AGENT_IMAGE = "localhost/nanoclaw-agent:latest"


@pytest.fixture
def podman(tmp_path: Path) -> FakePodmanCli:
    return FakePodmanCli.install(tmp_path / "fake-podman")


@pytest.fixture
def group(central: CentralStore) -> rows.AgentGroup:
    return central.create_agent_group("Helper", "helper")


def build(  # noqa: PLR0917 - a short spelling of the call under test
    central: CentralStore,
    layout: Layout,
    podman: FakePodmanCli,
    agent_group_id: str,
    apt: list[str],
    pip: list[str],
    out: Callable[[str], None] = lambda _: None,
) -> str:
    return build_recorded_group_image(
        central,
        layout,
        agent_group_id,
        agent_image=AGENT_IMAGE,
        apt=apt,
        pip=pip,
        out=out,
        base_env=podman.env(),
    )


def packages(central: CentralStore, group: rows.AgentGroup) -> tuple[list[str], list[str], str]:
    config = central.get_container_config(group.id)
    assert config is not None
    return json.loads(config.packages_apt), json.loads(config.packages_pip), config.image_tag or ""


def test_build_merges_earlier_packages_and_records_the_tag(
    central: CentralStore, layout: Layout, group: rows.AgentGroup, podman: FakePodmanCli
) -> None:
    lines: list[str] = []
    tag = build(central, layout, podman, group.id, ["jq"], ["rich"], out=lines.append)
    assert tag == f"localhost/nanoclaw-agent:{group.id.lower()}"
    assert packages(central, group) == (["jq"], ["rich"], tag)
    # The second approval's image holds the first one's packages too, sorted and unique.
    build(central, layout, podman, group.id, ["curl", "jq"], [], out=lines.append)
    assert packages(central, group) == (["curl", "jq"], ["rich"], tag)
    (first_tag, first), (_, second) = podman.builds()
    assert first_tag == tag
    assert first.startswith(f"FROM {AGENT_IMAGE}\n")
    assert "--no-install-recommends jq &&" in first and "pip install rich" in first
    assert "--no-install-recommends curl jq &&" in second and "pip install rich" in second
    assert any("fake podman build" in line for line in lines)  # podman's output is passed on


def test_a_failed_build_records_nothing(
    central: CentralStore, layout: Layout, group: rows.AgentGroup, podman: FakePodmanCli
) -> None:
    podman.fail_with("E: Unable to locate package jq")
    with pytest.raises(ImageBuildError, match="Unable to locate package jq"):
        build(central, layout, podman, group.id, ["jq"], [])
    assert packages(central, group) == ([], [], "")


@pytest.mark.parametrize(
    ("apt", "pip", "match"),
    [
        (["-y"], [], "apt"),
        (["jq;rm"], [], "apt"),
        ([], ["--index-url=http://evil"], "pip"),
        ([], ["pkg==1.0"], "pip"),
        ([], [], "no packages"),
    ],
)
def test_bad_names_never_reach_podman(  # noqa: PLR0917 - fixtures plus parameters
    central: CentralStore,
    layout: Layout,
    group: rows.AgentGroup,
    podman: FakePodmanCli,
    apt: list[str],
    pip: list[str],
    match: str,
) -> None:
    with pytest.raises(Refused, match=match):
        build(central, layout, podman, group.id, apt, pip)
    assert podman.calls() == []


def test_a_group_without_config_is_refused(
    central: CentralStore, layout: Layout, podman: FakePodmanCli
) -> None:
    with pytest.raises(Refused, match="no container config"):
        build(central, layout, podman, "ag-missing", ["jq"], [])
    assert podman.calls() == []


def test_builder_uses_its_own_connection_and_the_settings_image(
    settings: Settings, central: CentralStore, group: rows.AgentGroup, podman: FakePodmanCli
) -> None:
    builder = GroupImageBuilder(settings, base_env=podman.env())
    tag = builder.build_group_image(group.id, ["jq"], [])
    assert packages(central, group) == (["jq"], [], tag)
    assert podman.builds()[0][1].startswith(f"FROM {settings.image}\n")


def test_no_podman_py_is_imported() -> None:
    """The point of this module: delivery builds images without podman-py in memory."""
    code = (
        "import sys\n"
        "import nanoclaw_common.sandbox.group_image\n"
        "loaded = sorted(m for m in sys.modules if m == 'podman' or m.startswith('podman.')"
        " or m == 'nanoclaw_common.sandbox.core')\n"
        "assert not loaded, loaded\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
