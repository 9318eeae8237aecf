"""``finetune keys list | revoke | rotate`` and expiry, against the real database of each backend."""

from __future__ import annotations

from datetime import timedelta

import pytest
from click.testing import CliRunner

from app.db.models import ApiKey
from app.db.session import transaction
from app.errors import Unauthorized
from app.services.projects import authenticate
from cli.main import main


@pytest.fixture
def keys_cli(settings):
    env = {"FT_DATABASE_URL": settings.database_url, "FT_HOME": str(settings.home)}
    runner = CliRunner()

    def run(*args: str) -> tuple[str, str]:
        result = runner.invoke(main, ["keys", *args], env=env)
        assert result.exit_code == 0, result.output
        return result.stdout.strip(), result.stderr

    return run


def key_id(stderr: str) -> str:
    return stderr.split("key ", 1)[1].split()[0]


def test_list_shows_every_key_but_never_the_key(keys_cli, factory):
    secret, made = keys_cli("create", "--project", "vision", "--name", "ci")
    keys_cli("create", "--project", "audio")
    listing, _ = keys_cli("list")
    lines = listing.splitlines()
    assert lines[0].split("\t") == ["ID", "PROJECT", "NAME", "PREFIX", "CREATED", "EXPIRES", "STATE"]
    assert len(lines) == 3 and secret not in listing and secret[:12] in listing
    row = next(line.split("\t") for line in lines if line.startswith(key_id(made)))
    assert row[1:4] == ["vision", "ci", secret[:12]] and row[5:] == ["-", "active"]
    only, _ = keys_cli("list", "--project", "audio")
    assert len(only.splitlines()) == 2


def test_revoke_by_id_or_prefix_stops_the_key_at_once(keys_cli, factory):
    first, made = keys_cli("create", "--project", "vision")
    second, _ = keys_cli("create", "--project", "vision")
    keys_cli("revoke", key_id(made))
    keys_cli("revoke", second[:12])
    with transaction(factory) as session:
        for secret in (first, second):
            with pytest.raises(Unauthorized, match="unknown, revoked or expired"):
                authenticate(session, secret)
    listing, _ = keys_cli("list")
    assert listing.count("\trevoked") == 2


def test_rotate_makes_a_new_key_and_ends_the_old_one(keys_cli, factory):
    old, made = keys_cli("create", "--project", "vision", "--name", "deploy")
    new, told = keys_cli("rotate", key_id(made))
    assert new != old and "is revoked" in told
    with transaction(factory) as session:
        assert authenticate(session, new).name == "vision"
        with pytest.raises(Unauthorized):
            authenticate(session, old)
    graced, _ = keys_cli("rotate", new[:12], "--grace-minutes", "30")
    with transaction(factory) as session:
        assert authenticate(session, new).name == "vision"  # still works for the grace period
        assert authenticate(session, graced).name == "vision"
        assert session.query(ApiKey).filter(ApiKey.key_prefix == graced[:12]).one().name == "deploy"


def test_an_expired_key_is_refused(keys_cli, factory):
    secret, made = keys_cli("create", "--project", "vision", "--expires-in-days", "1")
    with transaction(factory) as session:
        assert authenticate(session, secret).name == "vision"
        row = session.get(ApiKey, key_id(made))
        row.expires_at = row.expires_at - timedelta(days=2)
    with transaction(factory) as session, pytest.raises(Unauthorized, match="expired"):
        authenticate(session, secret)
    listing, _ = keys_cli("list")
    assert "\texpired" in listing


def test_an_unknown_key_is_a_clear_error(settings):
    env = {"FT_DATABASE_URL": settings.database_url, "FT_HOME": str(settings.home)}
    result = CliRunner().invoke(main, ["keys", "revoke", "ftk_nothing"], env=env)
    assert result.exit_code == 1
    assert "no API key 'ftk_nothing'" in result.output
