"""The rules for ``install_packages`` names, in one place: the agent runner's tool (inside the
container), ``messages.InstallPackages`` decoding, delivery's approval check and the group
image build (``sandbox.images.check_packages``) all apply these. Stdlib only: the runner
imports it.

Names are plain package names, never options, URLs, paths or version pins: a leading ``-``
could become a flag of apt or pip, anything else a shell word in the build.

- apt: Debian policy (§5.6.1): lowercase letters, digits, ``+``, ``-`` and ``.``, starting
  with a letter or digit, at least two characters;
- pip: a PEP 508 project name: letters, digits, ``.``, ``_`` and ``-``, starting and ending
  with a letter or digit; no extras, no specifiers.

Both at most ``MAX_NAME_CHARS`` long. A request names at most ``MAX_PACKAGES`` packages in
total, apt and pip together.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from typing import Final

MAX_PACKAGES: Final = 20  # names per request, apt and pip together
MAX_NAME_CHARS: Final = 128
# Everything ever approved for one group, as its image is built with it
# (``sandbox.group_image`` merges a request into the group's earlier packages).
MAX_GROUP_PACKAGES: Final = 2 * MAX_PACKAGES

APT_NAME: Final = re.compile(rf"^[a-z0-9][a-z0-9+.-]{{1,{MAX_NAME_CHARS - 1}}}$")
PIP_NAME: Final = re.compile(
    rf"^[A-Za-z0-9](?:[A-Za-z0-9._-]{{0,{MAX_NAME_CHARS - 2}}}[A-Za-z0-9])?$"
)


class InvalidPackages(ValueError):
    """A request breaks the rules; the message says which rule, naming the first bad name."""


def check_names(apt: Collection[str], pip: Collection[str]) -> None:
    """Raise ``InvalidPackages`` for the first malformed name."""
    for name in apt:
        if not APT_NAME.match(name):
            raise InvalidPackages(
                f"invalid apt package name {name!r}: lowercase letters, digits and +.- only, "
                f"starting with a letter or digit, 2 to {MAX_NAME_CHARS} characters"
            )
    for name in pip:
        if not PIP_NAME.match(name):
            raise InvalidPackages(
                f"invalid pip package name {name!r}: a plain project name (letters, digits "
                f"and ._-, at most {MAX_NAME_CHARS}), no version specifiers, extras, URLs or "
                "shell characters"
            )


def check_request(apt: Collection[str], pip: Collection[str]) -> None:
    """Raise ``InvalidPackages`` unless this is one request's worth of well-formed names:
    at least one, at most ``MAX_PACKAGES`` in total."""
    if not apt and not pip:
        raise InvalidPackages("name at least one apt or pip package")
    if len(apt) + len(pip) > MAX_PACKAGES:
        raise InvalidPackages(
            f"{len(apt) + len(pip)} packages named; at most {MAX_PACKAGES} per request "
            "(apt and pip together)"
        )
    check_names(apt, pip)
