"""The Ops dashboard in a real browser: Debian's Chromium driven by Playwright, against the
platform as it runs in production — gunicorn, a Celery worker and Celery beat as
subprocesses — on a database and two Redis databases of its own.

The platform gets its own database (the test database's name + ``_browser``) and Redis
databases 12 (cache) and 13 (broker) of the test Redis, so the per-test truncation the
other tests rely on never pulls the floor from under a running worker. Nothing is
downloaded: the browser is ``/usr/bin/chromium`` (``apt-get install chromium``).
Screenshots go to ``tests/artifacts/`` (git-ignored).
"""
from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest

from core.config import PROJECT_ROOT, libpq_url, redis_url_with_db
from core.redis import get_redis
from scripts.db_roles import provision, url_for_role
from tests.support.api import TEST_AUDIENCE, TEST_ISSUER
from tests.support.database import create_database, roles_for

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--no-first-run",
    "--metrics-recording-only",
]
ARTIFACTS = PROJECT_ROOT / "tests" / "artifacts"
LAPTOP = {"width": 1366, "height": 860}
PHONE = {"width": 360, "height": 740}
BIN = Path(sys.executable).parent
CACHE_DB, BROKER_DB = 12, 13

if not Path(CHROMIUM).exists():  # pragma: no cover - .ci/run installs it
    raise pytest.UsageError(f"{CHROMIUM} is missing: apt-get install chromium (the browser tests need it)")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Platform:
    base_url: str
    port: int
    database_url: str
    logs: Path
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    def request(self, method: str, path: str, token: str, body: Any = None) -> tuple[int, Any]:
        """One HTTP call to the running API (what a Molam service or script does)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
            payload = None
            if body is not None:
                payload = json.dumps(body)
                headers["Content-Type"] = "application/json"
            conn.request(method, path, body=payload, headers=headers)
            response = conn.getresponse()
            raw = response.read()
            return response.status, json.loads(raw) if raw and response.getheader("Content-Type", "").startswith("application/json") else raw
        finally:
            conn.close()

    def check_alive(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                tail = (self.logs / f"{name}.log").read_text(errors="replace")[-3000:]
                raise AssertionError(f"{name} exited with {process.returncode}:\n{tail}")


def _browser_database_url(admin_url: str) -> str:
    name = psycopg.conninfo.conninfo_to_dict(libpq_url(admin_url))["dbname"]
    return admin_url.rsplit("/", 1)[0] + f"/{name}_browser"


def _migrate(database_url: str) -> None:
    from alembic import command
    from alembic.config import Config

    config = Config(str(PROJECT_ROOT / "alembic.ini"))
    config.attributes["url"] = database_url
    config.attributes["configure_logging"] = False
    command.upgrade(config, "head")


def _wait_ready(platform: Platform, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        platform.check_alive()
        try:
            conn = http.client.HTTPConnection("127.0.0.1", platform.port, timeout=2)
            conn.request("GET", "/readyz")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.25)
    raise AssertionError("the API did not become ready")


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=15)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


@pytest.fixture(scope="package")
def platform(settings, admin_database_url, key_pair, tmp_path_factory) -> Iterator[Platform]:
    """API (gunicorn), worker and beat on a database of their own, SIRA on short intervals; they
    connect as that database's application role, the migrations ran as its owner."""
    admin_url = _browser_database_url(admin_database_url)
    create_database(admin_url)
    owner, app_role = roles_for(admin_url)
    provision(admin_url, owner=owner, app=app_role)
    _migrate(url_for_role(admin_url, owner))
    database_url = url_for_role(admin_url, app_role)
    cache_url = redis_url_with_db(settings.redis_url, CACHE_DB)
    broker_url = redis_url_with_db(settings.redis_url, BROKER_DB)
    get_redis(cache_url).flushdb()
    get_redis(broker_url).flushdb()

    var_dir = tmp_path_factory.mktemp("browser-platform")
    port = _free_port()
    env = {
        **os.environ,
        "APP_ENV": "test",
        "DATABASE_URL": database_url,
        "REDIS_URL": cache_url,
        "CELERY_BROKER_URL": broker_url,
        "MOLAM_ID_PUBLIC_KEY": key_pair[1],
        "MOLAM_ID_ISSUER": TEST_ISSUER,
        "MOLAM_ID_AUDIENCE": TEST_AUDIENCE,
        "AUDIT_HMAC_KEY": settings.audit_hmac_key,
        "AUDIT_HMAC_KEY_ID": settings.audit_hmac_key_id,
        "MOLAM_VAR_DIR": str(var_dir),
        "PORT": str(port),
        "WEB_CONCURRENCY": "2",
        "GUNICORN_THREADS": "4",
        "INGEST_DRAIN_INTERVAL": "0.5",
        "SIRA_RECOMPUTE_INTERVAL": "1",
        "SIRA_FAIL_FAST_INTERVAL": "2",
    }
    commands = {
        "api": [str(BIN / "gunicorn"), "-c", str(PROJECT_ROOT / "gunicorn.conf.py"), "-b", f"127.0.0.1:{port}", "api.wsgi:app"],
        "worker": [str(BIN / "celery"), "-A", "tasks.celery_app", "worker", "--concurrency=2", "--loglevel=INFO",
                   "-n", f"browser-{port}@%h"],
        "beat": [str(BIN / "celery"), "-A", "tasks.celery_app", "beat", "--loglevel=INFO",
                 "-s", str(var_dir / "celerybeat-schedule")],
    }
    platform = Platform(base_url=f"http://127.0.0.1:{port}", port=port, database_url=database_url, logs=var_dir)
    try:
        for name, command in commands.items():
            log = open(var_dir / f"{name}.log", "wb")
            platform.processes[name] = subprocess.Popen(
                command, cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        _wait_ready(platform)
        yield platform
    finally:
        for process in platform.processes.values():
            _stop(process)


@pytest.fixture(scope="package")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield instance
        instance.close()


class ConsoleWatch:
    """Console errors and uncaught exceptions of a page.

    A request the test makes fail on purpose (the 422 of a bad form, a forged call that
    must get 403) makes Chromium log "Failed to load resource"; ``expect`` names those,
    and anything else fails the test.
    """

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.expected: list[tuple[int, re.Pattern]] = []

    def expect(self, status: int, path_pattern: str) -> None:
        self.expected.append((status, re.compile(path_pattern)))

    def on_console(self, message: Any) -> None:
        if message.type != "error":
            return
        text = message.text
        url = (message.location or {}).get("url", "")
        failed = re.search(r"status of (\d{3})", text)
        if failed and any(int(failed.group(1)) == status and pattern.search(url) for status, pattern in self.expected):
            return
        self.errors.append(f"console.error: {text} ({url})")

    def on_page_error(self, error: Any) -> None:
        self.errors.append(f"uncaught: {error}")


@dataclass
class Dashboard:
    """One browser tab on the dashboard, with helpers the tests share."""

    page: Any
    platform: Platform
    console: ConsoleWatch
    name: str
    shots: list[Path] = field(default_factory=list)

    def open(self, route: str = "/experiments", token: str | None = None) -> None:
        fragment = f"#token={token}&to={route}" if token else f"#{route}"
        self.page.goto(f"{self.platform.base_url}/ops{fragment}")
        self.page.wait_for_selector("#main :is(h1, .page-head h1)")

    def accessibility_problems(self) -> list[str]:
        """Screen-reader basics on what is shown: named controls, buttons, links and charts."""
        return self.page.evaluate(
            """() => {
                const visible = (el) => !!(el.offsetWidth || el.offsetHeight || el.getClientRects().length);
                const named = (el) => (el.getAttribute("aria-label") || "").trim() || el.getAttribute("aria-labelledby")
                    || (el.labels && [...el.labels].some((l) => l.textContent.trim())) || (el.getAttribute("title") || "").trim();
                const problems = [];
                for (const el of document.querySelectorAll("input:not([type=hidden]), select, textarea")) {
                    if (visible(el) && !named(el)) problems.push(`unlabelled ${el.tagName.toLowerCase()} ${el.name || ""}`);
                }
                for (const el of document.querySelectorAll("button, a[href]")) {
                    if (visible(el) && !el.textContent.trim() && !named(el)) problems.push(`unnamed ${el.tagName.toLowerCase()} ${el.outerHTML.slice(0, 80)}`);
                }
                for (const el of document.querySelectorAll("svg.chart, svg.sparkline")) {
                    if (el.getAttribute("role") !== "img" || !named(el)) problems.push(`chart without role=img and a name`);
                }
                if (!document.querySelector("main h1")) problems.push("no h1 in main");
                return problems;
            }"""
        )

    def screenshot(self, step: str) -> None:
        """Full-page screenshots at laptop and phone widths; at 360 px nothing may overflow
        sideways; screen-reader basics hold on the page shown."""
        problems = self.accessibility_problems()
        assert not problems, f"{step}: {problems}"
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        for label, viewport in (("laptop", LAPTOP), ("phone", PHONE)):
            self.page.set_viewport_size(viewport)
            self.page.wait_for_timeout(300)  # the views redraw their charts for the new width
            self.page.evaluate("window.scrollTo(0, 0)")
            path = ARTIFACTS / f"{self.name}-{step}-{label}.png"
            self.page.screenshot(path=str(path), full_page=True)
            self.shots.append(path)
            if label == "phone":
                overflow = self.page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
                assert overflow <= 1, f"{step}: the page is {overflow}px wider than a 360px phone"
        self.page.set_viewport_size(LAPTOP)

    def api(self, method: str, path: str, body: Any = None) -> dict:
        """A request from inside the page with the signed-in token (what a user could forge)."""
        return self.page.evaluate(
            """async ([method, path, body]) => {
                const headers = { Authorization: `Bearer ${sessionStorage.getItem("molam.ops.token")}` };
                if (body !== null) headers["Content-Type"] = "application/json";
                const response = await fetch(path, { method, headers, body: body === null ? undefined : JSON.stringify(body) });
                let payload = null;
                try { payload = await response.json(); } catch { payload = null; }
                return { status: response.status, body: payload };
            }""",
            [method, path, body],
        )


@pytest.fixture
def dashboard(browser, platform, request) -> Iterator[Callable[[str], Dashboard]]:
    """``dashboard("marketing")`` → a fresh browser context (its own sessionStorage)."""
    opened: list[tuple[Any, Dashboard]] = []

    def open_tab(label: str) -> Dashboard:
        context = browser.new_context(viewport=LAPTOP, device_scale_factor=1, service_workers="block")
        # The page must not reach anything but its own origin.
        context.route(re.compile(rf"^(?!http://127\.0\.0\.1:{platform.port}/).*"), lambda route: route.abort())
        page = context.new_page()
        page.set_default_timeout(20_000)
        console = ConsoleWatch()
        page.on("console", console.on_console)
        page.on("pageerror", console.on_page_error)
        tab = Dashboard(page=page, platform=platform, console=console, name=f"{request.node.name}-{label}")
        opened.append((context, tab))
        return tab

    yield open_tab
    problems = [f"{tab.name}: {error}" for _, tab in opened for error in tab.console.errors]
    for context, _ in opened:
        context.close()
    platform.check_alive()
    assert not problems, "\n".join(problems)


def wait_until(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def drive_traffic(platform: Platform, token: str, experiment_id: str, users: list[str], rates: dict[str, float], seed: int,
                  attributes: dict[str, Any] | None = None) -> dict[str, int]:
    """Assign each user through the API and send a conversion for a deterministic share of each arm."""
    import random

    rng = random.Random(seed)
    conn = http.client.HTTPConnection("127.0.0.1", platform.port, timeout=30)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    events: list[dict] = []
    counts: dict[str, int] = {}
    try:
        for molam_id in users:
            conn.request("POST", f"/api/experiments/{experiment_id}/assign", body=json.dumps({"molam_id": molam_id, **(attributes or {})}), headers=headers)
            response = conn.getresponse()
            body = json.loads(response.read())
            assert response.status == 200, body
            assert body.get("eligible"), body
            name = body["variant_name"]
            counts[name] = counts.get(name, 0) + 1
            events.append({"experiment_id": experiment_id, "molam_id": molam_id, "event_type": "view", "event_id": f"{molam_id}-view"})
            if rng.random() < rates.get(name, 0.0):
                events.append({"experiment_id": experiment_id, "molam_id": molam_id, "event_type": "conversion",
                               "value": 10 + rng.randint(0, 20), "event_id": f"{molam_id}-conversion"})
        for start in range(0, len(events), 500):
            conn.request("POST", "/api/events/batch", body=json.dumps({"events": events[start:start + 500]}), headers=headers)
            response = conn.getresponse()
            body = json.loads(response.read())
            assert response.status == 202, body
            assert not body["rejected"], body["rejected"]
    finally:
        conn.close()
    return counts


@pytest.fixture(scope="session", autouse=True)
def _fresh_artifacts() -> None:
    """Screenshots of this run only."""
    if ARTIFACTS.exists():
        shutil.rmtree(ARTIFACTS)
