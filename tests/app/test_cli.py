"""``finetune``: starts without heavy imports, applies migrations, creates keys that authenticate."""

from __future__ import annotations

import os
import subprocess
import sys

from click.testing import CliRunner

from app.cli import main
from app.db.session import transaction
from app.services.projects import authenticate


def test_the_cli_imports_nothing_heavy():
    heavy = "('torch', 'fastapi', 'sqlalchemy', 'celery')"
    code = f"import sys, app.cli; print(sorted(m for m in {heavy} if m in sys.modules))"
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
