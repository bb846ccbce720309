"""Settings come from the environment, with documented defaults; placeholders are refused in production."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from penny.config_table import configuration_table
from penny.settings import Settings


def test_defaults_match_the_documented_ports(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ["DATABASE_URL", "TEMPORAL_ADDRESS", "STRIPE_API_BASE", "PENNY_API_PORT"]:
        monkeypatch.delenv(name, raising=False)
    settings = Settings()
    assert (settings.api_port, settings.emulator_port, settings.temporal_port, settings.temporal_ui_port) == (
        8000,
        12111,
        7233,
        8233,
    )
    assert settings.data_dir.name == ".penny"
    assert settings.uses_embedded_postgres and settings.uses_embedded_temporal and settings.runs_embedded_emulator


def test_configured_services_replace_the_embedded_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql+asyncpg://u@db:5432/penny")
    monkeypatch.setenv("TEMPORAL_ADDRESS", "temporal.example:7233")
    monkeypatch.setenv("STRIPE_API_BASE", "https://api.stripe.com")
    settings = Settings()
    assert settings.effective_database_url == "postgresql+asyncpg://u@db:5432/penny"
    assert not settings.uses_embedded_postgres and not settings.uses_embedded_temporal
    assert not settings.uses_emulator


def test_webhook_secrets_are_a_comma_separated_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STRIPE_WEBHOOK_SECRETS", "whsec_old, whsec_new")
    assert Settings().webhook_secrets == ["whsec_old", "whsec_new"]


def test_production_refuses_placeholder_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PENNY_ENV", "production")
    with pytest.raises(ValidationError, match="STRIPE_API_KEY"):
        Settings()


def test_production_accepts_real_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PENNY_ENV", "production")
    monkeypatch.setenv("STRIPE_API_KEY", "sk_live_realkey")
    monkeypatch.setenv("STRIPE_WEBHOOK_SECRETS", "whsec_real")
    monkeypatch.setenv("PENNY_API_KEY_PEPPER", "a-real-pepper")
    assert Settings().env == "production"


def test_configuration_table_lists_every_setting() -> None:
    table = configuration_table()
    for field in Settings.model_fields:
        assert f"PENNY_{field.upper()}" in table


def test_readme_configuration_table_is_current() -> None:
    from penny.readme_sync import README, readme_with_current_table

    text = README.read_text()
    assert text == readme_with_current_table(text), "run `python -m penny.readme_sync`"


def test_payment_timings_override_names_known_fields_only() -> None:
    from penny.settings import Settings

    settings = Settings(
        env="test", payment_timings='{"settlement_poll_interval_seconds": 2, "dispute_window_seconds": 5}'
    )
    timings = settings.payment_timings_override
    assert timings is not None
    assert (timings.settlement_poll_interval_seconds, timings.dispute_window_seconds) == (2, 5)
    assert timings.authorization_expiry_seconds == 7 * 24 * 3600  # the rest keep production defaults
    assert Settings(env="test").payment_timings_override is None
    for bad in ('{"no_such_wait": 1}', '{"dispute_window_seconds": -1}', '{"dispute_window_seconds": 1.5}', "[1]", "{"):
        with pytest.raises(ValueError, match="PENNY_PAYMENT_TIMINGS"):
            Settings(env="test", payment_timings=bad)
