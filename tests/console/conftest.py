"""The console in a real browser: Debian's Chromium driven by Playwright, against each of the service's two
deployments in turn, with auth on, for the whole module: ``embedded`` (``finetune serve``: SQLite, files, a
worker child) and ``production`` (PostgreSQL, Redis, ``finetune serve --workers 0`` and a real Celery worker:
tests/integration/stack.py).

Every page a test opens is watched: a console error, an uncaught exception, a failed request, an HTTP error
the test did not declare, or a request to any other origin (the console works offline) fails the test.
Screenshots of each page at 1280 and 390 px go to ``build/console-screenshots/<deployment>/`` (gitignored) for
a person to look at; at 390 px the page must not scroll sideways.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.app.servers import REPO, free_port
from tests.cifar import make_cifar_subset
from tests.conftest import service_missing
from tests.integration.stack import running_stack

CHROMIUM = Path(os.environ.get("FT_CHROMIUM", "/usr/bin/chromium"))
SCREENSHOTS = REPO / "build" / "console-screenshots"
WIDTHS = (1280, 390)
DOCS_SCREENSHOT = REPO / "docs" / "job-page.png"
FINETUNE = str(Path(sys.executable).with_name("finetune"))
DEPLOYMENTS = ("embedded", "production")

pytestmark = pytest.mark.slow


@dataclass
class Console:
    url: str
    key: str
    home: Path
    process: subprocess.Popen[bytes]
    deployment: str = "embedded"

    def api(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.key}"}, timeout=30)


def _wait_ready(process: subprocess.Popen[bytes], url: str, log: Path) -> None:
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"finetune serve did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)


@contextmanager
def finetune_serve(home: Path, *, auth: bool, workers: int) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``finetune serve`` as a person starts it, in ``home``, on a free port; stopped with Ctrl-C (SIGINT)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FT_")} | {"FT_HOME": str(home)}
    if auth:
        env["FT_AUTH_ENABLED"] = "true"
    log = home / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [FINETUNE, "serve", "--port", str(port), "--workers", str(workers), "--loglevel", "WARNING"],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(process, url, log)
        yield url, process
    finally:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


@pytest.fixture(scope="module", params=DEPLOYMENTS)
def console(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    """The service with auth on and one worker, in a temporary FT_HOME, and an API key for it: embedded, or
    the production stack (its PostgreSQL and Redis fixtures are asked for only then)."""
    home = tmp_path_factory.mktemp(f"console-{request.param}")
    if request.param == "production":
        postgres_url, redis_url = request.getfixturevalue("postgres_url"), request.getfixturevalue("redis_url")
        with running_stack(postgres_url, redis_url, home) as stack:
            stack.start_worker(queues="gpu,cpu")  # validates the uploads and trains the jobs
            key = stack.headers["Authorization"].removeprefix("Bearer ")
            yield Console(stack.url, key, home, stack.api, "production")
        return
    with finetune_serve(home, auth=True, workers=1) as (url, process):
        env = {k: v for k, v in os.environ.items() if not k.startswith("FT_")} | {"FT_HOME": str(home)}
        created = subprocess.run(
            [FINETUNE, "keys", "create", "--project", "console"], env=env, capture_output=True, text=True, check=True
        )
        yield Console(url, created.stdout.strip(), home, process)


@pytest.fixture(scope="module")
def cifar_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seeded CIFAR-10 subset (12 train and 4 test images per class, 32 px) as a tar.gz."""
    root = make_cifar_subset(tmp_path_factory.mktemp("console-cifar") / "cifar10", per_class=12, test_per_class=4)
    return Path(shutil.make_archive(str(root), "gztar", root))


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """Chromium for one test module: Playwright's sync API runs an event loop until it stops, which the
    suite's async tests must not find running."""
    if not CHROMIUM.is_file():
        service_missing("Chromium", str(CHROMIUM), FileNotFoundError("not installed: `make browser` installs it"))
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield launched
        launched.close()


_FAILED_LOAD = re.compile(r"status of (\d{3})")


@dataclass
class Watch:
    """What went wrong on a page: console errors, page errors, failed requests, unexpected HTTP errors."""

    origin: str  # the service's: every request goes there (or is a data: or blob: URL the page made)
    expected: list[tuple[int, str]] = field(default_factory=list)  # (status, url part) the test provokes
    problems: list[str] = field(default_factory=list)
    seen: list[tuple[int, str]] = field(default_factory=list)

    def expect(self, status: int, url_part: str) -> None:
        self.expected.append((status, url_part))

    def _expected(self, status: int, url: str) -> bool:
        return any(status == s and part in url for s, part in self.expected)

    def on_console(self, message: object) -> None:
        if message.type != "error":  # type: ignore[attr-defined]
            return
        text = message.text  # type: ignore[attr-defined]
        found = _FAILED_LOAD.search(text)
        url = (message.location or {}).get("url", "")  # type: ignore[attr-defined]
        if found and self._expected(int(found.group(1)), url):
            return
        self.problems.append(f"console error: {text} ({url})")

    def on_response(self, response: object) -> None:
        status, url = response.status, response.url  # type: ignore[attr-defined]
        if status >= 400:
            self.seen.append((status, url))
            if not self._expected(status, url):
                self.problems.append(f"HTTP {status}: {url}")

    def on_request(self, request: object) -> None:
        url = request.url  # type: ignore[attr-defined]
        if not (url.startswith((f"{self.origin}/", "data:", "blob:")) or url == self.origin):
            self.problems.append(f"request to another origin: {url}")

    def on_request_failed(self, request: object) -> None:
        failure = request.failure or ""  # type: ignore[attr-defined]
        url = request.url  # type: ignore[attr-defined]
        # The console closes a job's event stream itself when a person leaves the page or pauses live updates.
        if "ERR_ABORTED" in failure and url.split("?")[0].endswith("/events/stream"):
            return
        self.problems.append(f"request failed: {url}: {failure}")


@dataclass
class Page:
    """A browser page on the console, signed in, with its watch."""

    page: object
    watch: Watch
    console: Console

    def goto(self, route: str) -> None:
        self.page.goto(f"{self.console.url}/#{route}")  # type: ignore[attr-defined]

    def snap(self, name: str) -> None:
        """Screenshots of the page as it is, at 1280 and 390 px wide; at either width the page itself must not
        scroll sideways (a wide table scrolls inside its own box)."""
        folder = SCREENSHOTS / self.console.deployment
        folder.mkdir(parents=True, exist_ok=True)
        page = self.page
        for width in WIDTHS:
            page.set_viewport_size({"width": width, "height": 900})  # type: ignore[attr-defined]
            page.wait_for_timeout(150)  # type: ignore[attr-defined]  # the charts follow the width
            page.screenshot(path=str(folder / f"{name}-{width}.png"), full_page=True)  # type: ignore[attr-defined]
            wide = page.evaluate("document.documentElement.scrollWidth")  # type: ignore[attr-defined]
            assert wide <= width, f"the {name} page is {wide} px wide in a {width} px window"
        page.set_viewport_size({"width": WIDTHS[0], "height": 900})  # type: ignore[attr-defined]


def open_page(browser: object, console: Console, *, signed_in: bool = True) -> tuple[object, Page]:
    """A fresh browser context (its own sessionStorage) and a watched page on the console."""
    context = browser.new_context(viewport={"width": WIDTHS[0], "height": 900}, accept_downloads=True)  # type: ignore[attr-defined]
    if signed_in:  # the way the sign-in form does it: the key in this tab's sessionStorage
        context.add_init_script(f"sessionStorage.setItem('finetune.apiKey', {console.key!r})")
    browser_page = context.new_page()
    watch = Watch(console.url)
    browser_page.on("request", watch.on_request)
    browser_page.on("console", watch.on_console)
    browser_page.on("pageerror", lambda error: watch.problems.append(f"page error: {error}"))
    browser_page.on("requestfailed", watch.on_request_failed)
    browser_page.on("response", watch.on_response)
    browser_page.on("dialog", lambda dialog: dialog.accept())
    browser_page.set_default_timeout(60_000)
    return context, Page(browser_page, watch, console)


@pytest.fixture
def page(browser: object, console: Console) -> Iterator[Page]:
    context, watched = open_page(browser, console)
    yield watched
    context.close()  # type: ignore[attr-defined]
    assert not watched.watch.problems, "\n".join(watched.watch.problems)
