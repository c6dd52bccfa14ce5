"""Image build helpers: the Debian mirror, package-name checks, per-group Containerfiles."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from nanoclaw_common.errors import Refused
from nanoclaw_common.sandbox import images


def test_mirror_from_deb822_sources(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\n"
        "# http://snapshot.debian.org/archive/debian/20250520T000000Z\n"
        "URIs: http://mirror.example.org/debian/\n"
        "Suites: bookworm bookworm-updates\n"
        "Components: main\n"
        "\n"
        "Types: deb\n"
        "URIs: http://mirror.example.org/debian-security\n"
        "Suites: bookworm-security\n"
    )
    assert images.debian_mirror(tmp_path) == "http://mirror.example.org/debian"


def test_mirror_from_one_line_sources(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list").write_text(
        "# deb http://commented.example/debian bookworm main\n"
        "deb-src http://src.example/debian bookworm main\n"
        "deb [signed-by=/usr/share/keyrings/k.gpg arch=amd64]"
        " https://deb.example.net/debian bookworm main\n"
    )
    assert images.debian_mirror(tmp_path) == "https://deb.example.net/debian"


def test_mirror_falls_back_on_non_debian_hosts(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list").write_text("deb http://archive.ubuntu.com/ubuntu jammy main\n")
    assert images.debian_mirror(tmp_path) == images.DEFAULT_MIRROR
    assert images.debian_mirror(tmp_path / "nothing") == images.DEFAULT_MIRROR


def test_package_names() -> None:
    assert images.check_packages(["jq", "ffmpeg", "jq", "g++"], ["requests", "ruamel.yaml"]) == (
        ["ffmpeg", "g++", "jq"],
        ["requests", "ruamel.yaml"],
    )
    for apt in (["-y"], ["jq;rm"], ["Jq"], ["a b"], ["x"], ["$(id)"]):
        with pytest.raises(Refused, match="apt"):
            images.check_packages(apt, [])
    for pip in (["--index-url=http://evil"], ["git+https://x/y"], ["pkg==1.0"], ["a/b"], ["-e."]):
        with pytest.raises(Refused, match="pip"):
            images.check_packages([], pip)
    with pytest.raises(Refused, match="no packages"):
        images.check_packages([], [])
    with pytest.raises(Refused, match="too many"):
        images.check_packages([f"p{i}x" for i in range(41)], [])


def test_group_image_tag() -> None:
    assert (
        images.group_image_tag("localhost/nanoclaw-agent:latest", "ag-17-AbC")
        == "localhost/nanoclaw-agent:ag-17-abc"
    )
    assert images.group_image_tag("registry:5000/agent", "ag-1") == "registry:5000/agent:ag-1"


def test_group_containerfile() -> None:
    text = images.render_group_containerfile("localhost/nanoclaw-agent:latest", ["jq"], ["six"])
    lines = text.splitlines()
    assert lines[0] == "FROM localhost/nanoclaw-agent:latest"
    assert lines[1] == "USER root"
    assert "apt-get install -y --no-install-recommends jq" in lines[2]
    # An apt package may bring a setuid binary (sudo, ping...): none is kept.
    assert lines[2].endswith("&& find / -xdev -perm /6000 -type f -exec chmod a-s {} +")
    assert "--mount=type=secret,id=cacert" in lines[3] and "pip install six" in lines[3]
    assert lines[-1] == "USER 20000:20000"
    assert "pip" not in images.render_group_containerfile("base", ["jq"], [])


def test_source_root_has_the_containerfile() -> None:
    root = images.source_root()
    text = (root / "Containerfile").read_text()
    assert "ARG BASE_IMAGE=docker.io/library/python:3.12-slim" in text
    assert "ARG AGENT_UID=20000" in text  # ownership.AGENT_UID


def test_the_image_starts_the_runner_isolated_from_a_read_only_folder() -> None:
    """The runner's import path holds nothing the agent can write (docs/security.md); the
    sandbox tests check the built image, this the file it is built from."""
    text = (images.source_root() / "Containerfile").read_text()
    assert 'CMD ["/opt/venv/bin/python", "-I", "-B", "-u", "-m", "agent_runner"]' in text
    assert "\nWORKDIR /\n" in text and "WORKDIR /workspace" not in text
    assert re.search(r"^\s*(ENV\s+)?PYTHONPATH=", text, re.MULTILINE) is None
    assert "nanoclaw.pth" in text
    assert "find / -xdev -perm /6000 -type f -exec chmod a-s {} +" in text
