"""``finetune``: starts without heavy imports, applies migrations, creates keys that authenticate."""

from __future__ import annotations

import os
import subprocess
import sys

from click.testing import CliRunner

from app.db.session import transaction
from app.services.projects import authenticate
from cli.main import main


def test_the_cli_imports_nothing_heavy():
    heavy = "('torch', 'fastapi', 'sqlalchemy', 'celery')"
    code = f"import sys, cli.main; print(sorted(m for m in {heavy} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_db_upgrade_creates_the_embedded_database(tmp_path):
    env = {**os.environ, "FT_HOME": str(tmp_path / "home")}
    env.pop("FT_DATABASE_URL", None)
    result = CliRunner().invoke(main, ["db", "upgrade"], env=env)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "home" / "finetune.db").is_file()
    assert "head" in result.output


def test_keys_create_prints_a_key_of_the_project_once(settings, factory):
    env = {"FT_DATABASE_URL": settings.database_url, "FT_HOME": str(settings.home)}
    runner = CliRunner()
    first = runner.invoke(main, ["keys", "create", "--project", "vision"], env=env)
    second = runner.invoke(main, ["keys", "create", "--project", "vision", "--name", "ci"], env=env)
    assert first.exit_code == 0 and second.exit_code == 0, first.output + second.output
    key_one, key_two = first.stdout.strip(), second.stdout.strip()
    assert key_one != key_two and key_one.startswith("ftk_")
    with transaction(factory) as session:
        assert authenticate(session, key_one).name == "vision"
        assert authenticate(session, key_two).id == authenticate(session, key_one).id


def test_help_lists_the_commands():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    assert "db" in result.output and "keys" in result.output


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``finetune ARGS`` in a process of its own, as a person runs it."""
    return subprocess.run([sys.executable, "-m", "cli", *args], env=env, capture_output=True, text=True)


def test_keys_create_works_on_a_fresh_embedded_home(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("FT_")} | {"FT_HOME": str(tmp_path / "fresh")}
    created = run_cli("keys", "create", "--project", "vision", env=env)
    assert created.returncode == 0, created.stderr
    assert created.stdout.strip().startswith("ftk_") and "Traceback" not in created.stderr
    assert (tmp_path / "fresh" / "finetune.db").is_file()  # migrated on first use, as serve does


def test_a_command_on_an_unmigrated_server_database_says_to_run_db_upgrade(postgres_url, tmp_path):
    from tests.app.conftest import _create_postgres_database, drop_postgres_database

    database_url = _create_postgres_database(postgres_url)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FT_")}
    env |= {"FT_HOME": str(tmp_path / "home"), "FT_DATABASE_URL": database_url}
    try:
        refused = run_cli("keys", "create", "--project", "vision", env=env)
        assert refused.returncode == 1 and "Traceback" not in refused.stderr
        assert "run `finetune db upgrade`" in refused.stderr and "no tables yet" in refused.stderr
        assert run_cli("db", "upgrade", env=env).returncode == 0  # production migrates explicitly, then it works
        assert run_cli("keys", "create", "--project", "vision", env=env).returncode == 0
    finally:
        drop_postgres_database(postgres_url, database_url)


def test_an_unreachable_server_database_is_one_line_not_a_traceback(tmp_path):
    from tests.app.servers import free_port

    env = {k: v for k, v in os.environ.items() if not k.startswith("FT_")} | {"FT_HOME": str(tmp_path / "home")}
    env["FT_DATABASE_URL"] = f"postgresql+psycopg://postgres:secret@127.0.0.1:{free_port()}/nothing"
    refused = run_cli("keys", "create", "--project", "vision", env=env)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert "cannot reach the database at postgresql+psycopg://postgres:***@127.0.0.1" in refused.stderr
