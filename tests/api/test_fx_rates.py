"""Exchange rates: publish (append-only, audited, revisions), read by day, validation, roles."""
from __future__ import annotations

from decimal import Decimal

import psycopg
import pytest

from core.config import libpq_url

SET = {"base": "EUR", "valid_from": "2026-12-01", "rates": {"XOF": 655.957, "USD": 1.05, "KWD": 0.3251}}


def put(client, auth, body, role="data_science"):
    return client.put("/api/fx-rates", json=body, headers=auth(role))


def test_publish_read_by_day_and_supersede(client, auth):
    response = put(client, auth, SET)
    assert response.status_code == 200, response.get_json()
    assert response.get_json() == {**SET, "revision": 1}
    later = put(client, auth, {"base": "EUR", "valid_from": "2026-12-10", "rates": {"USD": 1.07}})
    assert later.status_code == 200

    before = client.get("/api/fx-rates?on=2026-11-30", headers=auth("ops_admin")).get_json()
    assert before == {"on": "2026-11-30", "sets": []}
    first = client.get("/api/fx-rates?on=2026-12-05", headers=auth("ops_admin")).get_json()
    assert first["sets"] == [{"base": "EUR", "rates": {
        "KWD": {"rate": 0.3251, "valid_from": "2026-12-01", "revision": 1},
        "USD": {"rate": 1.05, "valid_from": "2026-12-01", "revision": 1},
        "XOF": {"rate": 655.957, "valid_from": "2026-12-01", "revision": 1},
    }}]
    # The later set supersedes USD only; XOF and KWD carry on from the earlier one.
    second = client.get("/api/fx-rates?on=2026-12-10&base=EUR", headers=auth("data_science")).get_json()
    assert second["sets"][0]["rates"]["USD"] == {"rate": 1.07, "valid_from": "2026-12-10", "revision": 1}
    assert second["sets"][0]["rates"]["XOF"]["valid_from"] == "2026-12-01"


def test_a_correction_is_a_new_revision_and_nothing_is_edited(client, auth, settings):
    assert put(client, auth, SET).status_code == 200
    corrected = put(client, auth, {**SET, "rates": {"XOF": 656.0, "USD": 1.05}})
    assert corrected.status_code == 200 and corrected.get_json()["revision"] == 2
    now = client.get("/api/fx-rates?on=2026-12-01", headers=auth()).get_json()["sets"][0]["rates"]
    assert now == {"USD": {"rate": 1.05, "valid_from": "2026-12-01", "revision": 2},
                   "XOF": {"rate": 656.0, "valid_from": "2026-12-01", "revision": 2}}
    with psycopg.connect(libpq_url(settings.database_url), autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM fx_rates").fetchone()[0] == 5  # both revisions kept
        assert conn.execute("SELECT rate FROM fx_rates WHERE currency = 'XOF' AND revision = 1").fetchone()[0] == Decimal(
            "655.957"
        )
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("UPDATE fx_rates SET rate = 1")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("DELETE FROM fx_rates")
    entries = client.get("/api/audit", headers=auth("ops_admin")).get_json()
    assert [e["action"] for e in entries] == ["fx_rates", "fx_rates"]
    assert entries[0]["before"]["revision"] == 1 and entries[0]["after"]["rates"]["XOF"] == "656.0"
    assert entries[0]["actor_roles"] == ["data_science"]
    assert client.get("/api/audit/verify", headers=auth("ops_admin")).get_json()["ok"] is True


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({**SET, "base": "ZZZ"}, "base"),
        ({**SET, "base": "XAU"}, "base"),
        ({**SET, "valid_from": "first of december"}, "valid_from"),
        ({**SET, "rates": {}}, "rates"),
        ({**SET, "rates": {"XOF": 0}}, "rates"),
        ({**SET, "rates": {"XOF": -1}}, "rates"),
        ({**SET, "rates": {"XOF": "abc"}}, "rates"),
        ({**SET, "rates": {"XOF": 1e30}}, "rates"),
        ({**SET, "rates": {"XOF": 1.0000000000001}}, "rates"),
        ({**SET, "rates": {"xof": 655}}, "rates"),
        ({**SET, "rates": {"EUR": 1}}, "rates"),
        ({**SET, "colour": "red"}, "colour"),
        ({"base": "EUR", "rates": {"XOF": 655}}, "valid_from"),
    ],
)
def test_bad_sets_are_a_422_naming_the_field_and_store_nothing(client, auth, settings, body, field):
    response = put(client, auth, body)
    assert response.status_code == 422, response.get_json()
    assert field in response.get_json()["errors"]["json"]
    with psycopg.connect(libpq_url(settings.database_url)) as conn:
        assert conn.execute("SELECT count(*) FROM fx_rates").fetchone()[0] == 0


def test_non_finite_rates_and_bad_queries(client, auth):
    response = client.put(
        "/api/fx-rates", data='{"base": "EUR", "valid_from": "2026-12-01", "rates": {"XOF": NaN}}',
        headers={**auth(), "Content-Type": "application/json"},
    )
    assert response.status_code == 422
    assert client.get("/api/fx-rates", headers=auth()).status_code == 422
    assert client.get("/api/fx-rates?on=yesterday", headers=auth()).status_code == 422
    assert client.get("/api/fx-rates?on=2026-12-01&base=USD", headers=auth()).status_code == 404
    assert client.get("/api/fx-rates?on=2026-12-01", headers=auth("marketing")).status_code == 403
