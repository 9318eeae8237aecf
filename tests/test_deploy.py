"""The deployment files against the project: Docker cannot run here, so what the images and the compose file
run is checked by reading them. Every ``finetune`` command they run parses with the CLI's own options, every
FT_ variable they set is a setting, build targets, ports, volumes and health checks line up, and the
compose environment makes valid production settings. (``make lint`` validates the compose file against the
compose-spec schema and lints the Dockerfile with hadolint.)"""

from __future__ import annotations

import importlib.util
import inspect
import json
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
import pytest
import yaml

from app.settings import Settings
from cli.main import main as cli
from cli.supervisor import Supervisor
from training.settings import EngineSettings

ROOT = Path(__file__).resolve().parents[1]
ONE_SHOT = {"migrate", "create-bucket"}
PROJECT_TARGETS = {"api", "worker"}
INTERPOLATION = re.compile(r"\$\{(\w+)(?::?([-?])([^}]*))?\}")


@dataclass
class Stage:
    name: str
    base: str
    env: dict[str, str] = field(default_factory=dict)
    user: str | None = None
    cmd: list[str] | None = None
    healthcheck: list[str] | None = None
    expose: list[int] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)
    copies: list[str] = field(default_factory=list)


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines, current = [], ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append(current + stripped)
        current = ""
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def dockerfile_stages() -> dict[str, Stage]:
    stages: dict[str, Stage] = {}
    stage: Stage | None = None
    for instruction, args in dockerfile_instructions((ROOT / "Dockerfile").read_text()):
        if instruction == "FROM":
            base, _, name = args.partition(" AS ")
            parent = stages.get(base.strip())
            stage = Stage(name=name.strip() or base, base=base.strip())
            if parent is not None:  # FROM an earlier stage: it inherits what that stage set
                stage.env, stage.user = dict(parent.env), parent.user
                stage.cmd, stage.healthcheck, stage.expose = parent.cmd, parent.healthcheck, list(parent.expose)
            stages[stage.name] = stage
        elif stage is None:
            continue
        elif instruction == "ENV":
            stage.env |= dict(pair.split("=", 1) for pair in shlex.split(args))
        elif instruction == "USER":
            stage.user = args
        elif instruction == "CMD":
            stage.cmd = json.loads(args)
        elif instruction == "HEALTHCHECK":
            stage.healthcheck = json.loads(args.split(" CMD ", 1)[1])
        elif instruction == "EXPOSE":
            stage.expose += [int(port) for port in args.split()]
        elif instruction == "RUN":
            stage.runs.append(args)
        elif instruction == "COPY":
            stage.copies.append(args)
    return stages


@pytest.fixture(scope="module")
def stages() -> dict[str, Stage]:
    return dockerfile_stages()


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def project_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services that run this project's images (the others are PostgreSQL and Redis)."""
    return {name: service for name, service in compose["services"].items() if "build" in service}


def long_running(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in compose["services"].items() if name not in ONE_SHOT and s.get("restart") != "no"}


def interpolate(value: str) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error}, with the defaults and a stand-in for secrets."""
    return INTERPOLATION.sub(lambda m: m.group(3) if m.group(2) == "-" else f"placeholder{m.group(1).lower()}", value)


def parse_finetune(argv: list[str]) -> tuple[str, dict[str, Any]]:
    """Resolve ``finetune ...`` through the CLI's command tree and parse its options as click would."""
    assert argv[0] == "finetune", argv
    command: click.Command = cli
    path, args = ["finetune"], list(argv[1:])
    while isinstance(command, click.Group):
        assert args, f"{' '.join(path)} needs a subcommand"
        name, *args = args
        sub = command.get_command(click.Context(command), name)
        assert sub is not None, f"the CLI has no command `{' '.join([*path, name])}`"
        command, path = sub, [*path, name]
    try:
        context = command.make_context(" ".join(path), args)
    except click.ClickException as error:
        pytest.fail(f"`{' '.join(argv)}`: {error.format_message()}")
    return " ".join(path), context.params


def check_command(argv: list[str]) -> None:
    """A command that the images run: a ``finetune`` command, a module of the project, or Python code."""
    if argv[0] == "finetune":
        parse_finetune(argv)
    elif argv[:2] == ["python", "-m"]:
        spec = importlib.util.find_spec(argv[2])
        assert spec is not None, f"no module {argv[2]}"
        source = Path(str(spec.origin)).read_text()
        assert 'if __name__ == "__main__":' in source, f"{argv[2]} does nothing when run"
    elif argv[:2] == ["python", "-c"]:
        compile(argv[2], "<healthcheck>", "exec")
    else:
        pytest.fail(f"an unexpected command: {argv}")


def test_the_targets_compose_builds_exist_and_run_the_documented_commands(stages, compose):
    for name, service in project_services(compose).items():
        assert service["build"]["target"] in stages, f"{name}: no Dockerfile stage {service['build']['target']}"
        image = service["image"].split(":")[0]
        assert image == f"finetune-{service['build']['target']}", f"{name}: image {image} for another target"
    assert set(stages) >= PROJECT_TARGETS
    assert parse_finetune(stages["api"].cmd) == (
        "finetune serve",
        # API processes: FT_API_PROCESSES, else one per core (app.settings.Settings.api_process_count)
        {"host": "0.0.0.0", "port": 8000, "workers": 0, "loglevel": "INFO", "verbose": False, "api_processes": None},
    )
    command, params = parse_finetune(stages["worker"].cmd)
    assert command == "finetune worker" and params["queues"] == "gpu" and params["gpus"] == "all"


def test_every_command_the_images_and_compose_run_exists(stages, compose):
    commands = [stages[target].cmd for target in PROJECT_TARGETS]
    commands += [stages[target].healthcheck for target in PROJECT_TARGETS]
    for service in project_services(compose).values():
        commands.append(service["command"])
        test = service.get("healthcheck", {}).get("test")
        if test is not None:
            assert test[0] == "CMD", "the project's health checks run without a shell"
            commands.append(test[1:])
    for argv in commands:
        assert argv, "a target or service without a command"
        check_command(argv)


def test_every_ft_variable_set_is_a_setting(stages, compose):
    known = {f"FT_{name.upper()}" for name in (*Settings.model_fields, *EngineSettings.model_fields)}
    set_by_images = {name for stage in stages.values() for name in stage.env}
    set_by_compose = {name for s in compose["services"].values() for name in (s.get("environment") or {})}
    unknown = sorted(name for name in set_by_images | set_by_compose if name.startswith("FT_") and name not in known)
    assert unknown == [], f"not settings of the service: {unknown}"


def test_compose_runs_production_settings(compose, monkeypatch):
    for name, service in project_services(compose).items():
        for key in [k for k in os.environ if k.startswith("FT_")]:
            monkeypatch.delenv(key)
        for key, value in service["environment"].items():
            monkeypatch.setenv(key, interpolate(str(value)))
        settings = Settings()
        assert settings.auth_required and not settings.is_embedded, name
        assert settings.sqlalchemy_url.startswith("postgresql+psycopg://"), name
        broker, events = urlsplit(settings.celery_broker_url), urlsplit(str(settings.redis_url))
        assert broker.scheme == events.scheme == "redis" and broker.hostname == events.hostname == "redis", name
        assert broker.path != events.path, f"{name}: the broker and the event streams share a Redis database"
        assert settings.logs_as == "json", name
        store = urlsplit(settings.store_location)
        assert (store.scheme, store.netloc) == ("s3", "finetune"), f"{name}: not on the object store"
        assert urlsplit(settings.s3_endpoint_url).hostname == "seaweedfs", name
        assert settings.s3_access_key_id and settings.s3_secret_access_key, name


def test_ports_line_up(stages, compose):
    api = compose["services"]["api"]
    _, params = parse_finetune(api["command"])
    published = [interpolate(str(port)).rsplit(":", 1)[1] for port in api["ports"]]
    assert published == [str(params["port"])]
    assert stages["api"].expose == [params["port"]]
    for probe in (api["healthcheck"]["test"][-1], stages["api"].healthcheck[-1]):
        assert f"127.0.0.1:{params['port']}/healthz" in probe


def test_every_long_running_service_has_a_health_check(stages, compose):
    for name, service in long_running(compose).items():
        check = service.get("healthcheck") or {}
        assert check.get("test") and not check.get("disable"), f"{name} has no health check"
        assert service.get("restart") in ("always", "unless-stopped"), f"{name} is not restarted"
    for target in PROJECT_TARGETS:
        assert stages[target].healthcheck, f"the {target} image has no HEALTHCHECK"


def test_the_api_and_workers_wait_for_the_migrations(compose):
    for name, service in project_services(compose).items():
        if name in ONE_SHOT:
            continue
        depends = service["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully", name
        assert depends["create-bucket"]["condition"] == "service_completed_successfully", name
        assert depends["postgres"]["condition"] == depends["redis"]["condition"] == "service_healthy", name
    assert parse_finetune(compose["services"]["migrate"]["command"])[0] == "finetune db upgrade"
    assert parse_finetune(compose["services"]["create-bucket"]["command"])[0] == "finetune store create-bucket"
    assert compose["services"]["create-bucket"]["depends_on"]["seaweedfs"]["condition"] == "service_healthy"


def test_the_api_and_the_workers_share_no_volume_and_workers_cache_on_volumes(stages, compose):
    services = {name: s for name, s in project_services(compose).items() if name not in ONE_SHOT}
    api_volumes = {volume.split(":")[0] for volume in services.pop("api")["volumes"]}
    for name, service in services.items():
        mounts = dict(volume.split(":", 1)[::-1] for volume in service["volumes"])
        assert not api_volumes & set(mounts.values()), f"{name} shares a volume with the API"
        environment = {**stages[service["build"]["target"]].env, **service["environment"]}
        for variable in ("FT_CACHE_DIR", "TORCH_HOME"):  # a host's caches outlive its containers
            assert environment[variable] in mounts, f"{name}: {variable} is not on a volume"
            assert mounts[environment[variable]] in compose["volumes"], name


def test_the_object_store_keeps_its_data_and_its_credentials_are_the_services(compose):
    seaweedfs = compose["services"]["seaweedfs"]
    assert seaweedfs["image"] == "chrislusf/seaweedfs:4.48"
    assert seaweedfs["command"][:2] == ["server", "-s3"] and "-master.telemetry=false" in seaweedfs["command"]
    [volume] = seaweedfs["volumes"]
    assert volume.split(":")[0] in compose["volumes"]
    environment = compose["x-finetune-environment"]
    for theirs, ours in (
        ("AWS_ACCESS_KEY_ID", "FT_S3_ACCESS_KEY_ID"),
        ("AWS_SECRET_ACCESS_KEY", "FT_S3_SECRET_ACCESS_KEY"),
    ):
        assert interpolate(seaweedfs["environment"][theirs]) == interpolate(environment[ours])


def test_workers_train_on_gpus_or_on_the_cpu_under_a_profile(compose):
    services = compose["services"]
    trainer = services["trainer"]
    [device] = trainer["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["count"] == "all" and device["capabilities"] == ["gpu"]
    assert parse_finetune(trainer["command"])[1]["gpus"] == "all"
    cpu = services["trainer-cpu"]
    assert cpu["profiles"] == ["cpu"] and "deploy" not in cpu
    _, params = parse_finetune(cpu["command"])
    assert params["queues"] == "gpu" and params["gpus"] is None
    _, params = parse_finetune(services["validator"]["command"])
    assert params["queues"] == "cpu"


def test_workers_have_time_to_checkpoint_when_stopped(compose):
    supervisor_grace = inspect.signature(Supervisor).parameters["grace_seconds"].default
    for name, service in project_services(compose).items():
        if parse_finetune(service["command"])[0] != "finetune worker":
            continue
        grace = re.fullmatch(r"(\d+)s", service["stop_grace_period"])
        assert grace is not None and int(grace.group(1)) > supervisor_grace, name


def test_redis_is_a_safe_broker_and_postgres_keeps_its_data(compose):
    redis_command = compose["services"]["redis"]["command"]
    assert redis_command[redis_command.index("--maxmemory-policy") + 1] == "noeviction"
    assert redis_command[redis_command.index("--appendonly") + 1] == "yes"
    for name in ("redis", "postgres"):
        [volume] = compose["services"][name]["volumes"]
        assert volume.split(":")[0] in compose["volumes"], name


def test_the_images_run_as_a_user_and_install_from_the_lock(stages):
    for target in PROJECT_TARGETS:
        assert stages[target].user not in (None, "root", "0", "0:0"), target
    runtime = stages["runtime"]
    assert any("pip install --no-cache-dir -c constraints.txt ." in run for run in runtime.runs)
    assert any(copy.startswith("migrations/") for copy in runtime.copies), "the migrations are not shipped"
    # The environment is installed once, in the stage the targets run: no stage copies a venv from another
    # (a second layer of the same gigabytes on the build host's disk).
    for name, stage in stages.items():
        assert not any(copy.endswith("/opt/venv") for copy in stage.copies), name


def test_the_build_context_leaves_out_local_state():
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".venv", ".git", "runs", ".finetune", "data"} <= ignored
