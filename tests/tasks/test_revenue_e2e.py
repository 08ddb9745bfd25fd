"""Money end to end: assign (with a covariate) and track through the API, a real worker writes,
results in the reporting currency equal a from-scratch computation over the raw events and the
rate table, and a late or corrected rate re-prices without touching raw events."""
from __future__ import annotations

import random
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

import numpy as np
import psycopg
import pytest

from core.config import libpq_url
from core.money import CURRENCY_EXPONENTS
from tests.support.ingestion import count_rows, rollup_mismatches
from tests.tasks.test_ingest_worker import broker_url, start_worker, wait_for  # noqa: F401 (fixtures)

SERVICE = "pay_module"
USERS = 240


def _rate_on(sets: list[dict], currency: str, day: date) -> Decimal | None:
    """Independent look-up: units of currency per EUR on day (newest valid_from <= day, newest revision)."""
    best = None
    for published in sets:  # in publication order: a later publication of the same valid_from wins
        valid_from = date.fromisoformat(published["valid_from"])
        if valid_from <= day and currency in published["rates"]:
            if best is None or valid_from >= best[0]:
                best = (valid_from, Decimal(str(published["rates"][currency])))
    return best[1] if best else None


def _from_scratch(settings, experiment_id: str, sets: list[dict]):
    """Per variant: exact EUR totals and per-user EUR sums by event type, unconverted events, native totals."""
    with psycopg.connect(libpq_url(settings.database_url)) as conn:
        events = conn.execute(
            "SELECT variant_id::text, molam_id, event_type, currency, amount_minor, occurred_at "
            "FROM experiment_metrics WHERE experiment_id = %s AND amount_minor IS NOT NULL", (experiment_id,)
        ).fetchall()
    totals, users, unconverted, native = {}, {}, {}, {}
    for variant, molam, event_type, currency, minor, occurred in events:
        key = (variant, event_type)
        native.setdefault(key, {}).setdefault(currency, 0)
        native[key][currency] += minor
        day = occurred.astimezone(timezone.utc).date()
        rate = Decimal(1) if currency == "EUR" else _rate_on(sets, currency, day)
        if rate is None:
            unconverted[key] = unconverted.get(key, 0) + 1
            continue
        amount = Decimal(minor).scaleb(-CURRENCY_EXPONENTS[currency]) / rate
        totals[key] = totals.get(key, Decimal(0)) + amount
        users.setdefault(key, {}).setdefault(molam, Decimal(0))
        users[key][molam] += amount
    return totals, users, unconverted, native


def _results(client, auth, experiment_id):
    response = client.get(f"/api/experiments/{experiment_id}/results", headers=auth("ops_admin"))
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def _check(results, expected, assigned, cap_percentile=None):
    totals, users, unconverted, native = expected
    pooled = np.array([float(v) for key, per in users.items() if key[1] == "conversion" for v in per.values()])
    cap = float(np.percentile(pooled[pooled > 0], cap_percentile)) if cap_percentile else None
    for variant in results["variants"]:
        vid = variant["variant_id"]
        for event_type in ("conversion", "refund"):
            block = variant["metrics"][event_type]["revenue"]
            key = (vid, event_type)
            total = totals.get(key, Decimal(0)).quantize(Decimal("0.01"))
            assert block["currency"] == "EUR"
            assert block["total_minor"] == int(total.scaleb(2)), (vid, event_type)
            assert block["total"] == pytest.approx(float(total), abs=0.005)
            values = np.array([float(v) for v in users.get(key, {}).values()])
            n = assigned[vid]
            assert block["per_user_uncapped"]["estimate"] == pytest.approx(values.sum() / n, rel=1e-9)
            if event_type == "conversion" and cap is not None:
                assert block["per_user"]["estimate"] == pytest.approx(np.minimum(values, cap).sum() / n, rel=1e-9)
            assert block["unconverted_events"] == unconverted.get(key, 0)
            assert {c: b["total_minor"] for c, b in block["by_currency"].items()} == native.get(key, {})
        net = {m: float(v) for m, v in users.get((vid, "conversion"), {}).items()}
        for m, v in users.get((vid, "refund"), {}).items():
            net[m] = net.get(m, 0.0) - float(v)
        assert variant["net_revenue"]["per_user"]["estimate"] == pytest.approx(sum(net.values()) / assigned[vid], rel=1e-9)


def test_mixed_xof_eur_revenue_equals_a_from_scratch_computation(client, auth, create_experiment, settings,
                                                                 start_worker):  # noqa: F811 - the imported fixture
    experiment = create_experiment(start=True, targeting={}, value_cap_percentile=None)
    assert experiment["reporting_currency"] == "EUR" and experiment["value_cap_percentile"] is None
    rng = random.Random(10)
    assigned: dict[str, int] = {}
    held: dict[str, str] = {}
    for i in range(USERS):
        body = {"molam_id": f"u{i}"}
        if i % 3:
            body["pre_exposure_value"] = round(rng.uniform(0, 300), 2)
        else:
            body["txn_count"] = rng.randint(0, 9)
        response = client.post(f"/api/experiments/{experiment['id']}/assign", json=body, headers=auth(SERVICE))
        assert response.status_code == 200, response.get_json()
        held[f"u{i}"] = response.get_json()["variant_id"]
        assigned[held[f"u{i}"]] = assigned.get(held[f"u{i}"], 0) + 1

    sets = [{"base": "EUR", "valid_from": "2026-11-01", "rates": {"XOF": 655.957, "USD": 1.05}},
            {"base": "EUR", "valid_from": "2026-11-15", "rates": {"XOF": 650.5}}]
    for published in sets:
        assert client.put("/api/fx-rates", json=published, headers=auth("ops_admin")).status_code == 200

    start_worker("money")
    start = datetime(2026, 11, 10, 12, tzinfo=timezone.utc)
    sent = 0
    for i in range(USERS):
        if rng.random() < 0.5:
            continue
        for _ in range(rng.randint(1, 3)):
            currency = rng.choice(["XOF", "XOF", "EUR", "EUR", "KWD"])
            amount = {"XOF": rng.randint(500, 60_000), "EUR": round(rng.lognormvariate(3, 1), 2),
                      "KWD": f"{rng.uniform(1, 30):.3f}"}[currency]
            occurred = start + timedelta(hours=rng.randint(0, 24 * 10))
            event_type = "refund" if rng.random() < 0.15 else "conversion"
            response = client.post(
                f"/api/experiments/{experiment['id']}/track",
                json={"molam_id": f"u{i}", "event_type": event_type, "value": amount, "currency": currency,
                      "occurred_at": occurred.isoformat()},
                headers=auth(SERVICE),
            )
            assert response.status_code == 202, response.get_json()
            sent += 1
    wait_for(lambda: count_rows(settings, "experiment_metrics") == sent, 60, f"the worker to write {sent} events")
    assert rollup_mismatches(settings) == []

    results = _results(client, auth, experiment["id"])
    assert results["reporting_currency"] == "EUR"
    expected = _from_scratch(settings, experiment["id"], sets)
    assert sum(expected[2].values()) > 0  # KWD has no rate yet: counted, never summed
    _check(results, expected, assigned)
    assert results["cuped_covariate_users"] == {"pre_exposure_value": 160, "txn_count": 80, "none": 0}

    # A late KWD rate and a corrected XOF rate re-price the days they cover, raw events untouched.
    with psycopg.connect(libpq_url(settings.database_url)) as conn:
        raw_before = conn.execute("SELECT count(*), max(recorded_at) FROM experiment_metrics").fetchone()
    late = [{"base": "EUR", "valid_from": "2026-11-12", "rates": {"KWD": 0.3301}},
            {"base": "EUR", "valid_from": "2026-11-15", "rates": {"XOF": 655.957}}]
    for published in late:
        assert client.put("/api/fx-rates", json=published, headers=auth("data_science")).status_code == 200
    sets += late
    repriced = _results(client, auth, experiment["id"])
    expected = _from_scratch(settings, experiment["id"], sets)
    _check(repriced, expected, assigned)
    assert all(v["metrics"]["conversion"]["revenue"]["unconverted_events"] == expected[2].get(
        (v["variant_id"], "conversion"), 0) for v in repriced["variants"])
    with psycopg.connect(libpq_url(settings.database_url)) as conn:
        assert conn.execute("SELECT count(*), max(recorded_at) FROM experiment_metrics").fetchone() == raw_before

    # Capping, changed on the running experiment (an analysis setting): capped and uncapped both shown.
    patched = client.patch(f"/api/experiments/{experiment['id']}", json={"value_cap_percentile": 90},
                           headers=auth("ops_admin"))
    assert patched.status_code == 200, patched.get_json()
    capped = _results(client, auth, experiment["id"])
    _check(capped, expected, assigned, cap_percentile=90)
    control = next(v for v in capped["variants"] if v["is_control"])
    treatment = next(v for v in capped["variants"] if not v["is_control"])
    revenue = treatment["metrics"]["conversion"]["revenue"]
    assert revenue["cap"]["percentile"] == 90 and revenue["cap"]["users_capped"] > 0
    assert revenue["uplift"]["estimate"] is not None and revenue["uplift_uncapped"]["estimate"] is not None
    # The covariate here is noise: CUPED removes ~nothing (slightly negative is possible with a pooled θ).
    assert -0.05 < treatment["metrics"]["conversion"]["cuped"]["variance_reduction"] < 0.05
    assert -0.05 < revenue["cuped"]["variance_reduction"] < 0.05
    assert control["ratios"]["revenue_per_converter"]["uplift"] is None
    assert treatment["ratios"]["refunded_amount_per_revenue"]["estimate"] is not None
