"""Fixtures for the sandbox tests: a real ``podman system service`` on a socket under tmp (one
per test session), the agent image (missing = a loud failure, never a skip), and sandboxes
whose containers are removed after each test.

Every test module here is marked ``podman`` (``pytestmark``); they run in CI, which installs
Podman and builds the image with scripts/test.sh.
"""

from __future__ import annotations

import json
import secrets
import socket
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import podman
import pytest

from nanoclaw_common.paths import Layout
from nanoclaw_common.sandbox import Sandbox, runtime
from nanoclaw_common.sandbox.service import PodmanService, PodmanUnavailable
from nanoclaw_common.sandbox.spec import LABEL_INSTALL
from nanoclaw_common.sessions import refresh_projections
from nanoclaw_common.settings import Settings
from nanoclaw_common.store import CentralStore, rows
from tests.conftest import SettingsFactory
from tests.environ import AGENT_IMAGE

# A recognizable API key: the tests prove it never reaches a container.
CANARY_KEY = "sk-ant-api03-NANOCLAW-CANARY-" + "k7Q" * 12
SLEEP = ["python3", "-c", "import time; time.sleep(3600)"]
SCRIPT_FALLBACK = {"fallback": {"content": [{"type": "text", "text": "<internal>ok</internal>"}]}}


@pytest.fixture(scope="session")
def podman_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PodmanService]:
    """``podman system service`` on a socket under tmp, with this machine's containers.conf
    (runc / lowered ulimits when needed), stopped at the end of the session."""
    root = tmp_path_factory.mktemp("podman-api")
    conf = runtime.ensure_containers_conf(Layout(root))
    service = PodmanService(root / "podman.sock", runtime.podman_env(conf))
    try:
        service.start()
    except PodmanUnavailable as exc:
        pytest.fail(f"the sandbox tests need Podman: {exc}", pytrace=False)
    yield service
    service.stop()


@pytest.fixture(scope="session")
def agent_image(podman_service: PodmanService) -> str:
    image = AGENT_IMAGE
    with podman.PodmanClient(base_url=podman_service.url) as client:
        if not client.images.exists(image):
            pytest.fail(
                f"the agent image {image} is missing: run `.venv/bin/nanoclaw image build`"
                " (scripts/test.sh does)",
                pytrace=False,
            )
    return image


@pytest.fixture
def box_settings(
    make_settings: SettingsFactory, podman_service: PodmanService, agent_image: str
) -> Settings:
    """Settings of this test's data folder, with its own install id (so its containers are
    its own), the test Podman service, and a recognizable API key."""
    return make_settings(
        install_id="t" + secrets.token_hex(5),
        podman_url=podman_service.url,
        image=agent_image,
        anthropic_api_key=CANARY_KEY,
        container_memory_mb=256,
        container_pids=128,
    )


class Tokens:
    """Makes the proxy tokens of this test's sandboxes (``Sandbox(new_token=...)``) as the
    default does, and remembers them: a test looks for them inside the container."""

    def __init__(self) -> None:
        self.made: list[str] = []

    def __call__(self) -> str:
        token = secrets.token_urlsafe(32)
        self.made.append(token)
        return token

    @property
    def last(self) -> str:
        assert self.made, "no run was started"
        return self.made[-1]


@pytest.fixture
def tokens() -> Tokens:
    return Tokens()


SandboxFactory = Callable[..., Sandbox]


@pytest.fixture
def make_sandbox(
    box_settings: Settings, podman_service: PodmanService, tokens: Tokens
) -> Iterator[SandboxFactory]:
    """``make_sandbox(command=None)`` runs the real agent runner; ``SLEEP`` (the default) a
    process that just stays up. Proxy tokens come from ``tokens``. Every container of this
    test's install is removed after."""
    made: list[Sandbox] = []

    def factory(command: Sequence[str] | None = SLEEP, settings: Settings | None = None) -> Sandbox:
        box = Sandbox(settings or box_settings, command=command, new_token=tokens)
        made.append(box)
        return box

    yield factory
    for box in made:
        box.close()
    remove_install_containers(podman_service.url, box_settings.install)


def remove_install_containers(url: str, install: str) -> None:
    with podman.PodmanClient(base_url=url) as client:
        for container in client.containers.list(
            all=True, filters={"label": f"{LABEL_INSTALL}={install}"}
        ):
            container.remove(force=True)


SessionFactory = Callable[..., rows.Session]


@pytest.fixture
def make_session(central: CentralStore, layout: Layout) -> SessionFactory:
    """A group (its own folder) wired to a CLI chat, and an active session with its files.
    ``provider='scripted'`` (default) needs no proxy; the script answers every call."""

    def factory(provider: str = "scripted", folder: str | None = None) -> rows.Session:
        name = folder or "g" + secrets.token_hex(3)
        group = central.create_agent_group(name.title(), name)
        central.update_container_config(group.id, provider=provider)
        layout.group_dir(group.folder).mkdir(parents=True, exist_ok=True)
        (layout.group_dir(group.folder) / "AGENT.md").write_text("# memory\n")
        chat = central.create_messaging_group("cli", "local-" + name, name=name)
        central.create_wiring(chat.id, group.id)
        session = central.create_session(group.id, chat.id)
        refresh_projections(central, layout, session)
        agent_dir = layout.session(group.id, session.id).agent_dir
        (agent_dir / "script.json").write_text(json.dumps(SCRIPT_FALLBACK))
        return session

    return factory


class FakeProxy:
    """A listening Unix socket at ``run/proxy/proxy.sock`` (connectable by the container user, as
    the real proxy's must be); records that a connection arrived."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)  # as the real proxy does
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        path.chmod(0o666)
        self.server.listen(4)
        self.server.settimeout(10.0)

    def accept_one(self) -> bytes:
        connection, _ = self.server.accept()
        with connection:
            connection.settimeout(10.0)
            return connection.recv(100)

    def close(self) -> None:
        self.server.close()
        self.path.unlink(missing_ok=True)


@pytest.fixture
def fake_proxy(layout: Layout) -> Iterator[FakeProxy]:
    proxy = FakeProxy(layout.proxy_socket)
    yield proxy
    proxy.close()
