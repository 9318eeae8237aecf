"""The console, as a person uses it, in Chromium against a real embedded server (tests/console/conftest.py):
upload a CIFAR-10 subset, submit a job from the editor after fixing a validation error, watch its loss curve
grow live (pausing and resuming the stream without a gap), download its weights, cancel another job, pause and
resume one, compare two jobs, sign in with a key, reach everything with the keyboard. Every test runs against the
embedded service and against the production stack (PostgreSQL, Redis, a Celery worker): tests/console/conftest.py."""

from __future__ import annotations

import hashlib
import io
import os
import re
import time
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import yaml

from tests.console.conftest import DOCS_SCREENSHOT, Console, Page, finetune_serve, open_page

if TYPE_CHECKING:
    from playwright.sync_api import Route

pytestmark = pytest.mark.slow

TERMINAL = {"succeeded", "failed", "cancelled"}


@pytest.fixture(scope="module")
def dataset_id(browser: object, console: Console, cifar_archive: Path) -> str:
    """The subset, uploaded through the data sets page (progress bar and all) and validated to ready."""
    context, page = open_page(browser, console)
    try:
        page.goto("/datasets")
        p = page.page
        p.set_input_files("#dataset-file", str(cifar_archive))
        p.fill("#dataset-name", "cifar-subset")
        p.click("#upload")
        p.wait_for_selector("#uploaded")  # type: ignore[attr-defined]
        assert p.eval_on_selector("#upload-progress", "e => e.value") == 1  # type: ignore[attr-defined]
        assert "(validating)" in p.inner_text("#upload-status")  # type: ignore[attr-defined]
        p.click("#uploaded")  # type: ignore[attr-defined]
        p.wait_for_url("**/#/datasets/ds_*")  # type: ignore[attr-defined]
        p.wait_for_selector("#thumbnails img")  # type: ignore[attr-defined]
        dataset = p.url.rsplit("/", 1)[1]  # type: ignore[attr-defined]
    finally:
        context.close()
    assert not page.watch.problems, page.watch.problems
    return str(dataset)


def wait_for_job(console: Console, job_id: str, statuses: set[str], timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    with console.api() as api:
        while (job := api.get(f"/v1/jobs/{job_id}").json())["status"] not in statuses:
            assert time.monotonic() < deadline, job
            time.sleep(0.2)
    return job


def submit(console: Console, dataset: str, backbone: str = "resnet18", **training: object) -> str:
    spec = {
        "backbone": {"name": backbone},
        "data": {"dataset": dataset, "image_size": 32, "batch_size": 32},
        "optimizer": {"name": "sgd", "lr": 0.01},
        "training": {"epochs": 2, "log_every_steps": 1, **training},
    }
    with console.api() as api:
        created = api.post("/v1/jobs", json={"spec": spec, "metadata": {"made_by": "api"}})
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


def test_a_data_set_shows_its_class_counts_and_thumbnails(page: Page, dataset_id: str) -> None:
    page.goto("/datasets")
    p = page.page
    p.wait_for_selector(f"a[href='#/datasets/{dataset_id}']")
    page.snap("datasets")
    page.goto(f"/datasets/{dataset_id}")
    p.wait_for_selector("#thumbnails img")
    splits = p.eval_on_selector_all(
        ".bar-group", "gs => gs.map(g => [g.querySelector('h4').textContent, g.querySelectorAll('.bar-value').length])"
    )
    values = p.eval_on_selector_all(".bar-group .bar-value", "vs => vs.map(v => Number(v.textContent))")
    assert splits == [["train", 10], ["test", 10]] and values == [12] * 10 + [4] * 10
    thumbs = p.eval_on_selector_all(".thumb-class", "cs => cs.map(c => c.querySelectorAll('img').length)")
    assert thumbs == [4] * 10
    assert p.eval_on_selector_all("#thumbnails img", "is => is.every(i => i.complete && i.naturalWidth === 32)")
    page.snap("dataset")


def test_a_data_set_that_fails_validation_shows_why(page: Page, tmp_path: Path) -> None:
    from PIL import Image

    archive = tmp_path / "one-class.zip"
    with zipfile.ZipFile(archive, "w") as out:
        picture = io.BytesIO()
        Image.new("RGB", (16, 16), (200, 30, 30)).save(picture, format="PNG")
        out.writestr("train/cat/0.png", picture.getvalue())
    page.goto("/datasets")
    p = page.page
    p.set_input_files("#dataset-file", str(archive))
    p.click("#upload")
    p.click("#uploaded")
    reason = p.locator("section.problems li").first
    reason.wait_for()
    assert "only one class folder (train/cat/)" in reason.inner_text()
    assert "dataset_invalid" in p.inner_text("section.problems")
    page.snap("dataset-failed")


def test_submit_from_the_editor_watch_it_train_and_download_its_weights(
    page: Page, console: Console, dataset_id: str
) -> None:
    page.goto(f"/new?dataset={dataset_id}")
    p = page.page
    editor = p.locator("#spec-editor")
    prefilled = editor.input_value()
    assert "from examples/cifar10-resnet18.yaml" in prefilled and f"dataset: {dataset_id}" in prefilled
    spec = yaml.safe_load(prefilled)
    spec["optimizer"]["lr"] = -0.05  # a mistake the dry run catches
    spec["data"] |= {"batch_size": 32}
    spec["training"] |= {"epochs": 2, "log_every_steps": 1}
    spec["clipping"] = {"mode": "norm", "max_norm": 1.0}
    text = yaml.safe_dump(spec, sort_keys=False)
    editor.fill(text)
    page.watch.expect(422, "/v1/jobs/validate")
    p.click("#validate")
    error = p.locator("#spec-errors li").first
    error.wait_for()
    lr_line = text.splitlines().index("  lr: -0.05")
    assert error.get_attribute("data-line") == str(lr_line) and "lr" in (error.get_attribute("data-param") or "")
    assert "greater than 0" in error.inner_text() and p.is_disabled("#submit")
    # Beside its field too: the gutter marks the line, and the error's link selects it in the editor.
    assert p.inner_text(".gutter").split("\n")[lr_line] == f"● {lr_line + 1}"
    error.locator("button").click()
    selected = p.evaluate("(e => e.value.slice(e.selectionStart, e.selectionEnd))(document.activeElement)")
    assert selected == "  lr: -0.05"
    page.snap("new-job-error")

    editor.fill(text.replace("lr: -0.05", "lr: 0.005"))
    with p.expect_response("**/v1/jobs/validate", timeout=120_000) as answer:  # builds the model on the CPU
        p.click("#validate")
    preview = answer.value.json()["lr_preview"]
    p.wait_for_selector("#plan figure.chart")
    assert p.inner_text("#spec-errors") == "The spec is valid."
    assert p.inner_text("dd[data-field='Parameters']") == "11,181,642"  # resnet18 with a 10-class head
    assert p.inner_text("dd[data-field='Trainable (first epoch)']") == "11,181,642"
    # One line per parameter group, each over every step of the preview.
    series = p.locator("#plan figure.chart").get_attribute("data-series") or ""
    assert series.split(",") == [str(len(preview["steps"]))] * len(preview["groups"]), (series, preview["groups"])
    assert_charts_read_without_colour(page)
    page.snap("new-job-plan")
    p.fill("#job-name", "from-the-editor")
    p.click("#submit")
    p.wait_for_url("**/#/jobs/ftjob_*")
    job_id = p.url.rsplit("/", 1)[1]

    # The loss curve gains points while the job trains; pausing live updates and resuming loses nothing.
    loss = p.locator("figure.chart[data-chart='Loss']")
    seen: list[int] = []
    paused = False
    deadline = time.monotonic() + 300
    while p.get_attribute(".live-state", "data-state") != "ended":
        assert time.monotonic() < deadline, "the job did not finish"
        points = int(loss.get_attribute("data-points") or 0)
        if points and (not seen or points > seen[-1]) and p.inner_text("h1 .badge") == "running":
            seen.append(points)
        if len(seen) >= 2 and not paused and p.get_attribute(".live-state", "data-state") == "live":
            p.click("#live-toggle")  # pause
            assert p.inner_text(".live-state") == "paused"
            p.wait_for_timeout(700)
            p.click("#live-toggle")  # resume, after the last event seen
            paused = True
        p.wait_for_timeout(100)
    assert len(seen) >= 2 and paused, f"the loss curve did not grow while the job ran: {seen}"
    p.wait_for_selector("h1 .badge:text('succeeded')")
    with console.api() as api:
        events = api.get(f"/v1/jobs/{job_id}/events", params={"limit": 100}).json()
        steps = [e for e in events["data"] if e["type"] == "step"]
        artifacts = {a["name"]: a for a in api.get(f"/v1/jobs/{job_id}/artifacts").json()["data"]}
    assert not events["has_more"]
    shown = [int(s) for s in p.eval_on_selector_all("#event-log tbody tr", "rs => rs.map(r => r.dataset.seq)")]
    assert shown == [e["seq"] for e in events["data"]]  # every event once, in order, across the pause
    assert loss.get_attribute("data-series") == f"{len(steps)},2,2"  # step loss; train and val loss per epoch
    assert p.get_attribute("figure.chart[data-chart='Clipped steps']", "data-points") == "2"

    assert_charts_read_without_colour(page)

    # Final and test metrics, confusion matrices with per-class accuracy, the resolved spec, and the weights,
    # whose sha256 is the API's.
    p.wait_for_selector("table.confusion[data-split='test']")
    with console.api() as api:
        job = api.get(f"/v1/jobs/{job_id}").json()
        confusion = api.get(f"/v1/jobs/{job_id}/confusion").json()
    shown_metrics = p.eval_on_selector_all(
        "#metrics tbody tr", "rs => rs.map(r => [...r.cells].map(c => c.textContent).join(' '))"
    )
    assert f"test test_acc {job['metrics']['test']['test_acc']:.4f}" in shown_metrics, shown_metrics
    for split, key in (("validation", "val"), ("test", "test")):
        cells = p.eval_on_selector_all(
            f"table.confusion[data-split='{split}'] tbody tr",
            "rs => rs.map(r => [...r.querySelectorAll('td')].map(c => c.textContent))",
        )
        expected = confusion[key]
        assert [[int(n) for n in row[:-1]] for row in cells] == expected["matrix"]
        assert [row[-1] for row in cells] == [f"{a * 100:.1f}%" for a in expected["per_class_accuracy"]]
    assert yaml.safe_load(p.inner_text("pre.spec")) == job["spec"]
    with p.expect_download() as download:
        p.click("[data-download='model.safetensors']")
    path = download.value.path()
    assert download.value.suggested_filename == f"{job_id}.safetensors"
    assert hashlib.sha256(Path(path).read_bytes()).hexdigest() == artifacts["model.safetensors"]["sha256"]
    page.snap("job")
    if os.environ.get("FT_CONSOLE_DOCS_SCREENSHOT") == "1" and console.deployment == "embedded":
        save_docs_screenshot(page)


def save_docs_screenshot(page: Page) -> None:
    """docs/job-page.png, the README's picture: the top of the job page at 1280 px, scaled to 800 px wide."""
    from PIL import Image

    p = page.page
    p.set_viewport_size({"width": 1280, "height": 1100})
    p.evaluate("window.scrollTo(0, 0)")
    p.wait_for_timeout(300)
    image = Image.open(io.BytesIO(p.screenshot())).convert("RGB")
    image = image.resize((800, round(image.height * 800 / image.width)), Image.Resampling.LANCZOS)
    image.quantize(colors=128).save(DOCS_SCREENSHOT, optimize=True)


def flatten(value: object, prefix: str = "") -> dict[str, object]:
    """A spec's fields by dotted path, as the compare page lists them."""
    if not isinstance(value, dict):
        return {prefix: value}
    found: dict[str, object] = {}
    for key, inner in value.items():
        found |= flatten(inner, f"{prefix}.{key}" if prefix else key)
    return found


def assert_charts_read_without_colour(page: Page) -> None:
    """Every chart's legend tells its series apart by line and marker alone: with the colours taken out of the
    swatches (SVG pictures of each line's dash pattern and marker), no two are alike."""
    swatches = page.page.eval_on_selector_all(  # type: ignore[attr-defined]
        "figure.chart",
        """fs => fs.map(f => [f.dataset.chart, [...f.querySelectorAll('.u-legend .u-series .u-marker')].slice(1)
              .map(m => decodeURIComponent(getComputedStyle(m).backgroundImage))])""",
    )
    assert swatches
    for chart, images in swatches:
        shapes = [re.sub(r"#[0-9a-fA-F]{6}", "", image) for image in images]
        assert images and all("<svg" in shape for shape in shapes), (chart, images)
        assert len(set(shapes)) == len(shapes), f"{chart}: series look alike without colour: {shapes}"


def test_the_jobs_list_follows_a_job_live_and_its_page_cancels_it(
    page: Page, console: Console, dataset_id: str
) -> None:
    job_id = submit(console, dataset_id, "shufflenet_v2_x0_5", epochs=200)
    page.goto("/jobs")
    p = page.page
    # The list refreshes itself: the row turns running, then shows an ETA once the first epoch is done.
    row = p.locator(f"#job-list tr:has(a[href='#/jobs/{job_id}'])")
    row.locator("td[data-label='Progress']:has-text('ETA')").wait_for(timeout=180_000)
    assert row.locator("td[data-label='Status']").inner_text() == "running"
    progress = row.locator("td[data-label='Progress']").inner_text().strip()
    assert re.fullmatch(r"\d+/200 epochs · ETA \d+ (s|min \d+ s|h \d+ min)", progress), progress
    assert float(row.locator("progress").get_attribute("value") or 0) > 0

    row.locator(f"a[href='#/jobs/{job_id}']").click()
    p.wait_for_selector("h1 .badge:text('running')")
    # The race that once left the page at `cancelling`: the page's first read of the job after the cancel answers
    # only after the job is `cancelled` and its stream has said so, and answers `cancelling`, what a read made a
    # moment earlier said. (Its real answer may already be `cancelled`: a fast worker stops within the read's
    # round trip.)
    stale: list[str] = []

    def answer_late(route: Route) -> None:
        if route.request.method != "GET" or stale:
            route.fallback()
            return
        response = route.fetch()
        job = response.json()
        if job["status"] not in ("cancelling", "cancelled"):
            route.fulfill(response=response)
            return
        stale.append(job["status"])
        wait_for_job(console, job_id, TERMINAL, timeout=180)
        time.sleep(2)  # the stream's `cancelled` event reaches the page first
        route.fulfill(response=response, json={**job, "status": "cancelling"})

    p.route(f"**/v1/jobs/{job_id}", answer_late)
    p.click("[data-action='cancel']")  # confirmed in the dialog
    p.wait_for_selector("h1 .badge:text('cancelled')", timeout=180_000)
    assert stale, "the page never read the job after the cancel: the race went untested"
    assert p.locator("[data-action='cancel']").count() == 0
    assert wait_for_job(console, job_id, TERMINAL)["status"] == "cancelled"
    p.wait_for_selector(".live-state[data-state='ended']")
    page.snap("job-cancelled")


def test_pause_and_resume_a_job_from_its_page(page: Page, console: Console, dataset_id: str) -> None:
    """Paused from the keyboard on the job's page, the job shows `paused` (and the list finds it by that
    status); resumed, it runs again from the pause's checkpoint and finishes. Eight epochs: on an idle machine
    two took 1.2 s, and the pause (requested after the second step) reached the worker, which looks every
    0.5 s, only after the last step: the job succeeded unpaused in about one run of four."""
    epochs = 8
    job_id = submit(console, dataset_id, "shufflenet_v2_x0_5", epochs=epochs)
    page.goto(f"/jobs/{job_id}")
    p = page.page
    p.wait_for_selector("h1 .badge:text('running')", timeout=120_000)
    for _ in range(12):  # from the top of the page to the Pause button, by Tab alone
        p.keyboard.press("Tab")
        if p.evaluate("document.activeElement.dataset.action") == "pause":
            break
    else:
        pytest.fail("Tab never reached the Pause button")
    p.keyboard.press("Enter")
    p.wait_for_selector("h1 .badge:text('paused')", timeout=120_000)
    assert p.locator("[data-action='pause']").count() == 0 and p.locator("[data-action='resume']").count() == 1
    assert wait_for_job(console, job_id, {"paused"}, timeout=5)["progress"]["epoch"] < epochs
    page.snap("job-paused")

    page.goto("/jobs")
    p.select_option("#filter-status", "paused")
    p.click("form.filters button")
    p.wait_for_selector("#job-list[data-jobs='1']")
    p.click(f"#job-list a[href='#/jobs/{job_id}']")
    p.click("[data-action='resume']")
    p.wait_for_selector("h1 .badge:text('running')", timeout=120_000)
    p.wait_for_selector("h1 .badge:text('succeeded')", timeout=300_000)
    p.wait_for_selector(".live-state[data-state='ended']")

    with console.api() as api:
        events = api.get(f"/v1/jobs/{job_id}/events", params={"limit": 100}).json()["data"]
    moves = [e["data"]["to"] for e in events if e["type"] == "status"]
    assert moves == ["queued", "running", "pausing", "paused", "queued", "running", "succeeded"]
    shown = [int(s) for s in p.eval_on_selector_all("#event-log tbody tr", "rs => rs.map(r => r.dataset.seq)")]
    assert shown == [e["seq"] for e in events]
    # Each epoch once: the second attempt went on from the pause's checkpoint, not from the start.
    assert p.get_attribute("figure.chart[data-chart='Accuracy']", "data-series") == f"{epochs},{epochs}"


def test_compare_two_jobs(page: Page, console: Console, dataset_id: str) -> None:
    with console.api() as api:
        done = api.get("/v1/jobs", params={"status": "succeeded"}).json()["data"]
    jobs = [job["id"] for job in done[:2]]  # the editor's job and the paused one
    while len(jobs) < 2:  # when this test runs alone
        jobs.append(submit(console, dataset_id, seed=len(jobs)))
    for job_id in jobs:
        wait_for_job(console, job_id, {"succeeded"})
    page.goto("/jobs?status=succeeded")
    p = page.page
    for job_id in jobs:
        assert p.is_disabled("#compare-selected")  # two to six
        p.check(f"input[aria-label='compare {job_id}']")
    assert p.is_enabled("#compare-selected")
    for job in done:  # the best value of each job's monitored metric, as the API reports it
        if job["id"] in jobs:
            monitor = job["spec"]["training"]["monitor"]
            best = float(job["metrics"]["best"][monitor])
            text = f"{int(best):,}" if best.is_integer() else f"{best:.4f}"
            assert p.inner_text(f"tr:has(a[href='#/jobs/{job['id']}']) td[data-label='Best']") == f"{monitor} {text}"
    page.snap("jobs")
    p.click("#compare-selected")
    p.wait_for_url("**/#/compare?ids=*")
    p.wait_for_selector("table.spec-diff")
    series = p.get_attribute("figure.chart[data-chart='Validation loss']", "data-series") or ""
    assert all(int(n) >= 2 for n in series.split(",")) and len(series.split(",")) == 2
    differs = p.eval_on_selector_all("tr[data-differs='true']", "rs => rs.map(r => r.dataset.field)")
    with console.api() as api:
        specs = [api.get(f"/v1/jobs/{job_id}").json()["spec"] for job_id in jobs]
    flat = [flatten(spec) for spec in specs]
    expected = {key for key in flat[0].keys() | flat[1].keys() if flat[0].get(key, ...) != flat[1].get(key, ...)}
    assert set(differs) == expected and expected, (differs, expected)
    assert all(p.inner_text(f"tr[data-field='{f}'] th").startswith("≠") for f in differs)  # marked in text too
    assert_charts_read_without_colour(page)
    p.check("#only-differences")
    assert p.locator("table.spec-diff tbody tr").count() == len(differs)
    page.snap("compare")


def test_the_jobs_list_filters_by_status_and_metadata(page: Page, console: Console, dataset_id: str) -> None:
    page.goto("/jobs")
    p = page.page
    p.wait_for_selector("table tbody tr")
    p.select_option("#filter-status", "cancelled")
    p.fill("#filter-metadata", "made_by=api")
    p.click("form.filters button")
    p.wait_for_url("**/#/jobs?status=cancelled&metadata=made_by*")
    with console.api() as api:
        cancelled = api.get("/v1/jobs", params={"status": "cancelled", "metadata[made_by]": "api"}).json()["data"]
    p.wait_for_selector(f"#job-list[data-jobs='{len(cancelled)}']")
    rows = p.eval_on_selector_all("tbody tr td[data-label='Status']", "cs => cs.map(c => c.textContent)")
    assert rows == ["cancelled"] * len(cancelled)

    # Pages by cursor: one job a page here, newest first.
    with console.api() as api:
        newest = [job["id"] for job in api.get("/v1/jobs", params={"limit": 2}).json()["data"]]
    page.goto("/jobs?limit=1")
    p.wait_for_selector("#job-list[data-jobs='1']")
    assert p.get_attribute("#job-list input[type=checkbox]", "aria-label") == f"compare {newest[0]}"
    p.click("text=Next page")
    p.wait_for_selector(f"#job-list input[aria-label='compare {newest[1]}']")
    p.click("text=First page")
    p.wait_for_selector(f"#job-list input[aria-label='compare {newest[0]}']")


def test_everything_is_reachable_with_the_keyboard(page: Page) -> None:
    page.goto("/jobs")
    p = page.page
    p.wait_for_selector("h1:text('Jobs')")
    p.keyboard.press("Tab")
    assert p.evaluate("document.activeElement.textContent") == "Skip to content"
    names = []
    for _ in range(5):
        p.keyboard.press("Tab")
        names.append(p.evaluate("document.activeElement.textContent"))
    assert names == ["finetune", "Jobs", "New job", "Data sets", "Compare"]
    p.keyboard.press("Shift+Tab")
    p.keyboard.press("Enter")  # on "Data sets"
    p.wait_for_selector("h1:text('Data sets')")
    p.wait_for_selector("#main:focus")  # focus moves to the new page (a selector: the CSP forbids eval)


def test_sign_in_with_an_api_key(browser: object, console: Console) -> None:
    context, page = open_page(browser, console, signed_in=False)
    p = page.page
    page.watch.expect(401, "/v1/jobs")
    try:
        page.goto("/jobs")
        p.wait_for_selector("h1:text('Sign in')")
        p.fill("#api-key", "ft_wrong")
        p.click("form.signin button")
        p.wait_for_selector("text=That key was not accepted.")
        page.snap("sign-in")
        p.fill("#api-key", console.key)
        p.click("form.signin button")
        p.wait_for_selector("h1:text('Jobs')")
        assert p.evaluate("sessionStorage.getItem('finetune.apiKey')") == console.key
        p.click("#signout")
        p.wait_for_selector("h1:text('Sign in')")
        assert p.evaluate("sessionStorage.getItem('finetune.apiKey')") is None
    finally:
        context.close()
    assert not page.watch.problems, page.watch.problems


def test_the_embedded_mode_opens_straight_in(browser: object, tmp_path: Path) -> None:
    """Auth is off in the embedded mode: no sign-in, no key, nothing to sign out of."""
    with finetune_serve(tmp_path, auth=False, workers=0) as (url, process):
        context, page = open_page(browser, Console(url, "", tmp_path, process), signed_in=False)
        try:
            page.goto("/jobs")
            p = page.page
            p.wait_for_selector("#job-list[data-jobs='0']")
            assert p.is_hidden("#signout") and p.locator("form.signin").count() == 0
        finally:
            context.close()
    assert not page.watch.problems, page.watch.problems
