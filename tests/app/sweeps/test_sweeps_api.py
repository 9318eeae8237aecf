"""``/v1/sweeps`` on both backends (SQLite, PostgreSQL): the space checked like a spec, trials as ordinary
jobs, the driver that keeps ``max_parallel`` of them going until ``max_trials`` (idempotent), the best trial,
cancel, the list, and Optuna's tables kept apart from the service's."""

from __future__ import annotations

import math
import threading
from pathlib import Path

import pytest
from sqlalchemy import create_engine, event, inspect, text
from sqlalchemy.engine import make_url

from app.db.models import Sweep
from app.db.session import transaction
from app.dispatch.names import GPU_QUEUE, TRAIN_JOB
from app.services import job_records, job_state
from app.statuses import JobStatus
from app.sweeps import service
from app.sweeps.study import storage_url
from tests.app.helpers import broker_messages, job_body, ready_dataset

pytestmark = pytest.mark.anyio


@pytest.fixture
async def dataset(client, app, settings):
    return await ready_dataset(client, app, settings)


def sweep_body(dataset_id: str, **changes):
    body = {
        "spec": job_body(dataset_id)["spec"],
        "space": {
            "optimizer.lr": {"loguniform": [1e-4, 1e-1]},
            "regularization.label_smoothing": {"choice": [0, 0.1]},
            "scheduler.name": {"choice": ["cosine", "onecycle"]},
        },
        "algorithm": "random",
        "objective": {"metric": "train_acc"},
        "max_trials": 3,
        "max_parallel": 2,
        "early_stopping": {"type": "asha", "min_epochs": 1, "reduction_factor": 2},
        "seed": 7,
    }
    return body | changes


async def submit(client, body):
    response = await client.post("/v1/sweeps", json=body)
    assert response.status_code == 201, response.text
    return response.json()


def run_trial(app, job_id: str, train_acc: float, status: JobStatus = JobStatus.SUCCEEDED) -> None:
    """What a worker does to a trial: claim it, record an epoch, end it."""
    with transaction(app.state.session_factory) as session:
        assert job_state.claim_job(session, job_id, "w", 60)
        job_records.record_epoch_metrics(session, job_id, {"epoch": 1, "train_acc": train_acc}, owner="w")
        job_state.finish_job(session, job_id, "w", status, note={"epoch": 1} if status == JobStatus.PRUNED else None)


async def test_a_sweep_runs_its_trials_as_jobs_and_finds_the_best(client, app, dataset):
    sweep = await submit(client, sweep_body(dataset["id"]))
    assert sweep["status"] == "running" and sweep["objective"] == {"metric": "train_acc", "mode": "max"}
    trials = sweep["trials"]
    assert [t["number"] for t in trials] == [0, 1] and {t["status"] for t in trials} == {"queued"}
    for trial in trials:
        assert 1e-4 <= trial["params"]["optimizer.lr"] <= 1e-1
        assert trial["params"]["regularization.label_smoothing"] in (0, 0.1)
        assert trial["params"]["scheduler.name"] in ("cosine", "onecycle")
    sent = [m["args"][0] for m in broker_messages(app, GPU_QUEUE) if m["task"] == TRAIN_JOB]
    assert sorted(sent) == sorted(t["job_id"] for t in trials)
    job = (await client.get(f"/v1/jobs/{trials[0]['job_id']}")).json()
    assert job["sweep_id"] == sweep["id"] and job["spec"]["optimizer"]["lr"] == trials[0]["params"]["optimizer.lr"]
    assert job["metadata"] == {"sweep": sweep["id"], "sweep_trial": "0"}

    services = app.state.runtime
    run_trial(app, trials[0]["job_id"], 0.9)
    service.advance(services, sweep["id"])
    service.advance(services, sweep["id"])  # a retry: nothing more
    shown = (await client.get(f"/v1/sweeps/{sweep['id']}")).json()
    assert [t["status"] for t in shown["trials"]] == ["succeeded", "queued", "queued"]
    assert shown["best_trial"]["job_id"] == trials[0]["job_id"] and shown["best_trial"]["objective"] == 0.9
    assert shown["best_trial"]["spec"]["optimizer"]["lr"] == trials[0]["params"]["optimizer.lr"]

    run_trial(app, trials[1]["job_id"], 0.2, JobStatus.PRUNED)
    run_trial(app, shown["trials"][2]["job_id"], 0.95)
    service.advance(services, sweep["id"])
    done = (await client.get(f"/v1/sweeps/{sweep['id']}")).json()
    assert done["status"] == "succeeded" and len(done["trials"]) == 3  # max_trials: no fourth
    assert done["trial_counts"] == {"succeeded": 2, "pruned": 1}
    assert done["best_trial"]["number"] == 2 and math.isclose(done["best_trial"]["objective"], 0.95)
    pruned = (await client.get(f"/v1/jobs/{trials[1]['job_id']}")).json()
    assert pruned["status"] == "pruned" and pruned["progress"]["epoch"] == 1
    listed = (await client.get("/v1/jobs", params={"status": "pruned"})).json()["data"]
    assert [j["id"] for j in listed] == [trials[1]["job_id"]]

    from optuna.trial import TrialState

    from app.sweeps.study import open_study

    states = [t.state for t in open_study(app.state.settings, sweep["id"], mode="max").trials]
    assert states == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.COMPLETE]


async def test_a_grid_sweep_runs_every_point_once(client, app, dataset):
    space = {"regularization.label_smoothing": {"grid": [0, 0.1]}, "optimizer.lr": {"choice": [0.01, 0.001]}}
    body = sweep_body(dataset["id"], space=space, algorithm="grid", max_trials=50, max_parallel=8)
    sweep = await submit(client, body)
    assert sweep["max_trials"] == 4 and len(sweep["trials"]) == 4
    points = {(t["params"]["regularization.label_smoothing"], t["params"]["optimizer.lr"]) for t in sweep["trials"]}
    assert points == {(0, 0.01), (0, 0.001), (0.1, 0.01), (0.1, 0.001)}


@pytest.mark.parametrize(
    ("space", "param"),
    [
        ({"optimizer.lrr": {"loguniform": [1e-4, 1e-1]}}, "space.optimizer.lrr"),
        ({"regularization.label_smoothing": {"choice": [0, 1.5]}}, "space.regularization.label_smoothing"),
        ({"scheduler.name": {"choice": ["cosine", "sideways"]}}, "space.scheduler.name"),
        ({"optimizer.lr": {"loguniform": [0, 1e-1]}}, "space.optimizer.lr"),
        ({"optimizer.lr": {"uniform": [0.1]}}, "space.optimizer.lr"),
        ({"optimizer.lr": {"between": [0.1, 0.2]}}, "space.optimizer.lr"),
        ({"data.batch_size": {"int": [0, 8]}}, "space.data.batch_size"),
    ],
)
async def test_a_bad_space_is_a_422_naming_the_path_and_queues_nothing(client, app, dataset, space, param):
    broker_messages(app, GPU_QUEUE)
    response = await client.post("/v1/sweeps", json=sweep_body(dataset["id"], space=space))
    assert response.status_code == 422, response.text
    assert response.json()["error"]["param"] == param, response.json()
    assert broker_messages(app, GPU_QUEUE) == []
    assert (await client.get("/v1/jobs")).json()["data"] == []
    assert (await client.get("/v1/sweeps")).json()["data"] == []


async def test_a_grid_sweep_refuses_a_range_and_a_bad_base_spec_names_its_field(client, dataset):
    ranged = sweep_body(dataset["id"], algorithm="grid")
    response = await client.post("/v1/sweeps", json=ranged)
    assert response.status_code == 422 and response.json()["error"]["param"] == "space.optimizer.lr"
    bad = sweep_body(dataset["id"])
    bad["spec"]["training"]["epochs"] = 0
    response = await client.post("/v1/sweeps", json=bad)
    assert response.status_code == 422 and response.json()["error"]["param"] == "spec.training.epochs"


async def test_cancel_stops_the_trials_and_the_list_pages(client, app, dataset):
    first = await submit(client, sweep_body(dataset["id"]))
    second = await submit(client, sweep_body(dataset["id"], name="second"))
    with transaction(app.state.session_factory) as session:
        job_state.claim_job(session, first["trials"][0]["job_id"], "w", 60)
    cancelled = await client.post(f"/v1/sweeps/{first['id']}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert [t["status"] for t in cancelled.json()["trials"]] == ["cancelling", "cancelled"]
    service.advance(app.state.runtime, first["id"])  # a cancelled sweep asks for nothing more
    assert len((await client.get(f"/v1/sweeps/{first['id']}")).json()["trials"]) == 2
    again = await client.post(f"/v1/sweeps/{first['id']}/cancel")
    assert again.status_code == 200 and again.json()["status"] == "cancelled"
    page = (await client.get("/v1/sweeps", params={"limit": 1})).json()
    assert [s["id"] for s in page["data"]] == [second["id"]] and page["has_more"]
    rest = (await client.get("/v1/sweeps", params={"limit": 1, "after": page["last_id"]})).json()
    assert [s["id"] for s in rest["data"]] == [first["id"]] and not rest["has_more"]
    assert (await client.get("/v1/sweeps/sweep_01JAAAAAAAAAAAAAAAAAAAAAAA")).status_code == 404


async def test_optunas_tables_stay_apart_from_the_services(client, app, dataset, backend):
    await submit(client, sweep_body(dataset["id"]))
    settings = app.state.settings
    with app.state.engine.connect() as connection:
        service_tables = set(inspect(connection).get_table_names())
        version = connection.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
    assert "studies" not in service_tables and "trials" not in service_tables
    assert version == "0008"
    url = storage_url(settings)
    if backend.name == "postgresql":
        assert url == make_url(settings.sqlalchemy_url).render_as_string(hide_password=False)
        with app.state.engine.connect() as connection:
            optuna_tables = set(inspect(connection).get_table_names(schema="optuna"))
            optuna_version = connection.execute(text("SELECT version_num FROM optuna.alembic_version")).scalar_one()
        assert {"studies", "trials", "alembic_version"} <= optuna_tables
    else:
        database = Path(make_url(url).database or "")
        assert database.parent == Path(make_url(settings.sqlalchemy_url).database or "").parent
        assert database.name == "finetune.optuna.db"
        engine = create_engine(url)
        with engine.connect() as connection:
            assert {"studies", "trials", "alembic_version"} <= set(inspect(connection).get_table_names())
            optuna_version = connection.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
        engine.dispose()
    assert optuna_version != "0008"  # Optuna's own migration history


def test_the_example_sweep_is_a_valid_sweep():
    import yaml

    from app.sweeps.schemas import SweepCreate
    from app.sweeps.space import check_space, parse_space

    example = Path(__file__).resolve().parents[3] / "examples" / "sweeps" / "cifar10-lr-sweep.yaml"
    body = SweepCreate.model_validate(yaml.safe_load(example.read_text()))
    body.spec["data"]["dataset"] = "ds_01JAAAAAAAAAAAAAAAAAAAAAAA"  # what `sweeps submit --dataset` sets
    spec = check_space(body.spec, parse_space(body.space), seed=0)
    assert spec.optimizer.name == "sgd" and body.early_stopping is not None


async def test_the_list_filters_by_status_and_reads_a_pages_trials_in_one_query(client, app, dataset):
    made = [await submit(client, sweep_body(dataset["id"], name=f"s{n}")) for n in range(3)]  # 2 trials each
    assert (await client.post(f"/v1/sweeps/{made[0]['id']}/cancel")).status_code == 200

    async def listed(*statuses: str) -> list[str]:
        page = await client.get("/v1/sweeps", params=[("status", status) for status in statuses])
        assert page.status_code == 200, page.text
        return [sweep["id"] for sweep in page.json()["data"]]

    assert await listed("cancelled") == [made[0]["id"]]
    assert await listed("running") == [made[2]["id"], made[1]["id"]]
    assert await listed("running", "cancelled") == await listed() == [s["id"] for s in reversed(made)]
    assert await listed("succeeded") == []
    assert (await client.get("/v1/sweeps", params={"status": "sideways"})).status_code == 422

    # The statements of one page, counted where SQLAlchemy sends them: as many for three sweeps as for one.
    engine, here, statements = app.state.engine, threading.get_ident(), []

    def count(_conn, _cursor, statement, *_args):
        if threading.get_ident() == here:
            statements.append(statement)

    with transaction(app.state.session_factory) as session:
        project_id = session.get(Sweep, made[0]["id"]).project_id
    counts = {}
    event.listen(engine, "before_cursor_execute", count)
    try:
        for limit in (1, 3):
            statements.clear()
            with transaction(app.state.session_factory) as session:
                views, _ = service.list_sweeps(session, project_id, after=None, limit=limit)
                assert len(views) == limit and all(sum(v.trial_counts.values()) == 2 for v in views)
            counts[limit] = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert len(counts[3]) == len(counts[1]) == 2, counts  # the page, then every trial of the page


async def test_a_cancel_closes_the_studys_open_trials(client, app, dataset):
    """A cancelled sweep's study keeps no RUNNING trial: one whose job ended is told as the driver would
    (here a success, with its value), one still stopping is told FAIL."""
    from optuna.trial import TrialState

    from app.sweeps.study import open_study

    sweep = await submit(client, sweep_body(dataset["id"]))
    first, second = (trial["job_id"] for trial in sweep["trials"])
    run_trial(app, first, 0.8)  # ended, and no driver pass has told the study yet
    with transaction(app.state.session_factory) as session:
        assert job_state.claim_job(session, second, "w", 60)  # running: the cancel leaves it cancelling

    def states() -> list[tuple[TrialState, float | None]]:
        return [(t.state, t.value) for t in open_study(app.state.settings, sweep["id"], mode="max").trials]

    assert states() == [(TrialState.RUNNING, None), (TrialState.RUNNING, None)]
    cancelled = (await client.post(f"/v1/sweeps/{sweep['id']}/cancel")).json()
    assert [t["status"] for t in cancelled["trials"]] == ["succeeded", "cancelling"]
    assert states() == [(TrialState.COMPLETE, 0.8), (TrialState.FAIL, None)]
    assert (await client.post(f"/v1/sweeps/{sweep['id']}/cancel")).status_code == 200  # again: nothing to tell
    assert states() == [(TrialState.COMPLETE, 0.8), (TrialState.FAIL, None)]
