"""A group's own image after an approved ``install_packages``, built with the ``podman``
command line: no podman-py, no ``core`` import.

Delivery applies approvals and must stay small (issue 5: RSS ≤ 80 MB); podman-py and its
HTTP stack would add about 10 MB to it for a build that happens a few times in an install's
life. A build is one ``podman build`` child process (images.py), so nothing here needs the
API service either.

The group's earlier packages are merged in (an image holds everything ever approved for the
group), every name passes the strict checks in ``images.check_packages`` again (the payload
came from a container), and ``container_configs`` records the tag and the merged lists only
after the build succeeded: a failed build leaves the group on its previous image.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import msgspec
from loguru import logger

from nanoclaw_common.errors import Refused
from nanoclaw_common.paths import Layout
from nanoclaw_common.sandbox import images, runtime
from nanoclaw_common.settings import Settings
from nanoclaw_common.store import CentralStore

log = logger.bind(component="sandbox")


def build_recorded_group_image(
    central: CentralStore,
    layout: Layout,
    agent_group_id: str,
    *,
    agent_image: str,
    apt: Sequence[str],
    pip: Sequence[str],
    out: images.Output,
    base_env: Mapping[str, str] | None = None,
) -> str:
    """Build the group's image ``FROM agent_image`` with ``apt``/``pip`` added to the packages
    it already has, record it in ``container_configs`` and return the tag. Blocking (minutes
    for big packages). Raises ``Refused`` for a bad name or a group with no config, and
    ``ImageBuildError`` when podman fails. ``base_env`` is the environment podman runs in
    (default: this process's), plus our containers.conf."""
    config = central.get_container_config(agent_group_id)
    if config is None:
        raise Refused(f"no container config for agent group {agent_group_id}")
    old_apt = msgspec.json.decode(config.packages_apt, type=list[str])
    old_pip = msgspec.json.decode(config.packages_pip, type=list[str])
    apt_names, pip_names = images.check_packages([*old_apt, *apt], [*old_pip, *pip])
    tag = images.group_image_tag(agent_image, agent_group_id)
    env = runtime.podman_env(runtime.ensure_containers_conf(layout), base_env)
    images.build_group_image(agent_image, tag, apt=apt_names, pip=pip_names, env=env, out=out)
    central.update_container_config(
        agent_group_id,
        image_tag=tag,
        packages_apt=msgspec.json.encode(apt_names).decode(),
        packages_pip=msgspec.json.encode(pip_names).decode(),
    )
    log.info("group image built: {}", tag, group=agent_group_id)
    return tag


class GroupImageBuilder:
    """``build_recorded_group_image`` for one install, as delivery calls it from a worker
    thread. Each build opens its own central-store connection: a store is not shared across
    threads, and builds are too rare for a kept connection to be worth its memory."""

    def __init__(self, settings: Settings, *, base_env: Mapping[str, str] | None = None) -> None:
        self.settings = settings
        self.layout = Layout(settings.home_path)
        self.base_env = dict(base_env) if base_env is not None else None

    def build_group_image(self, agent_group_id: str, apt: Sequence[str], pip: Sequence[str]) -> str:
        central = CentralStore(self.layout.central_db)
        try:
            return build_recorded_group_image(
                central,
                self.layout,
                agent_group_id,
                agent_image=self.settings.image,
                apt=apt,
                pip=pip,
                out=_log_line,
                base_env=self.base_env,
            )
        finally:
            central.close()


def _log_line(line: str) -> None:
    log.debug("{}", line)
