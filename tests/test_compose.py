"""docker-compose.yml cannot run here (no Docker engine), so check what can be checked:
it parses, its services and dependencies exist, and every environment name given to a Penny
service is a setting that penny/settings.py reads."""

from __future__ import annotations

from pathlib import Path

import yaml

from penny.config_table import environment_names
from penny.settings import Settings

COMPOSE_FILE = Path(__file__).parent.parent / "docker-compose.yml"
PENNY_SERVICES = {"api", "worker", "emulator", "migrate"}
EXPECTED_SERVICES = {"postgres", "temporal", "temporal-ui", *PENNY_SERVICES}


def load_compose() -> dict:  # type: ignore[type-arg]
    return yaml.safe_load(COMPOSE_FILE.read_text())  # type: ignore[no-any-return]


def test_compose_has_the_production_like_services() -> None:
    services = load_compose()["services"]
    assert EXPECTED_SERVICES <= set(services)


def test_every_dependency_names_a_service() -> None:
    services = load_compose()["services"]
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown service {dependency}"


def test_long_running_services_have_health_checks() -> None:
    services = load_compose()["services"]
    for name in ["postgres", "temporal", "temporal-ui", "emulator", "api", "worker"]:
        assert "healthcheck" in services[name], f"{name} has no health check"


def test_penny_environment_names_are_real_settings() -> None:
    known = {variable for field in Settings.model_fields for variable in environment_names(field)}
    services = load_compose()["services"]
    for name in PENNY_SERVICES:
        environment = services[name]["environment"]
        unknown = set(environment) - known
        assert not unknown, f"{name} sets environment names Penny does not read: {unknown}"


def test_compose_environment_is_accepted_by_settings(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    environment = load_compose()["services"]["api"]["environment"]
    for key, value in environment.items():
        monkeypatch.setenv(key, str(value))
    settings = Settings()
    assert settings.effective_database_url.startswith("postgresql+asyncpg://")
    assert settings.effective_temporal_address == "temporal:7233"
    assert settings.host == "0.0.0.0"
