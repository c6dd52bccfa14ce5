"""Settings: sources and precedence, fixed names, validation, and secrets never shown."""

from __future__ import annotations

from pathlib import Path

import pytest

from nanoclaw_common.errors import ConfigError
from nanoclaw_common.settings import ENV_NAMES, Settings, env_name, read_env_file


def test_fixed_environment_names() -> None:
    assert ENV_NAMES == {
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
    assert env_name("max_containers") == "NANOCLAW_MAX_CONTAINERS"


def test_defaults(tmp_path: Path) -> None:
    settings = Settings.load({}, cwd=tmp_path)
    assert settings.home == "./data"
    assert settings.tz == "UTC"
    assert settings.anthropic_base_url == "https://api.anthropic.com"


def test_precedence_env_over_dotenv_over_toml(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "nanoclaw.toml").write_text(
        'model = "from-toml"\nmax_containers = 7\ntz = "Europe/Paris"\n'
        '[webhook_secrets]\nci = "toml-secret-12345678"\n'
    )
    (tmp_path / ".env").write_text(
        '# comment\nexport NANOCLAW_MODEL="from-dotenv"\nNANOCLAW_MAX_CONTAINERS=3\n'
        f"NANOCLAW_HOME={home}\n"
    )
    settings = Settings.load({"NANOCLAW_MODEL": "from-env"}, cwd=tmp_path)
    assert settings.model == "from-env"
    assert settings.max_containers == 3
    assert settings.tz == "Europe/Paris"
    assert settings.webhook_secrets == {"ci": "toml-secret-12345678"}
    assert settings.home_path == home.resolve()


def test_explicit_config_file_and_overrides(tmp_path: Path) -> None:
    config = tmp_path / "custom.toml"
    config.write_text("max_containers = 9\n")
    settings = Settings.load({"NANOCLAW_CONFIG": str(config)}, cwd=tmp_path, home="/srv/nc")
    assert settings.max_containers == 9
    assert settings.home == "/srv/nc"


def test_env_values_are_converted(tmp_path: Path) -> None:
    settings = Settings.load(
        {
            "NANOCLAW_CONTAINER_CPUS": "1.5",
            "NANOCLAW_WEBHOOK_SECRETS": "github=abc1234567890123, ci=def1234567890123",
            "TELEGRAM_API_BASE_URL": "http://127.0.0.1:9000/bot",
        },
        cwd=tmp_path,
    )
    assert settings.container_cpus == 1.5
    assert settings.webhook_secrets == {"github": "abc1234567890123", "ci": "def1234567890123"}
    assert settings.telegram_api_base_url == "http://127.0.0.1:9000/bot"


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"NANOCLAW_TZ": "Mars/Olympus"}, "NANOCLAW_TZ='Mars/Olympus' is not an IANA time zone"),
        ({"ANTHROPIC_BASE_URL": "ftp://x"}, "ANTHROPIC_BASE_URL must start with http"),
        ({"NANOCLAW_MAX_CONTAINERS": "0"}, "NANOCLAW_MAX_CONTAINERS must be at least 1"),
        ({"NANOCLAW_MAX_CONTAINERS": "many"}, "Expected `int`"),
        ({"NANOCLAW_LOG_LEVEL": "LOUD"}, "is not a log level"),
        ({"NANOCLAW_WEBHOOK_SECRETS": "nosecret"}, "source=secret"),
        ({"NANOCLAW_HEARTBEAT_TIMEOUT_S": "3"}, "heartbeat_timeout_s must exceed"),
    ],
)
def test_invalid_settings_fail_fast_with_the_setting_named(
    tmp_path: Path, environ: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        Settings.load(environ, cwd=tmp_path)


def test_broken_files_are_config_errors(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("this is not a setting\n")
    with pytest.raises(ConfigError, match=r"\.env:1: expected KEY=value"):
        Settings.load({}, cwd=tmp_path)
    (tmp_path / ".env").unlink()
    bad_toml = tmp_path / "bad.toml"
    bad_toml.write_text("x = [")
    with pytest.raises(ConfigError, match=r"bad\.toml"):
        Settings.load({"NANOCLAW_CONFIG": str(bad_toml)}, cwd=tmp_path)
    bad_toml.write_text("no_such_setting = 1")
    with pytest.raises(ConfigError, match="no_such_setting"):
        Settings.load({"NANOCLAW_CONFIG": str(bad_toml)}, cwd=tmp_path)


def test_read_env_file_missing_is_empty(tmp_path: Path) -> None:
    assert read_env_file(tmp_path / "absent") == {}


def test_secrets_are_never_shown(tmp_path: Path) -> None:
    settings = Settings.load(
        {
            "ANTHROPIC_API_KEY": "sk-ant-very-secret-key",
            "TELEGRAM_BOT_TOKEN": "123456:telegram-token",
            "NANOCLAW_WEBHOOK_SECRETS": "ci=webhook-secret-000001",
        },
        cwd=tmp_path,
    )
    shown = repr(settings) + str(settings) + f"{settings}"
    for secret in ("sk-ant-very-secret-key", "123456:telegram-token", "webhook-secret-000001"):
        assert secret not in shown
        assert secret in settings.secrets()
    assert "***" in shown


def test_install_id_is_stable_per_home(tmp_path: Path) -> None:
    a = Settings(home=str(tmp_path / "a"))
    b = Settings(home=str(tmp_path / "b"))
    assert a.install == Settings(home=str(tmp_path / "a")).install
    assert a.install != b.install and len(a.install) == 8
    assert Settings(home="x", install_id="prod").install == "prod"
    assert a.podman_socket_url == f"unix://{(tmp_path / 'a').resolve()}/run/podman.sock"
