from __future__ import annotations

import csv
import io
import json
import uuid

import psycopg

from core.config import libpq_url


def _seed(settings, experiment, n=3):
    variant = experiment["variants"][0]["id"]
    with psycopg.connect(libpq_url(settings.database_url), autocommit=True) as conn:
        for i in range(n):
            conn.execute(
                "INSERT INTO experiment_assignments (experiment_id, variant_id, molam_id, country) VALUES (%s, %s, %s, 'SN')",
                (experiment["id"], variant, f"u{i}"),
            )
            conn.execute(
                "INSERT INTO experiment_metrics (event_id, experiment_id, variant_id, molam_id, event_type, value, metadata, occurred_at, received_at) "
                "VALUES (%s, %s, %s, %s, 'conversion', %s, %s, now(), now())",
                (f"e{i}", experiment["id"], variant, f"u{i}", 10.5 * i, json.dumps({"page": "checkout"})),
            )


def test_export_events_csv(client, auth, settings, create_experiment):
    experiment = create_experiment(start=True)
    _seed(settings, experiment)
    response = client.get(f"/api/experiments/{experiment['id']}/export", headers=auth("data_science"))
    assert response.status_code == 200 and response.mimetype == "text/csv"
    rows = list(csv.DictReader(io.StringIO(response.get_data(as_text=True))))
    assert [r["event_id"] for r in rows] == ["e0", "e1", "e2"]
    assert float(rows[2]["value"]) == 21.0 and json.loads(rows[0]["metadata"]) == {"page": "checkout"}
    assert "amount_minor" in rows[0]  # a money event's exact amount (its value is empty)


def test_export_assignments_ndjson(client, auth, settings, create_experiment):
    experiment = create_experiment(start=True)
    _seed(settings, experiment)
    response = client.get(f"/api/experiments/{experiment['id']}/export?kind=assignments&format=ndjson", headers=auth())
    assert response.status_code == 200
    lines = [json.loads(line) for line in response.get_data(as_text=True).splitlines()]
    assert sorted(line["molam_id"] for line in lines) == ["u0", "u1", "u2"]
    assert lines[0]["variant_name"] == "Control (Blue)" and lines[0]["country"] == "SN"


def test_export_errors(client, auth, create_experiment):
    experiment = create_experiment()
    assert client.get(f"/api/experiments/{uuid.uuid4()}/export", headers=auth()).status_code == 404
    assert client.get(f"/api/experiments/{experiment['id']}/export?format=xlsx", headers=auth()).status_code == 422
    assert client.get(f"/api/experiments/{experiment['id']}/export", headers=auth("marketing")).status_code == 403
