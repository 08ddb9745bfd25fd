"""``flask --app api seed-demo [--minutes N]``: a living demo through the real API.

Creates (or reuses) three running experiments and drives simulated users through the
running platform over HTTP, exactly as Molam's services would: assign, then track
``view`` → ``click`` → ``conversion`` events with per-variant rates, so the dashboard,
Grafana, bandit weights and reports move within a minute of ``make run``:

* a fixed 50/50 split (checkout button), control 8 % conversion, treatment 11 %;
* a 3-arm bandit (onboarding offer), 5 % / 8 % / 12 %, which SIRA shifts traffic towards;
* a multi-currency experiment (pricing page) whose conversions carry an amount in the
  user's currency, with no more decimals than the currency has (XOF 0, EUR 2, USD 2).

Tokens: development tokens minted from the local key pair, or ``--admin-token`` /
``--service-token`` (an ``ops_admin`` and a ``*_module`` token) against a platform
that verifies Molam ID's.
"""
from __future__ import annotations

import json
import random
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import click
from flask import Flask

DEMO_PREFIX = "Demo · "


@dataclass(frozen=True)
class Arm:
    name: str
    share: float
    click_rate: float
    conversion_rate: float  # given a click
    is_control: bool = False


@dataclass(frozen=True)
class DemoExperiment:
    name: str
    description: str
    mode: str
    arms: tuple[Arm, ...]
    #: Currency -> (share of users, minor-unit decimals, typical amount); empty: no amounts.
    currencies: dict[str, tuple[float, int, float]] = field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "mode": self.mode,
            "primary_metric": "conversion",
            "targeting": {"country": ["SN", "CI", "FR"]},
            "bandit": {"min_samples": 50, "floor": 0.05},
            "variants": [
                {"name": arm.name, "traffic_share": arm.share, "is_control": arm.is_control, "config": {"variant": arm.name}}
                for arm in self.arms
            ],
        }


DEMO_EXPERIMENTS = (
    DemoExperiment(
        f"{DEMO_PREFIX}Checkout button (fixed split)",
        "Blue vs green checkout button, 50/50.",
        "ab",
        (Arm("Control (Blue)", 50, 0.30, 0.27, is_control=True), Arm("Green Button", 50, 0.34, 0.32)),
    ),
    DemoExperiment(
        f"{DEMO_PREFIX}Onboarding offer (3-arm bandit)",
        "Three welcome offers; SIRA moves traffic to the best one.",
        "bandit",
        (
            Arm("No offer", 33.34, 0.25, 0.20, is_control=True),
            Arm("500 XOF credit", 33.33, 0.28, 0.29),
            Arm("Free first transfer", 33.33, 0.32, 0.375),
        ),
    ),
    DemoExperiment(
        f"{DEMO_PREFIX}Pricing page (multi-currency)",
        "Monthly vs yearly plan first; conversions carry the amount paid.",
        "ab",
        (Arm("Monthly first", 50, 0.40, 0.15, is_control=True), Arm("Yearly first", 50, 0.38, 0.19)),
        {"XOF": (0.6, 0, 6500.0), "EUR": (0.3, 2, 9.90), "USD": (0.1, 2, 10.90)},
    ),
)
COUNTRY_BY_CURRENCY = {"XOF": "SN", "EUR": "FR", "USD": "CI"}


def amount(rng: random.Random, typical: float, decimals: int) -> float | int:
    """A plausible amount, never with more decimals than the currency has."""
    value = typical * rng.lognormvariate(0, 0.35)
    return int(round(value)) if decimals == 0 else round(value, decimals)


class ApiClient:
    """HTTP calls to the platform. ``send`` (tests) replaces the network with any
    ``(method, path, body, headers) -> (status, json)`` callable."""

    def __init__(self, base_url: str, admin_token: str, service_token: str, send: Any = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.admin = {"Authorization": f"Bearer {admin_token}"}
        self.service = {"Authorization": f"Bearer {service_token}"}
        self.send = send

    def call(self, method: str, path: str, body: Any = None, *, admin: bool = False) -> tuple[int, Any]:
        headers = {"Content-Type": "application/json", "X-Request-ID": f"demo-{uuid.uuid4().hex[:16]}",
                   **(self.admin if admin else self.service)}
        if self.send is not None:
            return self.send(method, path, body, headers)
        request = urllib.request.Request(
            self.base_url + path,
            method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers=headers,
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            payload = error.read()
            try:
                return error.code, json.loads(payload or b"null")
            except ValueError:
                return error.code, {"message": payload.decode(errors="replace")[:200]}


def ensure_experiments(api: ApiClient) -> dict[str, dict[str, Any]]:
    """The demo experiments, running: reused when a previous run created them, else created and started."""
    existing: dict[str, dict[str, Any]] = {}
    page = 1
    while True:
        status, listed = api.call("GET", f"/api/experiments?status=running&page={page}&page_size=100", admin=True)
        if status != 200:
            raise click.ClickException(f"cannot list experiments ({status}): {listed}")
        for experiment in listed:
            existing.setdefault(experiment["name"], experiment)
        if len(listed) < 100:
            break
        page += 1
    experiments = {}
    for demo in DEMO_EXPERIMENTS:
        experiment = existing.get(demo.name)
        if experiment is None:
            status, experiment = api.call("POST", "/api/experiments", demo.body(), admin=True)
            if status != 201:
                raise click.ClickException(f"cannot create {demo.name!r} ({status}): {experiment}")
            status, experiment = api.call("POST", f"/api/experiments/{experiment['id']}/start", admin=True)
            if status != 200:
                raise click.ClickException(f"cannot start {demo.name!r} ({status}): {experiment}")
        experiments[demo.name] = experiment
    return experiments


def simulate_user(api: ApiClient, rng: random.Random, experiments: dict[str, dict[str, Any]], tally: Counter) -> None:
    """One user visits all three experiments: assign, then view, maybe click, maybe convert."""
    molam_id = f"demo-user-{uuid.uuid4().hex[:12]}"
    currency = rng.choices(["XOF", "EUR", "USD"], weights=[0.6, 0.3, 0.1])[0]
    for demo in DEMO_EXPERIMENTS:
        experiment_id = experiments[demo.name]["id"]
        status, assignment = api.call(
            "POST", f"/api/experiments/{experiment_id}/assign",
            {"molam_id": molam_id, "country": COUNTRY_BY_CURRENCY[currency], "currency": currency},
        )
        if status != 200 or not assignment.get("eligible"):
            tally["errors" if status != 200 else "ineligible"] += 1
            continue
        tally["assignments"] += 1
        arm = next(a for a in demo.arms if a.name == assignment["variant_name"])
        events: list[dict[str, Any]] = [{"event_type": "view"}]
        if rng.random() < arm.click_rate:
            events.append({"event_type": "click"})
            if rng.random() < arm.conversion_rate:
                conversion: dict[str, Any] = {"event_type": "conversion"}
                if demo.currencies:
                    _, decimals, typical = demo.currencies[currency]
                    conversion.update(value=amount(rng, typical, decimals), currency=currency)
                events.append(conversion)
        for event in events:
            status, _ = api.call("POST", f"/api/experiments/{experiment_id}/track", {"molam_id": molam_id, **event})
            tally["events" if status == 202 else "errors"] += 1
    tally["users"] += 1


#: Seconds of traffic after which the demo asks for today's SIRA reports (they are kept for the day).
REPORT_AFTER_S = 45


def run_demo(
    api: ApiClient,
    *,
    minutes: float,
    users_per_second: float,
    seed: int | None,
    workers: int = 8,
    request_reports: Any = None,
) -> Counter:
    """Simulate for ``minutes``; ``request_reports()`` is called once, after ``REPORT_AFTER_S``
    seconds of traffic (or at the end of a shorter run), so reports exist without waiting for 06:00."""
    experiments = ensure_experiments(api)
    for name, experiment in experiments.items():
        click.echo(f"  {name}: {experiment['id']} ({experiment['mode']}, {len(experiment['variants'])} variants)")
    rng_lock = threading.Lock()
    master = random.Random(seed)
    tally: Counter = Counter()
    seconds = max(1, int(minutes * 60))
    deadline = time.monotonic() + seconds

    def one_user() -> None:
        with rng_lock:
            rng = random.Random(master.getrandbits(64))
        simulate_user(api, rng, experiments, tally)

    with ThreadPoolExecutor(workers) as pool, click.progressbar(
        range(seconds), label="Simulating users", show_eta=True,
        item_show_func=lambda _: f"{tally['users']} users, {tally['events']} events, {tally['errors']} errors",
    ) as bar:
        elapsed = 0
        while elapsed < seconds:
            tick = time.monotonic()
            pending = [pool.submit(one_user) for _ in range(_poisson(master, users_per_second))]
            for future in pending:
                future.result()
            time.sleep(max(0.0, 1.0 - (time.monotonic() - tick)))
            now_elapsed = min(seconds, int(seconds - max(0.0, deadline - time.monotonic())))
            bar.update(max(1, now_elapsed - elapsed), None)
            elapsed = max(elapsed + 1, now_elapsed)
            if request_reports is not None and elapsed >= min(REPORT_AFTER_S, seconds):
                request_reports()
                request_reports = None
    return tally


def _poisson(rng: random.Random, mean: float) -> int:
    """Users arriving in one second (Knuth's method; mean is small)."""
    import math

    limit, k, p = math.exp(-mean), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


def _queue_daily_report() -> None:
    """Ask the worker for today's reports (the task beat runs at SIRA_DAILY_REPORT_HOUR)."""
    from tasks.celery_app import celery

    try:
        celery.send_task("sira.daily_report")
    except Exception as exc:  # the demo goes on; beat writes them at the usual hour
        click.echo(f"\n(could not queue today's reports: {exc})", err=True)


def register(app: Flask) -> None:
    @app.cli.command("seed-demo")
    @click.option("--minutes", default=2.0, show_default=True, type=click.FloatRange(min=0.02), help="How long to simulate.")
    @click.option("--users-per-second", default=5.0, show_default=True, type=click.FloatRange(min=0.1, max=500))
    @click.option("--url", default=None, help="Base URL of the running API (default http://127.0.0.1:$PORT).")
    @click.option("--admin-token", envvar="DEMO_ADMIN_TOKEN", default=None, help="ops_admin token (default: a dev token).")
    @click.option("--service-token", envvar="DEMO_SERVICE_TOKEN", default=None, help="*_module token (default: a dev token).")
    @click.option("--seed", default=None, type=int, help="Seed of the simulation.")
    def seed_demo(minutes: float, users_per_second: float, url: str | None, admin_token: str | None,
                  service_token: str | None, seed: int | None) -> None:
        """Create the demo experiments and drive simulated users through the running API."""
        from .auth import mint_dev_token

        settings = app.extensions["settings"]
        if not (admin_token and service_token):
            if settings.molam_id_public_key:
                raise click.ClickException(
                    "this platform verifies Molam ID tokens: pass --admin-token (ops_admin) and --service-token (*_module)"
                )
            admin_token = admin_token or mint_dev_token(settings, "ops_admin", sub="demo-admin")
            service_token = service_token or mint_dev_token(settings, "demo_module", sub="demo-service")
        api = ApiClient(url or f"http://127.0.0.1:{settings.port}", admin_token, service_token)
        try:
            status, _ = api.call("GET", "/readyz")
        except (urllib.error.URLError, OSError) as exc:
            raise click.ClickException(f"the API at {api.base_url} does not answer ({exc}); start it with `make run`") from exc
        if status != 200:
            raise click.ClickException(f"the API at {api.base_url} is not ready ({status})")
        click.echo(f"Demo against {api.base_url}:")
        tally = run_demo(
            api, minutes=minutes, users_per_second=users_per_second, seed=seed, request_reports=_queue_daily_report
        )
        click.echo(
            f"\n{tally['users']} users, {tally['assignments']} assignments, {tally['events']} events, "
            f"{tally['ineligible']} ineligible, {tally['errors']} errors."
        )
        click.echo(f"Watch: {api.base_url}/ops  ·  results: GET /api/experiments/<id>/results")
