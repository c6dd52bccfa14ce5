"""Settings: one frozen struct, built in each program's ``main()`` and passed down.

Sources, highest first: the environment, a ``.env`` file, a TOML file, the defaults.
- The ``.env`` file is ``NANOCLAW_ENV_FILE`` if set, else ``./.env``.
- The TOML file is ``NANOCLAW_CONFIG`` if set, else ``<home>/nanoclaw.toml``. Its keys are the
  field names below (``max_containers = 3``).
- A field's environment name is in ``ENV_NAMES`` for the fixed, documented ones; any other field
  ``foo_bar`` is ``NANOCLAW_FOO_BAR``.

Nothing below ``main()`` reads ``os.environ``: ``Settings.load`` takes the environment as an
argument, and tests build settings with ``Settings(...)`` or ``replace``.
"""

from __future__ import annotations

import hashlib
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec

from nanoclaw_common.errors import ConfigError

# Names other tools and tests rely on. Do not rename.
ENV_NAMES: Final[dict[str, str]] = {
    "home": "NANOCLAW_HOME",
    "anthropic_api_key": "ANTHROPIC_API_KEY",
    "anthropic_base_url": "ANTHROPIC_BASE_URL",
    "model": "NANOCLAW_MODEL",
    "telegram_bot_token": "TELEGRAM_BOT_TOKEN",
    "telegram_api_base_url": "TELEGRAM_API_BASE_URL",
    "slack_bot_token": "SLACK_BOT_TOKEN",
    "slack_app_token": "SLACK_APP_TOKEN",
    "slack_signing_secret": "SLACK_SIGNING_SECRET",
    "slack_api_base_url": "SLACK_API_BASE_URL",
    "tz": "NANOCLAW_TZ",
}

# Fields whose values must never be logged, shown, or sent (the leak guard scans for them).
SECRET_FIELDS: Final = frozenset(
    {
        "anthropic_api_key",
        "telegram_bot_token",
        "slack_bot_token",
        "slack_app_token",
        "slack_signing_secret",
    }
)


DEFAULT_HOME: Final = "./data"
# A webhook secret shorter than this is refused: it is guessable, and ``secrets()`` (the log
# redaction and leak guard) ignores values this short, so it could show up in logs.
MIN_WEBHOOK_SECRET_CHARS: Final = 16  # shorter HMAC keys are guessable offline
MIN_COMPACT_AT_TOKENS: Final = 10_000
DISK_QUOTA_MECHANISMS: Final = ("auto", "project", "walk")


class Settings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    # -- where things are
    home: str = DEFAULT_HOME
    install_id: str = ""  # container name/label prefix; derived from the home path when empty
    log_level: str = "INFO"
    tz: str = "UTC"

    # -- the model (only the proxy holds the key)
    anthropic_api_key: str = ""
    anthropic_base_url: str = "https://api.anthropic.com"
    model: str = "claude-sonnet-5"
    # Each agent group's daily token budget (input, cached input included, plus output),
    # unless the group has its own (`nanoclaw groups config GROUP --budget N`). 0 = unlimited,
    # only when set on purpose.
    token_budget_daily: int = 5_000_000
    proxy_peer_connections: int = 32  # open connections per container; more are closed
    proxy_drain_s: float = 80.0  # a stopping proxy lets calls in flight finish this long
    proxy_keeper_linger_s: float = 60.0  # the socket waits this long for the next proxy
    # A runner waits this long for an absent proxy (a restart) before it gives its claim
    # back for a later try; also how long it retries overloaded / rate-limited answers.
    proxy_wait_s: float = 300.0

    # -- channels
    telegram_bot_token: str = ""
    telegram_api_base_url: str = "https://api.telegram.org"
    slack_bot_token: str = ""
    slack_app_token: str = ""
    slack_signing_secret: str = ""
    slack_api_base_url: str = "https://slack.com/api/"
    slack_events_port: int = 0  # 0: no Events API server (Socket Mode only)
    webhook_port: int = 0  # 0: no webhook server
    webhook_host: str = "127.0.0.1"
    webhook_secrets: dict[str, str] = {}  # source name -> HMAC secret
    # Signed deliveries per source: a burst at once, then this many a minute (more: 429).
    webhook_rate_per_minute: int = 60
    webhook_burst: int = 20

    # -- containers
    image: str = "localhost/nanoclaw-agent:latest"
    podman_url: str = ""  # unix://...; default <home>/run/podman.sock
    container_memory_mb: int = 1024
    container_cpus: float = 1.0
    container_pids: int = 256
    max_containers: int = 5
    mount_allowlist: str = "~/.config/nanoclaw/mount-allowlist.json"

    # -- liveness (sweeper)
    heartbeat_interval_s: float = 2.0
    heartbeat_timeout_s: float = 60.0
    spawn_grace_s: float = 30.0
    idle_timeout_s: float = 1800.0
    max_tries: int = 5
    max_turns_per_batch: int = 50
    tool_ceiling_s: float = 900.0  # a tool call without a declared timeout is hung after this
    claim_ceiling_s: float = 1800.0  # a batch in work longer than this (no long tool) is hung

    # -- disk quotas (nanoclaw_common/disk/, nanoclaw_sweeper/disk.py; docs/security.md)
    # What a group's folder (/workspace) and a session's agent/ folder may hold; 0 = no limit.
    # Per group, container_configs.group_disk_quota_mb / session_disk_quota_mb override the MB.
    group_disk_quota_mb: int = 2048
    group_disk_quota_entries: int = 200_000  # files, folders and links: empty files cost too
    session_disk_quota_mb: int = 512
    session_disk_quota_entries: int = 20_000
    # auto: kernel project quotas where the filesystem has them (ext4/XFS mounted prjquota),
    # else the sweeper measures; walk: always the sweeper; project: refuse to start without.
    disk_quota_mechanism: str = "auto"
    disk_check_interval_s: float = 10.0  # a running session's folders are measured this often
    disk_walk_entries_per_pass: int = 20_000  # the most entries one sweeper pass looks at
    # Below this much free space on the data folder's filesystem no container is started and
    # running ones are stopped: central.db and the logs must always be able to write.
    disk_min_free_mb: int = 512

    # -- runner
    max_messages_per_prompt: int = 10
    runner_shed_after_s: float = 120.0  # idle runner drops the model SDK (re-exec); 0: never
    # The conversation is compacted at about this many input tokens (or nearer a smaller
    # model's window): every call pays for its whole input, so a 1M window is a cost trap.
    runner_compact_at_tokens: int = 165_000

    # -- delivery
    delivery_max_attempts: int = 6
    delivery_backoff_base_s: float = 2.0
    delivery_backoff_max_s: float = 300.0
    owner_notice_interval_s: float = 3600.0
    terminal_patience_s: float = 86400.0  # a terminal reply waits this long for a client
    delivery_recent_s: float = 900.0  # a stopped session's outbound.db is watched this long
    approval_timeout_s: float = 86400.0  # an undecided approval is denied after this
    a2a_max_per_minute: int = 20  # per (source group, target group) pair; more is refused

    # -- watchdog (a supervisord event listener; docs/internals.md, "Watchdog")
    watchdog_stale_s: float = 60.0  # a beating program whose proof is older than this is hung
    watchdog_program_stale_s: dict[str, float] = {}  # per program (0: not judged); adds names
    watchdog_start_grace_s: float = 60.0  # from a (re)start to the first proof of life
    watchdog_rss_max_mb: int = 512  # a program whose RSS passes this is restarted
    watchdog_program_rss_max_mb: dict[str, int] = {}  # per program (0: no ceiling)
    watchdog_backoff_s: float = 300.0  # the next restart of one program waits this, doubling
    watchdog_backoff_max_s: float = 3600.0  # ... up to this; reset after this long in health

    # -- host files (hostfs, stall)
    # One step of a host program's work on a session's container-written files (opening and
    # reading its outbound.db, its outbox, its heartbeat) that takes longer than this cuts
    # the session off and quarantines it: a planted FIFO must never stall a whole loop.
    session_io_limit_s: float = 10.0

    def __repr__(self) -> str:
        shown = {
            name: ("***" if name in SECRET_FIELDS and getattr(self, name) else getattr(self, name))
            for name in self.__struct_fields__
        }
        shown["webhook_secrets"] = {k: "***" for k in self.webhook_secrets}
        return f"Settings({shown})"

    __str__ = __repr__

    # -- derived --------------------------------------------------------------------------

    @property
    def home_path(self) -> Path:
        return Path(self.home).expanduser().resolve()

    @property
    def install(self) -> str:
        """Short id of this installation: two data folders on one host never touch each
        other's containers."""
        if self.install_id:
            return self.install_id
        return hashlib.sha1(str(self.home_path).encode()).hexdigest()[:8]

    @property
    def podman_socket_url(self) -> str:
        return self.podman_url or f"unix://{self.home_path / 'run' / 'podman.sock'}"

    def secrets(self) -> list[str]:
        """Every configured secret value (for the leak guard and log redaction)."""
        values = [getattr(self, name) for name in SECRET_FIELDS]
        values += list(self.webhook_secrets.values())
        return [v for v in values if v and len(v) >= 8]

    def validate(self) -> Settings:
        """Fail fast, with a message that names the setting."""
        problems: list[str] = []
        try:
            ZoneInfo(self.tz)
        except (ZoneInfoNotFoundError, ValueError):
            problems.append(f"{env_name('tz')}={self.tz!r} is not an IANA time zone")
        for name in ("anthropic_base_url", "telegram_api_base_url", "slack_api_base_url"):
            if not getattr(self, name).startswith(("http://", "https://")):
                problems.append(f"{env_name(name)} must start with http:// or https://")
        for name in (
            "container_memory_mb",
            "container_pids",
            "max_containers",
            "max_tries",
            "delivery_max_attempts",
            "max_messages_per_prompt",
            "max_turns_per_batch",
            "webhook_rate_per_minute",
            "webhook_burst",
            "proxy_peer_connections",
            "disk_walk_entries_per_pass",
        ):
            if getattr(self, name) < 1:
                problems.append(f"{env_name(name)} must be at least 1")
        for name in (
            "container_cpus",
            "heartbeat_interval_s",
            "heartbeat_timeout_s",
            "delivery_backoff_base_s",
            "tool_ceiling_s",
            "claim_ceiling_s",
            "terminal_patience_s",
            "watchdog_stale_s",
            "watchdog_rss_max_mb",
            "watchdog_backoff_s",
            "session_io_limit_s",
            "disk_check_interval_s",
        ):
            if getattr(self, name) <= 0:
                problems.append(f"{env_name(name)} must be positive")
        for name in ("proxy_drain_s", "proxy_wait_s"):
            if getattr(self, name) <= 0:
                problems.append(f"{env_name(name)} must be positive")
        for name in ("token_budget_daily", "proxy_keeper_linger_s"):
            if getattr(self, name) < 0:
                problems.append(f"{env_name(name)} must not be negative")
        for name in (
            "group_disk_quota_mb",
            "group_disk_quota_entries",
            "session_disk_quota_mb",
            "session_disk_quota_entries",
            "disk_min_free_mb",
        ):
            if getattr(self, name) < 0:
                problems.append(f"{env_name(name)} must not be negative (0: no limit)")
        if self.disk_quota_mechanism not in DISK_QUOTA_MECHANISMS:
            problems.append(
                f"{env_name('disk_quota_mechanism')}={self.disk_quota_mechanism!r} is not one of"
                f" {', '.join(DISK_QUOTA_MECHANISMS)}"
            )
        if self.runner_shed_after_s < 0:
            problems.append(f"{env_name('runner_shed_after_s')} must not be negative")
        if self.runner_compact_at_tokens < MIN_COMPACT_AT_TOKENS:
            # Below this the summary and the prompt around it leave little room for talk:
            # every few messages would pay for a summary call.
            problems.append(
                f"{env_name('runner_compact_at_tokens')} must be at least {MIN_COMPACT_AT_TOKENS}"
            )
        problems += self._watchdog_problems()
        if self.heartbeat_timeout_s <= self.heartbeat_interval_s * 2:
            problems.append("heartbeat_timeout_s must exceed twice heartbeat_interval_s")
        short = sorted(
            name
            for name, secret in self.webhook_secrets.items()
            if len(secret.strip()) < MIN_WEBHOOK_SECRET_CHARS
        )
        if short:
            problems.append(
                f"NANOCLAW_WEBHOOK_SECRETS: the secret of {', '.join(short)} is empty or shorter"
                f" than {MIN_WEBHOOK_SECRET_CHARS} characters"
            )
        if self.log_level.upper() not in ("TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR"):
            problems.append(f"{env_name('log_level')}={self.log_level!r} is not a log level")
        if problems:
            raise ConfigError("invalid settings: " + "; ".join(problems))
        return self

    def _watchdog_problems(self) -> list[str]:
        problems: list[str] = []
        if self.watchdog_start_grace_s < 0:
            problems.append(f"{env_name('watchdog_start_grace_s')} must not be negative")
        if self.watchdog_backoff_max_s < self.watchdog_backoff_s:
            problems.append("watchdog_backoff_max_s must be at least watchdog_backoff_s")
        for name in ("watchdog_program_stale_s", "watchdog_program_rss_max_mb"):
            negative = sorted(p for p, value in getattr(self, name).items() if value < 0)
            if negative:
                problems.append(f"{env_name(name)}: {', '.join(negative)} must not be negative")
        return problems

    # -- loading --------------------------------------------------------------------------

    @classmethod
    def load(
        cls, environ: Mapping[str, str], *, cwd: Path | None = None, **overrides: Any
    ) -> Settings:
        """Build and validate settings from ``environ`` (``os.environ`` in ``main()``), the
        ``.env`` file and the TOML file. ``overrides`` (e.g. a ``--home`` flag) win over all."""
        base = Path.cwd() if cwd is None else cwd
        env_file = Path(environ.get("NANOCLAW_ENV_FILE", base / ".env"))
        merged_env = {**read_env_file(env_file), **environ}

        raw: dict[str, Any] = {}
        home = overrides.get("home") or merged_env.get("NANOCLAW_HOME") or DEFAULT_HOME
        toml_path = Path(merged_env.get("NANOCLAW_CONFIG", Path(home) / "nanoclaw.toml"))
        if toml_path.is_file():
            try:
                raw.update(tomllib.loads(toml_path.read_text()))
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError(f"{toml_path}: {exc}") from None
        for field in cls.__struct_fields__:
            value = merged_env.get(env_name(field))
            if value is not None:
                raw[field] = _parse_env_value(field, value)
        raw.update({k: v for k, v in overrides.items() if v is not None})
        try:
            settings = msgspec.convert(raw, cls, strict=False)
        except msgspec.ValidationError as exc:
            raise ConfigError(f"invalid settings: {exc}") from None
        return settings.validate()


def env_name(field: str) -> str:
    return ENV_NAMES.get(field, f"NANOCLAW_{field.upper()}")


def _parse_env_value(field: str, value: str) -> Any:
    if field == "webhook_secrets":
        # NANOCLAW_WEBHOOK_SECRETS="github=abc,ci=def"
        pairs = [item.split("=", 1) for item in value.split(",") if item.strip()]
        if any(len(pair) != 2 for pair in pairs):
            raise ConfigError(
                "NANOCLAW_WEBHOOK_SECRETS must look like 'source=secret,other=secret'"
            )
        return {name.strip(): secret.strip() for name, secret in pairs}
    if field in _PROGRAM_MAPS:
        # NANOCLAW_WATCHDOG_PROGRAM_STALE_S="sweeper=120,proxy=0"
        pairs = [item.split("=", 1) for item in value.split(",") if item.strip()]
        if any(len(pair) != 2 for pair in pairs):
            raise ConfigError(f"{env_name(field)} must look like 'program=number,other=number'")
        return {name.strip(): number.strip() for name, number in pairs}
    return value


# Settings given per supervisord program, as ``program=value`` lists in the environment.
_PROGRAM_MAPS: Final = frozenset({"watchdog_program_stale_s", "watchdog_program_rss_max_mb"})


def read_env_file(path: Path) -> dict[str, str]:
    """``KEY=value`` lines; ``#`` comments, optional ``export`` and quotes. Missing file: {}."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    values: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        stripped = stripped.removeprefix("export ").strip()
        key, sep, value = stripped.partition("=")
        if not sep or not key.strip().isidentifier():
            raise ConfigError(f"{path}:{number}: expected KEY=value")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def load_from_process(**overrides: Any) -> Settings:
    """For ``main()`` functions only: the real environment and working directory."""
    return Settings.load(os.environ, **overrides)
