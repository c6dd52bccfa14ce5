"""``Sandbox``: one Podman container per session (DESIGN.md §1, §7; docs/internals.md).

``wake(session)`` makes sure the session's container runs. It is idempotent across threads and
processes: a per-session file lock under ``run/locks/`` serializes wakes, and inside it a
container already running under the session's name means "nothing to do". Starting a run:

1. settle the previous run's leftover ``processing`` claims (settle.py);
2. a fresh run id, ``<session>/runner.json`` written atomically, a per-run proxy token (only
   its sha256 is stored; the token itself goes to ``agent/.proxy-token`` for the runner to
   take, never into the container's environment), the stale heartbeat removed;
3. the writable folders handed to the container user (ownership.py), and in project-quota mode
   given their kernel quota (``nanoclaw_common.disk``);
4. ``sessions.container_status = starting`` with the run id, then create and start.

A wake that a disk block or the free-space floor holds back (``DiskQuotas.refusal``) starts
nothing and returns False: the message stays pending until the sweeper lifts the block.
Podman trouble never escapes ``wake`` (it logs and returns False; the message stays pending
and the sweeper retries). ``stop`` asks with TERM, waits a bounded time, then kills.

Each thread gets its own central-store connection and Podman client: neither is safe to share
across threads (the store's nested-transaction counter, requests' session).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import secrets
import threading
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager, suppress
from enum import StrEnum
from pathlib import Path
from typing import Any, Final

import msgspec
import podman
from loguru import logger
from podman.domain.containers import Container
from podman.errors import NotFound, PodmanError

from nanoclaw_common import privacy
from nanoclaw_common.clock import now_ms
from nanoclaw_common.disk.quotas import DiskQuotas
from nanoclaw_common.errors import NanoclawError, Refused
from nanoclaw_common.hostfs import Dir, unblock
from nanoclaw_common.ids import new_id
from nanoclaw_common.paths import CONTAINER, Layout, SessionPaths, safe_component
from nanoclaw_common.peer_identity import container_identity
from nanoclaw_common.runner_config import (
    McpServer,
    RunnerConfig,
    discard_proxy_token,
    encode_runner_config,
    write_proxy_token,
)
from nanoclaw_common.sandbox import mounts, spec
from nanoclaw_common.sandbox.ownership import AGENT_GID, AGENT_UID, hand_over
from nanoclaw_common.sandbox.service import socket_answers
from nanoclaw_common.sandbox.settle import settle_leftover_claims
from nanoclaw_common.sessions import ensure_session_files
from nanoclaw_common.settings import Settings
from nanoclaw_common.stall import StallGuard
from nanoclaw_common.states import ContainerStatus
from nanoclaw_common.store import CentralStore, InboundStore
from nanoclaw_common.store.proxy_tokens import ProxyTokens
from nanoclaw_common.store.quarantine import HOSTILE_FILES, Quarantine, quarantine_session
from nanoclaw_common.store.rows import AgentGroup, ContainerConfig, Session
from nanoclaw_common.store.runs import RunLedger, leftover_claims

WAKE_LOCK_TIMEOUT_S: Final = 60.0
STOP_TIMEOUT_S: Final = 10.0
_STATE_POLL_S: Final = 0.05
CLIENT_TIMEOUT_S: Final = 120
SCRIPT_FILE: Final = "script.json"  # the scripted provider's turns, in the session's agent/
RUNNER_FILE: Final = "runner.json"
PROVIDER_ALIASES: Final = {"claude": "anthropic", "anthropic": "anthropic", "scripted": "scripted"}

log = logger.bind(component="sandbox")


class WakeBusy(NanoclawError):
    """Another wake of the same session held the lock for too long."""


class NotReady(NanoclawError):
    """Something the run needs is missing (group, proxy socket); try again later."""


class StopOutcome(StrEnum):
    ABSENT = "absent"  # no container under the session's name
    STOPPED = "stopped"  # it exited after TERM within the timeout (or had exited already)
    KILLED = "killed"  # it ignored TERM and was killed


class ContainerInfo(msgspec.Struct, frozen=True):
    """One of this install's containers, from its labels and Podman's state."""

    name: str
    id: str
    session_id: str
    agent_group_id: str
    run_id: str
    state: str  # Podman's: created, running, exited, stopping...

    @property
    def running(self) -> bool:
        return self.state == "running"


class Sandbox:
    """Implements ``nanoclaw_common.wake.Waker`` with Podman.

    ``command`` replaces the image's command (the agent runner) for tests and benchmarks;
    ``new_token`` makes each run's proxy token (tests pass one that remembers what it made,
    to look for it inside the container)."""

    def __init__(
        self,
        settings: Settings,
        *,
        command: Sequence[str] | None = None,
        new_token: Callable[[], str] = lambda: secrets.token_urlsafe(32),
        test_faults: bool = False,
    ) -> None:
        """``test_faults``: the host program has ``NANOCLAW_TEST_FAULTS`` (tests only), so its
        containers arm the runner's crash points too (``nanoclaw_common.faults``)."""
        self.settings = settings
        self.test_faults = test_faults
        self.layout = Layout(settings.home_path)
        self.command = list(command) if command is not None else None
        self.new_token = new_token
        self.rootless = os.geteuid() != 0
        self.session_io = StallGuard(settings.session_io_limit_s, threads=2, name="wake-io")
        self.disk = DiskQuotas(settings, self.layout)  # the wake gate; kernel quotas
        self._local = threading.local()
        self._opened: list[CentralStore | podman.PodmanClient] = []
        self._opened_lock = threading.Lock()

    # -- per-thread resources --------------------------------------------------------------

    def _central(self) -> CentralStore:
        store: CentralStore | None = getattr(self._local, "central", None)
        if store is None:
            store = CentralStore.open(self.layout.central_db)
            self._local.central = store
            with self._opened_lock:
                self._opened.append(store)
        return store

    def _client(self) -> podman.PodmanClient:
        # Checked before every use: podman-py leaks its socket when a connection fails, and
        # "the service is down" deserves a clear message anyway.
        url = self.settings.podman_socket_url
        if url.startswith("unix://") and not socket_answers(Path(url.removeprefix("unix://"))):
            raise NotReady(f"the Podman API service is not answering at {url}")
        client: podman.PodmanClient | None = getattr(self._local, "client", None)
        if client is None:
            client = podman.PodmanClient(base_url=url, timeout=CLIENT_TIMEOUT_S)
            self._local.client = client
            with self._opened_lock:
                self._opened.append(client)
        return client

    def close(self) -> None:
        self.session_io.close()
        with self._opened_lock:
            opened, self._opened = self._opened, []
        for resource in opened:
            resource.close()

    # -- naming ----------------------------------------------------------------------------

    def container_name(self, session_id: str) -> str:
        return spec.container_name(self.settings.install, session_id)

    def image_for(self, config: ContainerConfig | None) -> str:
        """The group's own image (after install_packages) or the agent image."""
        return (config.image_tag if config and config.image_tag else None) or self.settings.image

    # -- wake ------------------------------------------------------------------------------

    def wake(self, session: Session) -> bool:
        """Make sure the session's container runs (see the module docstring). A quarantined
        session (its files were refused or stalled a host program) is never woken."""
        try:
            with wake_lock(self.layout, session.id):
                return self._wake_locked(session)
        except HOSTILE_FILES as exc:
            with suppress(Exception):  # recorded once; the refusal is logged either way
                quarantine_session(self._central(), session.id, exc, program="wake", log=log)
            log.warning("wake refused: {}", exc, session=session.id)
            return False
        except (PodmanError, OSError, NanoclawError) as exc:
            log.warning("wake failed: {}", exc, session=session.id, group=session.agent_group_id)
            return False

    def _wake_locked(self, session: Session) -> bool:
        name = self.container_name(session.id)
        existing = self._get(name)
        if existing is not None:
            info = _info(existing)
            if info.running:
                return True
            # The previous run ended on its own: make room for the new one.
            log.info("removing ended container ({})", info.state, session=session.id)
            existing.remove(force=True)
        now = now_ms()
        central = self._central()
        if Quarantine(central).is_quarantined(session.id):
            raise Refused("the session is quarantined (`nanoclaw quarantine list`)")
        group = central.get_agent_group(session.agent_group_id)
        if group is None:
            raise NotReady(f"agent group {session.agent_group_id} does not exist")
        config = central.get_container_config(group.id)
        refused = self.disk.refusal(central, session, now=now)
        if refused is not None:
            # The message stays pending; the sweeper wakes the session once this is over.
            log.warning("wake refused: {}", refused, session=session.id, group=group.id)
            return False
        paths = ensure_session_files(self.layout, session)
        group_dir = self.layout.group_dir(group.folder)
        group_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.disk.prepare(
            central,
            group=group,
            config=config,
            session=session,
            paths=paths,
            group_dir=group_dir,
            now=now,
        )

        self._settle(session, paths, now)
        runner = self.runner_config(session, group, config)
        proxy = self._proxy_mount(runner)
        run_id = new_id("run", now)
        token = self.new_token()
        write_atomic(paths.root / RUNNER_FILE, encode_runner_config(runner))
        write_proxy_token(
            paths.agent_dir, token, owner=None if self.rootless else (AGENT_UID, AGENT_GID)
        )
        with Dir.trusted(paths.agent_dir) as agent:
            agent.remove("heartbeat")  # whatever was planted there; never followed
        if not self.rootless:
            hand_over(paths.agent_dir)
            hand_over(group_dir)
        run = spec.RunSpec(
            name=name,
            image=self.image_for(config),
            command=self.command,
            labels=spec.labels(self.settings.install, session.id, group.id, run_id),
            env=spec.run_env(run_id, self.settings.tz, test_faults=self.test_faults),
            mounts=mounts.session_mounts(
                paths, group_dir, proxy, self._extra_mounts(config, group_dir, session)
            ),
            memory_mb=self.settings.container_memory_mb,
            cpus=self.settings.container_cpus,
            pids=self.settings.container_pids,
            rootless=self.rootless,
        )
        central.set_container_status(session.id, ContainerStatus.STARTING, run_id=run_id, now=now)
        try:
            return self._start(run, session, hashlib.sha256(token.encode()).hexdigest(), now)
        except BaseException:
            discard_proxy_token(paths.agent_dir)  # revoked already; no runner will take it
            raise

    def _start(self, run: spec.RunSpec, session: Session, token_hash: str, now: int) -> bool:
        """Create the container, issue the run's proxy token bound to it, start it. The
        token is recorded between create and start: the container's id is known, and none
        of its processes can have called the proxy yet."""
        try:
            container = self._client().containers.create(
                run.image, run.command, **spec.create_kwargs(run)
            )
            ProxyTokens(self._central()).issue(
                token_hash,
                session.id,
                session.agent_group_id,
                run.labels[spec.LABEL_RUN],
                bound_to=container_identity(str(container.id)),
                now=now,
            )
            container.start()
        except (PodmanError, OSError) as exc:
            if _name_in_use(exc):
                # Only reachable when something outside our lock made it (a container started
                # by hand under our name): it runs, so there is nothing to start.
                log.info("container already exists", session=session.id)
                return True
            self._central().set_container_status(session.id, ContainerStatus.STOPPED)
            ProxyTokens(self._central()).revoke(session.id)
            self._remove_quietly(run.name)
            raise
        log.info(
            "container started ({})", run.image, session=session.id, run=run.labels[spec.LABEL_RUN]
        )
        return True

    def _settle(self, session: Session, paths: SessionPaths, now: int) -> None:
        # outbound.db is the container's file: read with a deadline (stall.py), so a wake
        # (on the router's pool, in the sweeper's pass) never hangs on it.
        claims = self.session_io.call(
            session.id,
            "reading outbound.db",
            lambda: leftover_claims(paths.outbound_db, session.run_id),
            release=lambda: unblock(paths.agent_dir),
        )
        if not claims:
            return
        inbound = InboundStore(paths.inbound_db)
        try:
            settle_leftover_claims(
                session_id=session.id,
                claims=claims,
                inbound=inbound,
                ledger=RunLedger(self._central()),
                max_tries=self.settings.max_tries,
                now=now,
            )
        finally:
            inbound.close()

    def runner_config(
        self, session: Session, group: AgentGroup, config: ContainerConfig | None
    ) -> RunnerConfig:
        """What the run is told through ``runner.json`` (the group's container config over
        the settings)."""
        wanted = (session.agent_provider or (config.provider if config else None) or "").lower()
        provider = PROVIDER_ALIASES.get(wanted or "anthropic")
        if provider is None:
            raise Refused(f"unknown agent provider {wanted!r} for group {group.id}")
        return RunnerConfig(
            session_id=session.id,
            agent_group_id=group.id,
            assistant_name=(config.assistant_name if config else None) or group.name,
            provider="scripted" if provider == "scripted" else "anthropic",
            model=(config.model if config else None) or self.settings.model,
            max_messages_per_prompt=(config.max_messages_per_prompt if config else None)
            or self.settings.max_messages_per_prompt,
            tz=self.settings.tz,
            heartbeat_interval_s=self.settings.heartbeat_interval_s,
            max_turns_per_batch=self.settings.max_turns_per_batch,
            shed_after_s=self.settings.runner_shed_after_s,
            compact_at_tokens=self.settings.runner_compact_at_tokens,
            proxy_socket=str(CONTAINER.proxy_socket),
            proxy_wait_s=self.settings.proxy_wait_s,
            mcp_servers=_mcp_servers(config, group.id),
            script_path=(
                str(CONTAINER.session.agent_dir / SCRIPT_FILE) if provider == "scripted" else None
            ),
        )

    def _proxy_mount(self, runner: RunnerConfig) -> mounts.Mount | None:
        socket_path = self.layout.proxy_socket
        if socket_path.is_socket():
            return mounts.proxy_mount(socket_path, self.layout.run_dir)
        if runner.provider == "scripted":
            return None  # the scripted model needs no proxy
        raise NotReady(f"the credential proxy is not running (no socket at {socket_path})")

    def _extra_mounts(
        self, config: ContainerConfig | None, group_dir: Path, session: Session
    ) -> list[mounts.Mount]:
        raw = config.additional_mounts if config else "[]"
        if raw.strip() in ("", "[]"):
            return []
        allowlist_path = Path(self.settings.mount_allowlist).expanduser()
        try:
            requested = mounts.parse_requested(raw)
            allowlist = mounts.load_allowlist(allowlist_path, self.layout.home)
        except mounts.AllowlistError as exc:
            log.warning("no extra mounts: {}", exc, session=session.id)
            return []
        extra_dir = group_dir / "extra"
        if extra_dir.is_symlink() or (extra_dir.exists() and not extra_dir.is_dir()):
            # The mount points live in the group folder, which the agent can write; a planted
            # link there must not decide where a mount lands.
            log.warning("no extra mounts: {} is not a plain directory", extra_dir)
            return []
        checked = mounts.check_extra_mounts(
            requested, allowlist, protected=[self.layout.home, allowlist_path]
        )
        for refusal in checked.refusals:
            log.warning("extra mount {}: {}", refusal.host_path, refusal.reason, session=session.id)
        return checked.mounts

    # -- stop ------------------------------------------------------------------------------

    def stop(self, session_id: str, timeout_s: float = STOP_TIMEOUT_S) -> StopOutcome:
        """TERM, wait up to ``timeout_s`` for the container to exit, then KILL. The container
        is removed and the session marked stopped either way. Holds the session's wake lock,
        so a concurrent wake waits and then starts a fresh run instead of trusting a container
        that is about to go."""
        with wake_lock(self.layout, session_id):
            return self._stop_locked(session_id, timeout_s)

    def _stop_locked(self, session_id: str, timeout_s: float) -> StopOutcome:
        container = self._get(self.container_name(session_id))
        outcome = StopOutcome.ABSENT
        if container is not None:
            outcome = StopOutcome.STOPPED
            if _info(container).running:
                container.kill("SIGTERM")
                if not _wait_exited(container, timeout_s):
                    container.kill("SIGKILL")
                    _wait_exited(container, STOP_TIMEOUT_S)
                    outcome = StopOutcome.KILLED
            container.remove(force=True)
        central = self._central()
        if central.get_session(session_id) is not None:
            central.set_container_status(session_id, ContainerStatus.STOPPED)
        ProxyTokens(central).revoke(session_id)
        log.info("container {}", outcome.value, session=session_id)
        return outcome

    # -- listing ---------------------------------------------------------------------------

    def containers(self, *, include_ended: bool = True) -> list[ContainerInfo]:
        """This install's containers (by label), running or not."""
        # One label filter, as a plain string: podman-py 5.8 against Podman 4.3 matches
        # nothing when the value is given as a list.
        found = self._client().containers.list(
            all=include_ended,
            filters={"label": f"{spec.LABEL_INSTALL}={self.settings.install}"},
        )
        return [_info(container) for container in found]

    def running(self) -> list[ContainerInfo]:
        return [info for info in self.containers(include_ended=False) if info.running]

    def orphans(self, live_session_ids: Collection[str]) -> list[ContainerInfo]:
        """This install's containers whose session is not in ``live_session_ids`` (for the
        sweeper's orphan reaping; it decides, ``remove`` acts)."""
        return [info for info in self.containers() if info.session_id not in live_session_ids]

    def ended(self) -> list[ContainerInfo]:
        """Containers that exited on their own (kept for their logs until the next wake)."""
        return [info for info in self.containers() if not info.running]

    def remove(self, name: str) -> bool:
        """Force-remove one of this install's containers; False when it was not there."""
        container = self._get(name)
        if container is None:
            return False
        if container.labels.get(spec.LABEL_INSTALL) != self.settings.install:
            raise Refused(f"container {name} does not belong to this install")
        container.remove(force=True)
        return True

    def exec_in(self, session_id: str, argv: Sequence[str]) -> tuple[int, str, str]:
        """Run ``argv`` in the session's running container as its user, in ``/workspace``
        like the agent's own commands (the container's working folder is the runner's):
        (exit code, stdout, stderr). For diagnostics and the sandbox tests."""
        container = self._get(self.container_name(session_id))
        if container is None:
            raise NotReady(f"no container for session {session_id}")
        code, output = container.exec_run(list(argv), demux=True, workdir=str(CONTAINER.workspace))
        stdout, stderr = output if isinstance(output, tuple) else (output, b"")
        return (
            int(code or 0),
            (stdout or b"").decode(errors="replace"),
            (stderr or b"").decode(errors="replace"),
        )

    def _get(self, name: str) -> Container | None:
        try:
            return self._client().containers.get(name)
        except NotFound:
            return None

    def _remove_quietly(self, name: str) -> None:
        with suppress(PodmanError, OSError, Refused):
            self.remove(name)


# -- helpers ---------------------------------------------------------------------------------


@contextmanager
def wake_lock(
    layout: Layout, session_id: str, timeout_s: float = WAKE_LOCK_TIMEOUT_S
) -> Iterator[None]:
    """An exclusive per-session lock shared by every thread and process of this data folder
    (``flock`` on ``run/locks/<session>.lock``; the kernel drops it if the holder dies)."""
    lock_dir = layout.run_dir / "locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    path = lock_dir / f"{safe_component(session_id, 'session id')}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise WakeBusy(
                        f"session {session_id} is being woken by another caller"
                    ) from None
                time.sleep(0.01)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def write_atomic(path: Path, data: bytes) -> None:
    """Temp file in the same folder, fsync, rename, fsync the folder: a reader sees the old
    file or the new one, never half of one. For a file the container reads (``runner.json``,
    in the host-owned session folder): readable by the container's user alone (privacy.py)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    mode = privacy.agent_readable_mode(folder=False)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        privacy.share_with_agent(fd, folder=False)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def _info(container: Container) -> ContainerInfo:
    attrs: dict[str, Any] = container.attrs
    labels: dict[str, str] = attrs.get("Labels") or attrs.get("Config", {}).get("Labels") or {}
    state = attrs.get("State")
    status = state.get("Status", "") if isinstance(state, dict) else str(state or "")
    names = attrs.get("Names") or [attrs.get("Name", "")]
    return ContainerInfo(
        name=str(names[0]).lstrip("/"),
        id=str(attrs.get("Id", "")),
        session_id=labels.get(spec.LABEL_SESSION, ""),
        agent_group_id=labels.get(spec.LABEL_GROUP, ""),
        run_id=labels.get(spec.LABEL_RUN, ""),
        state=status,
    )


def _wait_exited(container: Container, timeout_s: float) -> bool:
    """Poll Podman's state until the container is no longer running (bounded)."""
    deadline = time.monotonic() + max(timeout_s, 0.0)
    while True:
        container.reload()
        if _info(container).state not in ("running", "stopping"):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(_STATE_POLL_S)


def _name_in_use(exc: BaseException) -> bool:
    text = str(exc)
    return "already in use" in text or "409" in text.split(" ", 1)[0]


def _mcp_servers(config: ContainerConfig | None, agent_group_id: str) -> dict[str, McpServer]:
    if config is None or config.mcp_servers.strip() in ("", "{}"):
        return {}
    try:
        return msgspec.json.decode(config.mcp_servers, type=dict[str, McpServer])
    except msgspec.DecodeError as exc:
        log.warning("ignoring invalid mcp_servers: {}", exc, group=agent_group_id)
        return {}
