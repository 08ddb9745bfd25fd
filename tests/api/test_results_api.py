"""Results, insights, pause/resume and reports endpoints: contract, RBAC, 404/409 cases."""
from __future__ import annotations

import json
import uuid
from datetime import date, timedelta

import psycopg
import pytest

from core import rbac
from core.config import libpq_url
from core.redis import get_redis
from services.analysis import reports as sira_reports
from services.analysis import scan as sira_scan
from services.cache import definition_key
from tests.support.api import new_id
from tests.support.sira_data import set_arm, set_rollup, simulate

ROLES = ("ops_admin", "marketing", "data_science", "pay_module")


def allowed_roles(action):
    return [role for role in ROLES if rbac.allowed(action, [role])]


@pytest.fixture
def running(create_experiment, settings):
    experiment = create_experiment(
        start=True,
        variants=[
            {"name": "Control", "config": {"button_color": "blue", "size": "m"}, "traffic_share": 50, "is_control": True},
            {"name": "Green Button", "config": {"button_color": "green", "size": "m"}, "traffic_share": 50},
        ],
    )
    control, green = (v["id"] for v in experiment["variants"])
    set_arm(settings.database_url, experiment["id"], control, assigned=1000, successes=60)
    set_arm(settings.database_url, experiment["id"], green, assigned=1000, successes=85)
    return experiment


def test_results_shape(client, auth, running):
    response = client.get(f"/api/experiments/{running['id']}/results", headers=auth("marketing"))
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert set(body) >= {"experiment_id", "primary_metric", "variants", "srm", "computed_at"}
    assert set(body["srm"]) >= {"chi2", "p_value", "flagged"}
    control, green = body["variants"]
    for variant in body["variants"]:
        assert set(variant) >= {
            "variant_id", "name", "is_control", "assigned_users", "weight", "paused", "metrics",
            "prob_best", "alpha", "beta", "d7_retention",
        }
        assert set(variant["metrics"]) == {"conversion", "refund", "churn", "fraud_alert", "click", "view"}
        for metric in variant["metrics"].values():
            assert set(metric) >= {
                "users", "events", "rate", "interval", "credible_interval", "value_mean", "value_interval",
                "uplift", "prob_beat_control",
            }
    assert green["assigned_users"] == 1000 and green["metrics"]["conversion"]["users"] == 85
    assert green["metrics"]["conversion"]["rate"] == pytest.approx(0.085)
    assert green["metrics"]["conversion"]["uplift"]["estimate"] == pytest.approx(0.085 / 0.06 - 1)
    for comparison in ("difference", "uplift"):
        assert set(green["metrics"]["conversion"][comparison]) == {
            "estimate", "lower", "upper", "always_valid_lower", "always_valid_upper", "message",
        }
    assert green["metrics"]["conversion"]["difference"]["estimate"] == pytest.approx(0.025)
    assert green["metrics"]["conversion"]["matured_users"] == 1000
    assert body["periods"] == 1
    assert green["metrics"]["conversion"]["prob_beat_control"] > 0.95
    assert (green["alpha"], green["beta"]) == (86, 916)
    assert control["prob_best"] + green["prob_best"] == pytest.approx(1.0)
    assert control["metrics"]["conversion"]["uplift"] is None


def test_insights_seed_shape_and_recommendation(client, auth, running):
    response = client.get(f"/api/experiments/{running['id']}/insights", headers=auth("data_science"))
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    green = next(i for i in body["insights"] if i["variant"] == "Green Button")
    assert green["conversion_rate"] == pytest.approx(0.085) and green["samples"] == 1000
    assert set(green["confidence_interval"]) == {"lower", "upper"}
    assert (green["alpha"], green["beta"]) == (86, 916) and green["prob_best"] > 0.9
    assert body["recommendation"].startswith("Variant 'Green Button' is currently leading with 8.50% conversion")
    assert body["fail_fast"]["rule"] == "sequential" and body["fail_fast"]["recommendations"] == []
    assert body["guardrails"]["event_types"] == ["fraud_alert", "refund"]
    assert isinstance(body["suggestions"], list) and body["suggestions"]
    kinds = {s["kind"] for s in body["suggestions"]}
    assert kinds & {"roll_out_and_iterate", "extend_or_cut"}


def test_insights_report_a_recorded_fail_fast(client, auth, create_experiment, settings):
    experiment = create_experiment(start=True, guardrails=[])
    control, green = (v["id"] for v in experiment["variants"])
    set_arm(settings.database_url, experiment["id"], control, assigned=3000, successes=300)
    set_arm(settings.database_url, experiment["id"], green, assigned=3000, successes=150)
    sira_scan.fail_fast_scan(get_redis(settings.redis_url))
    body = client.get(f"/api/experiments/{experiment['id']}/insights", headers=auth("ops_admin")).get_json()
    assert [f["variant_id"] for f in body["fail_fast"]["flags"]] == [green]
    recorded = body["fail_fast"]["recommendations"]
    assert len(recorded) == 1 and recorded[0]["variant_id"] == green and recorded[0]["outcome"] == "recommendation only"


def test_insights_targeted_follow_up_from_segments(client, auth, create_experiment, settings):
    """Green wins in SN and loses in FR: a follow-up targeted at SN is suggested."""
    experiment = create_experiment(start=True)
    control, green = (v["id"] for v in experiment["variants"])
    rows, events = [], []
    plan = {("SN", control): (600, 60), ("SN", green): (600, 120), ("FR", control): (600, 120), ("FR", green): (600, 60)}
    for (country, variant), (users, converters) in plan.items():
        for n in range(users):
            molam_id = f"{country}-{variant[:6]}-{n}"
            rows.append((experiment["id"], variant, molam_id, country, "fr", "android"))
            if n < converters:
                events.append((experiment["id"], molam_id, variant))
    with psycopg.connect(libpq_url(settings.database_url)) as conn:
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO experiment_assignments (experiment_id, variant_id, molam_id, country, lang, device) "
                "VALUES (%s, %s, %s, %s, %s, %s)", rows)
            cur.executemany(
                "INSERT INTO experiment_user_rollups (experiment_id, molam_id, event_type, variant_id, events, "
                "first_event_at, last_event_at) VALUES (%s, %s, 'conversion', %s, 1, now(), now())", events)
    set_rollup(settings.database_url, experiment["id"], control, "conversion", users=180)
    set_rollup(settings.database_url, experiment["id"], green, "conversion", users=180)
    body = client.get(f"/api/experiments/{experiment['id']}/insights", headers=auth("ops_admin")).get_json()
    targeted = [s for s in body["suggestions"] if s["kind"] == "targeted_follow_up"]
    assert len(targeted) == 1
    assert targeted[0]["segment_key"] == "country" and list(targeted[0]["winning_values"]) == ["SN"]
    assert list(targeted[0]["losing_values"]) == ["FR"]


@pytest.mark.parametrize("path", ["results", "insights"])
def test_read_endpoints_rbac_and_404(client, auth, running, path):
    action = "results" if path == "results" else "insights"
    for role in ROLES:
        response = client.get(f"/api/experiments/{running['id']}/{path}", headers=auth(role))
        assert response.status_code == (200 if role in allowed_roles(action) else 403), (role, response.get_json())
    assert client.get(f"/api/experiments/{running['id']}/{path}").status_code == 401
    missing = client.get(f"/api/experiments/{new_id()}/{path}", headers=auth("ops_admin"))
    assert missing.status_code == 404 and missing.get_json()["code"] == 404


def test_empty_experiment_endpoints(client, auth, create_experiment):
    experiment = create_experiment()
    results = client.get(f"/api/experiments/{experiment['id']}/results", headers=auth("ops_admin"))
    assert results.status_code == 200
    assert [v["assigned_users"] for v in results.get_json()["variants"]] == [0, 0]
    insights = client.get(f"/api/experiments/{experiment['id']}/insights", headers=auth("ops_admin"))
    assert insights.status_code == 200
    assert insights.get_json()["recommendation"].startswith("Not enough data yet")


def audit_actions(client, auth, experiment_id):
    entries = client.get(f"/api/audit?experiment_id={experiment_id}", headers=auth("ops_admin")).get_json()
    return [(e["actor"], e["action"]) for e in entries]


def test_pause_and_resume(client, auth, running, settings):
    control, green = (v["id"] for v in running["variants"])
    redis_client = get_redis(settings.redis_url)
    redis_client.set(definition_key(running["id"]), b"cached")
    response = client.post(
        f"/api/experiments/{running['id']}/variants/{green}/pause", json={"reason": "copy typo"}, headers=auth("marketing", sub="mia")
    )
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    paused = next(v for v in body["variants"] if v["id"] == green)
    assert paused["paused"] is True and paused["paused_reason"] == "copy typo"
    assert body["version"] == running["version"] + 1
    assert redis_client.get(definition_key(running["id"])) is None
    results = client.get(f"/api/experiments/{running['id']}/results", headers=auth("ops_admin")).get_json()
    assert [v["weight"] for v in results["variants"]] == [1.0, 0.0]
    assert [v["paused"] for v in results["variants"]] == [False, True]

    # Pausing the last active variant is refused.
    last = client.post(f"/api/experiments/{running['id']}/variants/{control}/pause", headers=auth("ops_admin"))
    assert last.status_code == 409 and "last active variant" in last.get_json()["message"]

    resumed = client.post(f"/api/experiments/{running['id']}/variants/{green}/resume", headers=auth("data_science"))
    assert resumed.status_code == 200
    assert not any(v["paused"] for v in resumed.get_json()["variants"])
    assert audit_actions(client, auth, running["id"])[:2] == [("user-data_science", "resume_variant"), ("mia", "pause_variant")]


def test_pause_errors_and_rbac(client, auth, running, create_experiment):
    green = running["variants"][1]["id"]
    url = f"/api/experiments/{running['id']}/variants/{green}"
    for role in ROLES:
        if role not in allowed_roles("pause_variant"):
            assert client.post(f"{url}/pause", headers=auth(role)).status_code == 403
            assert client.post(f"{url}/resume", headers=auth(role)).status_code == 403
    assert client.post(f"{url}/pause").status_code == 401
    assert client.post(f"/api/experiments/{new_id()}/variants/{green}/pause", headers=auth("ops_admin")).status_code == 404
    unknown_variant = client.post(f"/api/experiments/{running['id']}/variants/{new_id()}/pause", headers=auth("ops_admin"))
    assert unknown_variant.status_code == 404
    other = create_experiment(name="Other")
    foreign = client.post(f"/api/experiments/{other['id']}/variants/{green}/pause", headers=auth("ops_admin"))
    assert foreign.status_code == 404
    bad = client.post(f"{url}/pause", json={"reason": 5}, headers=auth("ops_admin"))
    assert bad.status_code == 422 and "reason" in json.dumps(bad.get_json()["errors"])
    unknown_field = client.post(f"{url}/pause", json={"why": "x"}, headers=auth("ops_admin"))
    assert unknown_field.status_code == 422
    # Resuming an arm that is not paused is a no-op (no audit entry).
    before = audit_actions(client, auth, running["id"])
    assert client.post(f"{url}/resume", headers=auth("ops_admin")).status_code == 200
    assert audit_actions(client, auth, running["id"]) == before
    # Archived experiments cannot be changed.
    client.post(f"/api/experiments/{running['id']}/stop", headers=auth("ops_admin"))
    client.post(f"/api/experiments/{running['id']}/archive", headers=auth("ops_admin"))
    archived = client.post(f"{url}/pause", headers=auth("ops_admin"))
    assert archived.status_code == 409


# --- Reports ---------------------------------------------------------------------

def test_daily_reports_stored_once_listed_filtered_and_rendered(client, auth, create_experiment, settings):
    first = create_experiment(start=True, name="First")
    simulate(settings.database_url, first, users_per_arm=[400, 400], rates={"conversion": [0.1, 0.12]})
    create_experiment(start=True, name="Second")
    create_experiment(name="Draft only")
    redis_client = get_redis(settings.redis_url)
    today = date(2026, 3, 14)

    summary = sira_reports.daily_reports(redis_client, report_date=today)
    assert (summary.experiments, summary.created, summary.errors) == (2, 2, [])
    assert sira_reports.daily_reports(redis_client, report_date=today).created == 0  # once per day
    assert sira_reports.daily_reports(redis_client, report_date=today + timedelta(days=1)).created == 2

    listing = client.get("/api/reports?page_size=3", headers=auth("marketing"))
    assert listing.status_code == 200
    assert json.loads(listing.headers["X-Pagination"])["total"] == 4
    assert len(listing.get_json()) == 3
    assert listing.get_json()[0]["report_date"] == "2026-03-15"

    filtered = client.get(f"/api/reports?experiment_id={first['id']}", headers=auth("data_science")).get_json()
    assert [r["report_date"] for r in filtered] == ["2026-03-15", "2026-03-14"]
    assert all(r["experiment_id"] == first["id"] and r["experiment_name"] == "First" for r in filtered)
    assert filtered[0]["recommendation"].startswith("Variant '")

    report = client.get(f"/api/reports/{filtered[1]['id']}", headers=auth("ops_admin")).get_json()
    content = report["content"]
    assert content["report_date"] == "2026-03-14" and content["experiment"]["id"] == first["id"]
    assert set(content) >= {"leader", "results", "srm", "fail_fast", "guardrails", "recommendation", "suggestions", "insights"}
    assert content["leader"]["name"] in {"Control (Blue)", "Green Button"}
    assert len(content["results"]["variants"]) == 2

    markdown = client.get(f"/api/reports/{filtered[1]['id']}?format=markdown", headers=auth("ops_admin"))
    assert markdown.status_code == 200 and markdown.mimetype == "text/markdown"
    text = markdown.get_data(as_text=True)
    assert text.startswith("# SIRA report — First — 2026-03-14")
    assert "| Green Button | 400 |" in text and "## Fail-fast" in text and "## Suggested next experiments" in text


def test_reports_rbac_validation_and_404(client, auth, create_experiment, settings):
    experiment = create_experiment(start=True)
    sira_reports.daily_reports(get_redis(settings.redis_url), report_date=date(2026, 1, 1))
    report_id = client.get("/api/reports", headers=auth("ops_admin")).get_json()[0]["id"]
    for role in ROLES:
        want = 200 if role in allowed_roles("reports") else 403
        assert client.get("/api/reports", headers=auth(role)).status_code == want
        assert client.get(f"/api/reports/{report_id}", headers=auth(role)).status_code == want
    assert client.get("/api/reports").status_code == 401
    assert client.get(f"/api/reports/{new_id()}", headers=auth("ops_admin")).status_code == 404
    assert client.get("/api/reports?experiment_id=nope", headers=auth("ops_admin")).status_code == 422
    assert client.get(f"/api/reports/{report_id}?format=pdf", headers=auth("ops_admin")).status_code == 422
    assert client.get(f"/api/reports?experiment_id={uuid.uuid4()}", headers=auth("ops_admin")).get_json() == []
    assert client.get(f"/api/reports?experiment_id={experiment['id']}", headers=auth("ops_admin")).status_code == 200


def test_results_and_insights_never_read_raw_events(client, auth, running):
    """Their cost must not grow with the number of events: no statement touches experiment_metrics."""
    from sqlalchemy import event

    from core import db

    statements = []

    def capture(conn, cursor, statement, parameters, context, executemany):
        statements.append(statement)

    event.listen(db.get_engine(), "before_cursor_execute", capture)
    try:
        for path in ("results", "insights"):
            assert client.get(f"/api/experiments/{running['id']}/{path}", headers=auth("ops_admin")).status_code == 200
    finally:
        event.remove(db.get_engine(), "before_cursor_execute", capture)
    assert statements and not [s for s in statements if "experiment_metrics" in s]
    assert any("experiment_variant_rollups" in s for s in statements)
