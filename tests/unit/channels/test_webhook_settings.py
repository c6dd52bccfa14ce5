"""Webhook secrets are checked when the settings are built: an empty or short secret stops
every program at start-up, with a message naming the setting (and not the secret)."""

from __future__ import annotations

from pathlib import Path

import pytest

from nanoclaw_common.channels.webhook import WebhookAdapter
from nanoclaw_common.errors import ConfigError, PermanentFailure
from nanoclaw_common.settings import MIN_WEBHOOK_SECRET_CHARS, Settings


@pytest.mark.parametrize("secret", ["", "   ", "zq7Kp", "x" * (MIN_WEBHOOK_SECRET_CHARS - 1)])
def test_empty_or_short_webhook_secrets_are_refused(tmp_path: Path, secret: str) -> None:
    with pytest.raises(ConfigError, match="NANOCLAW_WEBHOOK_SECRETS") as caught:
        Settings.load(
            {"NANOCLAW_WEBHOOK_SECRETS": f"ci=ok-long-secret-1,github={secret}"}, cwd=tmp_path
        )
    assert "the secret of github is empty or shorter than" in str(caught.value)
    if secret.strip():
        assert secret not in str(caught.value)


def test_toml_secrets_are_checked_too(tmp_path: Path) -> None:
    config = tmp_path / "nanoclaw.toml"
    config.write_text('[webhook_secrets]\nci = ""\n')
    with pytest.raises(ConfigError, match="NANOCLAW_WEBHOOK_SECRETS"):
        Settings.load({"NANOCLAW_CONFIG": str(config)}, cwd=tmp_path)


def test_a_long_enough_secret_is_accepted(tmp_path: Path) -> None:
    secret = "x" * MIN_WEBHOOK_SECRET_CHARS
    settings = Settings.load({"NANOCLAW_WEBHOOK_SECRETS": f"ci={secret}"}, cwd=tmp_path)
    assert settings.webhook_secrets == {"ci": secret}
    assert secret in settings.secrets()  # long enough for the log redaction to mask it


def test_the_adapter_refuses_short_secrets_however_it_is_built() -> None:
    with pytest.raises(PermanentFailure, match="too short"):
        WebhookAdapter({"ci": "tiny"}, "127.0.0.1", 0)
