"""install_packages names: one set of rules (nanoclaw_common.packages) for the agent's tool
inside the container, the decoding of the row on the host, and the group image build."""

from __future__ import annotations

import pytest

from agent_runner.tools.admin import check_packages as tool_check
from agent_runner.tools.base import ToolError
from nanoclaw_common import messages as m
from nanoclaw_common import packages
from nanoclaw_common.errors import DecodeError, Refused
from nanoclaw_common.sandbox import images

GOOD_APT = ["jq", "g++", "libc6-dev", "python3.11", "x" * 128]
GOOD_PIP = ["requests", "ruamel.yaml", "typing_extensions", "A", "p" * 128]
BAD_APT = ["x", "-y", "Jq", "jq;rm", "a b", "$(id)", "x" * 129, "../x", ""]
BAD_PIP = ["-e.", "pkg==1.0", "requests[socks]", "git+https://x/y", "a/b", "pkg-", "p" * 129]


def verdicts(apt: list[str], pip: list[str]) -> tuple[bool, bool, bool]:
    """Whether the tool, the shared rules and the image build accept these names."""

    def accepts(check: object, *errors: type[Exception]) -> bool:
        try:
            check(apt, pip)  # type: ignore[operator]
        except errors:
            return False
        return True

    return (
        accepts(tool_check, ToolError),
        accepts(packages.check_request, packages.InvalidPackages),
        accepts(images.check_packages, Refused),
    )


@pytest.mark.parametrize("name", GOOD_APT + BAD_APT)
def test_apt_names_get_the_same_verdict_everywhere(name: str) -> None:
    expected = name in GOOD_APT
    assert verdicts([name], []) == (expected, expected, expected)


@pytest.mark.parametrize("name", GOOD_PIP + BAD_PIP)
def test_pip_names_get_the_same_verdict_everywhere(name: str) -> None:
    expected = name in GOOD_PIP
    assert verdicts([], [name]) == (expected, expected, expected)


def test_twenty_names_per_request_apt_and_pip_together() -> None:
    apt = [f"apt{i}" for i in range(10)]
    pip = [f"pip{i}" for i in range(10)]
    packages.check_request(apt, pip)
    tool_check(apt, pip)
    m.decode_outbound_content(m.encode(m.InstallPackages(apt=apt, pip=pip)))
    with pytest.raises(packages.InvalidPackages, match="21 packages named; at most 20"):
        packages.check_request([*apt, "one-more"], pip)
    with pytest.raises(ToolError, match="at most 20 per request"):
        tool_check([*apt, "one-more"], pip)
    # The row's decoding bounds each list by the same number; the total is the request
    # check's (a refusal that names the rule, not an undecodable row).
    assert m.MAX_PACKAGES == packages.MAX_PACKAGES == 20
    too_long = m.encode({"type": "install_packages", "apt": [*apt, *pip, "one-more"]})
    with pytest.raises(DecodeError, match=r"\$\.apt"):
        m.decode_outbound_content(too_long)
    long_name = m.encode({"type": "install_packages", "pip": ["p" * 129]})
    with pytest.raises(DecodeError, match=r"\$\.pip"):
        m.decode_outbound_content(long_name)


def test_a_group_image_holds_what_its_requests_added_up_to() -> None:
    # images.check_packages sees the group's earlier packages merged with the new request.
    merged = [f"pkg{i}" for i in range(packages.MAX_GROUP_PACKAGES)]
    assert images.check_packages(merged, [])[0] == sorted(merged)
    with pytest.raises(Refused, match="too many packages for one group's image"):
        images.check_packages([*merged, "one-more"], [])
    with pytest.raises(packages.InvalidPackages, match="name at least one"):
        packages.check_request([], [])
