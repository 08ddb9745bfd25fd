"""Per-experiment money settings and the CUPED covariate stored with the assignment."""
from __future__ import annotations

import psycopg
import pytest

from core.config import libpq_url
from tests.support.api import experiment_body


def test_defaults_validation_and_editing_while_running(client, auth, create_experiment):
    experiment = create_experiment()
    assert experiment["reporting_currency"] == "EUR" and experiment["value_cap_percentile"] == 99.5
    for patch, field in (({"reporting_currency": "eur"}, "reporting_currency"),
                         ({"reporting_currency": "XAU"}, "reporting_currency"),
                         ({"value_cap_percentile": 100}, "value_cap_percentile"),
                         ({"value_cap_percentile": 10}, "value_cap_percentile"),
                         ({"value_cap_percentile": "high"}, "value_cap_percentile")):
        response = client.post("/api/experiments", json=experiment_body(**patch), headers=auth())
        assert response.status_code == 422 and field in response.get_json()["errors"]["json"], patch
    started = create_experiment(start=True, reporting_currency="XOF", value_cap_percentile=None)
    assert started["reporting_currency"] == "XOF" and started["value_cap_percentile"] is None
    # Analysis settings change how results read, not who sees what: editable while running, audited.
    patched = client.patch(f"/api/experiments/{started['id']}", json={"value_cap_percentile": 99.0,
                                                                        "reporting_currency": "USD"}, headers=auth())
    assert patched.status_code == 200, patched.get_json()
    assert patched.get_json()["value_cap_percentile"] == 99.0 and patched.get_json()["reporting_currency"] == "USD"
    entry = client.get(f"/api/audit?experiment_id={started['id']}", headers=auth()).get_json()[0]
    assert entry["action"] == "update" and entry["before"]["reporting_currency"] == "XOF"
    assert entry["after"]["value_cap_percentile"] == 99.0
    frozen = client.patch(f"/api/experiments/{started['id']}", json={"coverage": 50}, headers=auth())
    assert frozen.status_code == 409


def test_the_covariate_is_stored_with_the_first_assignment(client, auth, create_experiment, settings):
    experiment = create_experiment(start=True, targeting={})
    url = f"/api/experiments/{experiment['id']}/assign"
    headers = auth("pay_module")
    assert client.post(url, json={"molam_id": "a", "pre_exposure_value": 120.5, "txn_count": 4}, headers=headers).status_code == 200
    assert client.post(url, json={"molam_id": "b", "txn_count": 2}, headers=headers).status_code == 200
    # A later call does not rewrite what was known before exposure.
    assert client.post(url, json={"molam_id": "a", "pre_exposure_value": 999}, headers=headers).status_code == 200
    for bad in ("much", True, 1e300):
        response = client.post(url, json={"molam_id": "c", "pre_exposure_value": bad}, headers=headers)
        assert response.status_code == 422 and "pre_exposure_value" in response.get_json()["errors"]["json"]
    with psycopg.connect(libpq_url(settings.database_url)) as conn:
        rows = dict((m, (p, t)) for m, p, t in conn.execute(
            "SELECT molam_id, pre_exposure_value, txn_count FROM experiment_assignments").fetchall())
    assert rows == {"a": (120.5, 4), "b": (None, 2)}


@pytest.mark.parametrize("literal", ["NaN", "Infinity"])
def test_non_finite_covariates_are_refused(client, auth, create_experiment, literal):
    experiment = create_experiment(start=True, targeting={})
    response = client.post(
        f"/api/experiments/{experiment['id']}/assign", data='{"molam_id": "x", "pre_exposure_value": ' + literal + "}",
        headers={**auth("pay_module"), "Content-Type": "application/json"},
    )
    assert response.status_code == 422
