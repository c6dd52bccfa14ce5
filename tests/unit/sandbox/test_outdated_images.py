"""``nanoclaw image build``'s check of the group images: which are built on the agent image
just built (the Podman side is tests/sandbox/test_cli.py)."""

from __future__ import annotations

from nanoclaw_cli.sandbox import built_on

BASE = ["sha256:a", "sha256:b"]


def test_an_image_built_from_the_base_starts_with_its_layers() -> None:
    assert built_on(BASE, [*BASE, "sha256:packages"])
    assert built_on(BASE, BASE)  # the base itself, tagged for the group


def test_anything_else_is_from_an_older_base() -> None:
    assert not built_on(BASE, ["sha256:a", "sha256:old", "sha256:packages"])  # base rebuilt
    assert not built_on(BASE, ["sha256:a"])  # shorter: the base's own base
    assert not built_on(BASE, ["sha256:x", "sha256:a", "sha256:b"])
    assert not built_on(BASE, [])
