"""Settings from the environment: embedded defaults, production switches."""

from __future__ import annotations

import logging
from pathlib import Path

from app.settings import Settings


def test_embedded_defaults_live_under_home(tmp_path, monkeypatch):
    monkeypatch.setenv("FT_HOME", str(tmp_path))
    settings = Settings()
    assert settings.is_embedded and settings.auth_required is False
    assert settings.sqlalchemy_url == f"sqlite+pysqlite:///{tmp_path / 'finetune.db'}"
    assert settings.artifacts_path == tmp_path / "artifacts"
    assert settings.celery_broker_url == "filesystem://"
    assert settings.allowed_data_roots == []


def test_production_turns_auth_on_unless_told_otherwise(monkeypatch):
    monkeypatch.setenv("FT_DATABASE_URL", "postgresql+psycopg://db/finetune")
    monkeypatch.setenv("FT_BROKER_URL", "redis://redis:6379/0")
    assert Settings().auth_required is True
    monkeypatch.setenv("FT_AUTH_ENABLED", "false")
    assert Settings().auth_required is False


def test_allowed_roots_and_engine_limits_from_the_environment(monkeypatch):
    monkeypatch.setenv("FT_ALLOWED_DATA_ROOTS", "/data/a, /data/b")
    monkeypatch.setenv("FT_ALLOW_WEIGHT_DOWNLOADS", "true")
    monkeypatch.setenv("FT_MAX_UPLOAD_BYTES", "1000")
    settings = Settings()
    assert settings.allowed_data_roots == [Path("/data/a"), Path("/data/b")]
    assert settings.engine.allow_weight_downloads is True
    assert settings.max_upload_bytes == 1000


def test_auth_off_is_logged_loudly(caplog):
    with caplog.at_level(logging.WARNING):
        Settings(auth_enabled=False).warn_if_open()
    assert "AUTH IS OFF" in caplog.text


def test_weight_downloads_are_on_when_embedded_off_in_production_unless_told(monkeypatch):
    monkeypatch.delenv("FT_ALLOW_WEIGHT_DOWNLOADS", raising=False)
    monkeypatch.delenv("FT_DATABASE_URL", raising=False)
    assert Settings().engine.allow_weight_downloads is True  # embedded: as torchvision does
    monkeypatch.setenv("FT_ALLOW_WEIGHT_DOWNLOADS", "false")
    assert Settings().engine.allow_weight_downloads is False
    monkeypatch.setenv("FT_DATABASE_URL", "postgresql+psycopg://db/finetune")
    monkeypatch.delenv("FT_ALLOW_WEIGHT_DOWNLOADS")
    assert Settings().engine.allow_weight_downloads is False  # production: only when its operator says
    monkeypatch.setenv("FT_ALLOW_WEIGHT_DOWNLOADS", "true")
    assert Settings().engine.allow_weight_downloads is True
