"""The HMAC audit chain against someone who can write to the database: forged entries, the
legacy SHA-256 prefix, key rotation, forks, signed checkpoints and the full verification."""
from __future__ import annotations

import hashlib
import hmac
import json
import logging
import uuid
from datetime import datetime, timezone

import psycopg
import pytest

from core import db
from core.config import Settings, libpq_url
from core.redis import get_redis
from services.experiments import audit, audit_checks
from services.experiments.audit import AuditKeys, canonical_payload, keys_from_settings, legacy_hash
from tasks import audit as audit_tasks
from tests.conftest import TEST_AUDIT_HMAC_KEY, TEST_AUDIT_HMAC_KEY_ID


def _admin(url):
    return psycopg.connect(libpq_url(url), autocommit=True)


def _verify(client, auth, query=""):
    response = client.get(f"/api/audit/verify{query}", headers=auth("data_science"))
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def _head(conn):
    return conn.execute("SELECT id, hash FROM experiment_audit_logs ORDER BY id DESC LIMIT 1").fetchone()


def _forge(conn, prev_hash, *, key_id=None, key=None, created_at=None, actor="mallory"):
    """Insert an entry the way someone with write access but no key would: hash computed by the rules."""
    created_at = created_at or datetime.now(timezone.utc)
    fields = dict(
        experiment_id=None, actor=actor, actor_roles=["ops_admin"], action="update", before=None,
        after={"status": "running"}, request_id=None, client_ip=None, created_at=created_at, prev_hash=prev_hash,
    )
    canonical = canonical_payload(**fields, key_id=key_id)
    digest = legacy_hash(canonical) if key is None else hmac.new(key, canonical.encode(), hashlib.sha256).hexdigest()
    return conn.execute(
        "INSERT INTO experiment_audit_logs (experiment_id, actor, actor_roles, action, before, after, request_id, "
        "client_ip, created_at, prev_hash, hash, key_id) VALUES (NULL, %s, %s, 'update', NULL, %s, NULL, NULL, %s, %s, %s, %s) "
        "RETURNING id",
        (actor, ["ops_admin"], json.dumps({"status": "running"}), created_at, prev_hash, digest, key_id),
    ).fetchone()[0]


def test_entries_carry_the_key_id_and_an_hmac(migrated_database, client, auth, create_experiment):
    create_experiment()
    with _admin(migrated_database) as conn:
        row = conn.execute(
            "SELECT experiment_id, actor, actor_roles, action, before, after, request_id, client_ip, created_at, "
            "prev_hash, hash, key_id FROM experiment_audit_logs"
        ).fetchone()
    *fields, prev_hash, digest, key_id = row
    names = ("experiment_id", "actor", "actor_roles", "action", "before", "after", "request_id", "client_ip", "created_at")
    canonical = canonical_payload(**dict(zip(names, fields)), prev_hash=prev_hash, key_id=key_id)
    assert key_id == TEST_AUDIT_HMAC_KEY_ID
    assert digest == hmac.new(TEST_AUDIT_HMAC_KEY.encode(), canonical.encode(), hashlib.sha256).hexdigest()
    assert digest != legacy_hash(canonical)


def test_a_raw_insert_with_a_correct_sha256_hash_is_broken(migrated_database, client, auth, create_experiment):
    for _ in range(2):
        create_experiment()
    assert _verify(client, auth)["ok"] is True
    with _admin(migrated_database) as conn:  # the superuser: every privilege, no key
        _, head_hash = _head(conn)
        forged = _forge(conn, head_hash)
    verify = _verify(client, auth)
    assert verify["ok"] is False and verify["first_bad_id"] == forged
    assert "no HMAC" in verify["reason"]


def test_a_raw_insert_signed_with_a_guessed_key_is_broken(migrated_database, client, auth, create_experiment):
    create_experiment()
    with _admin(migrated_database) as conn:
        _, head_hash = _head(conn)
        forged = _forge(conn, head_hash, key_id=TEST_AUDIT_HMAC_KEY_ID, key=b"not-the-key")
    verify = _verify(client, auth)
    assert verify["ok"] is False and verify["first_bad_id"] == forged
    assert verify["reason"] == "hash does not match the entry's content"


def test_the_chain_cannot_fork(migrated_database, client, create_experiment):
    for _ in range(2):
        create_experiment()
    with _admin(migrated_database) as conn:
        first_prev = conn.execute("SELECT prev_hash FROM experiment_audit_logs ORDER BY id LIMIT 1").fetchone()[0]
        with pytest.raises(psycopg.errors.UniqueViolation, match="uq_experiment_audit_logs_prev_hash"):
            _forge(conn, first_prev, key_id=TEST_AUDIT_HMAC_KEY_ID, key=TEST_AUDIT_HMAC_KEY.encode())


@pytest.mark.parametrize("table", ["experiment_audit_logs", "experiment_audit_checkpoints", "experiment_audit_legacy_boundary"])
def test_the_application_role_may_only_read_and_append(settings, app, table):
    with _admin(settings.database_url) as conn:
        for statement in (f"UPDATE {table} SET id = id", f"DELETE FROM {table}", f"TRUNCATE {table}"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied"):
                conn.execute(statement)
        user, = conn.execute("SELECT current_user").fetchone()
        granted = {row[0] for row in conn.execute(
            "SELECT privilege_type FROM information_schema.role_table_grants WHERE grantee = %s AND table_name = %s",
            (user, table),
        )}
        assert granted == {"SELECT", "INSERT"}
        owner, superuser = conn.execute(
            "SELECT tableowner = current_user, (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) "
            "FROM pg_tables WHERE tablename = %s", (table,),
        ).fetchone()
        assert owner is False and superuser is False


def test_legacy_entries_verify_only_up_to_the_switch_over(migrated_database, client, auth, create_experiment):
    with _admin(migrated_database) as conn:  # two entries written before the switch to HMAC
        first = _forge(conn, audit.GENESIS_HASH, actor="before-the-switch")
        second = _forge(conn, conn.execute("SELECT hash FROM experiment_audit_logs WHERE id = %s", (first,)).fetchone()[0])
        second_hash = conn.execute("SELECT hash FROM experiment_audit_logs WHERE id = %s", (second,)).fetchone()[0]
        conn.execute(
            "INSERT INTO experiment_audit_legacy_boundary (id, last_legacy_id, last_legacy_hash, entries) VALUES (1, %s, %s, 2)",
            (second, second_hash),
        )
    create_experiment()  # the first HMAC entry links to the last legacy one
    verify = _verify(client, auth)
    assert verify["ok"] is True and verify["entries"] == 3
    assert verify["legacy_entries"] == 2 and verify["legacy_through_id"] == second

    with _admin(migrated_database) as conn:  # a SHA-256 entry appended after the switch
        _, head_hash = _head(conn)
        late = _forge(conn, head_hash)
    verify = _verify(client, auth)
    assert verify["ok"] is False and verify["first_bad_id"] == late


def test_rotated_keys_keep_verifying_older_entries(settings, app, client, auth, create_experiment):
    create_experiment()
    rotated = keys_from_settings(settings.with_overrides(
        audit_hmac_key="a-new-key-" + "9" * 32, audit_hmac_key_id="k2",
        audit_hmac_previous_keys=f"{TEST_AUDIT_HMAC_KEY_ID}:{TEST_AUDIT_HMAC_KEY}",
    ))
    original = audit.current_keys()
    audit.configure_keys(rotated)
    try:
        create_experiment()
        assert _verify(client, auth)["ok"] is True
        audit.configure_keys(AuditKeys("k2", {"k2": rotated.keys["k2"]}))  # the old key forgotten
        verify = _verify(client, auth)
        assert verify["ok"] is False and "unknown key id 'test'" in verify["reason"]
    finally:
        audit.configure_keys(original)


def test_development_key_is_generated_once_with_a_warning(tmp_path, caplog):
    settings = Settings(app_env="development", dev_key_dir=tmp_path)
    with caplog.at_level(logging.WARNING, logger="services.experiments.audit"):
        first = keys_from_settings(settings)
    assert "AUDIT_HMAC_KEY is not set" in caplog.text
    assert keys_from_settings(settings) == first and first.current_id == "dev"
    assert (tmp_path / "audit-hmac.key").stat().st_mode & 0o077 == 0
    with pytest.raises(RuntimeError, match="AUDIT_HMAC_KEY"):
        keys_from_settings(Settings(app_env="production", dev_key_dir=tmp_path))


def test_checkpoints_are_signed_exported_and_start_the_verification(app, client, auth, create_experiment):
    for _ in range(3):
        create_experiment()
    with db.session_scope() as session:
        outcome = audit_checks.write_checkpoint(session, audit.current_keys())
    assert outcome.written is True
    with db.session_scope() as session:  # the head did not move: nothing new to sign
        assert audit_checks.write_checkpoint(session, audit.current_keys()).written is False
    create_experiment()

    response = client.get("/api/audit/checkpoints", headers=auth("data_science"))
    assert response.status_code == 200
    checkpoints = response.get_json()
    assert len(checkpoints) == 1 and json.loads(response.headers["X-Pagination"])["total"] == 1
    checkpoint = checkpoints[0]
    assert checkpoint["entries"] == 3 and checkpoint["key_id"] == TEST_AUDIT_HMAC_KEY_ID
    # What an auditor holding the key recomputes from the exported document alone.
    message = json.dumps(
        {k: checkpoint[k] for k in ("entry_id", "entry_hash", "entries", "created_at", "key_id")},
        sort_keys=True, separators=(",", ":"),
    )
    assert checkpoint["signature"] == hmac.new(TEST_AUDIT_HMAC_KEY.encode(), message.encode(), hashlib.sha256).hexdigest()
    entries = client.get("/api/audit?page_size=10", headers=auth()).get_json()
    assert next(e for e in entries if e["id"] == checkpoint["entry_id"])["hash"] == checkpoint["entry_hash"]
    assert client.get(f"/api/audit/checkpoints?after_id={checkpoint['id']}", headers=auth()).get_json() == []
    assert client.get("/api/audit/checkpoints?after_id=-1", headers=auth()).status_code == 422

    verify = _verify(client, auth)
    assert verify["ok"] is True and verify["entries"] == 4 and verify["mode"] == "incremental"
    assert verify["from_checkpoint"] == checkpoint and verify["verified_entries"] == 1


def test_a_forged_checkpoint_is_reported(migrated_database, app, client, auth, create_experiment):
    create_experiment()
    with _admin(migrated_database) as conn:
        entry_id, entry_hash = _head(conn)
        conn.execute(
            "INSERT INTO experiment_audit_checkpoints (entry_id, entry_hash, entries, created_at, key_id, signature) "
            "VALUES (%s, %s, 1, now(), %s, %s)", (entry_id, entry_hash, TEST_AUDIT_HMAC_KEY_ID, "0" * 64),
        )
    verify = _verify(client, auth)
    assert verify["ok"] is False and "invalid signature" in verify["reason"]


def test_deleting_an_entry_before_a_checkpoint_is_seen_incrementally(migrated_database, app, client, auth, create_experiment):
    for _ in range(3):
        create_experiment()
    with db.session_scope() as session:
        assert audit_checks.write_checkpoint(session, audit.current_keys()).written
    with _admin(migrated_database) as conn:
        first = conn.execute("SELECT min(id) FROM experiment_audit_logs").fetchone()[0]
        conn.execute("ALTER TABLE experiment_audit_logs DISABLE TRIGGER experiment_audit_logs_no_update_delete")
        try:
            conn.execute("DELETE FROM experiment_audit_logs WHERE id = %s", (first,))
        finally:
            conn.execute("ALTER TABLE experiment_audit_logs ENABLE TRIGGER experiment_audit_logs_no_update_delete")
    verify = _verify(client, auth)
    assert verify["ok"] is False and "is not what checkpoint" in verify["reason"]


def test_full_verification_runs_as_a_job_and_finds_what_the_checkpoint_hides(
    migrated_database, settings, app, client, auth, create_experiment
):
    for _ in range(3):
        create_experiment()
    with db.session_scope() as session:
        assert audit_checks.write_checkpoint(session, audit.current_keys()).written
    with _admin(migrated_database) as conn:  # rewrite an entry under the checkpoint, keeping its hash
        second = conn.execute("SELECT id FROM experiment_audit_logs ORDER BY id OFFSET 1 LIMIT 1").fetchone()[0]
        conn.execute("ALTER TABLE experiment_audit_logs DISABLE TRIGGER experiment_audit_logs_no_update_delete")
        try:
            conn.execute("UPDATE experiment_audit_logs SET actor = 'mallory' WHERE id = %s", (second,))
        finally:
            conn.execute("ALTER TABLE experiment_audit_logs ENABLE TRIGGER experiment_audit_logs_no_update_delete")
    assert _verify(client, auth)["ok"] is True  # the incremental check trusts the signed prefix

    response = client.get("/api/audit/verify?full=1", headers=auth("data_science", sub="auditor-1"))
    assert response.status_code == 202, response.get_json()
    job = response.get_json()
    assert job["status"] == "queued" and job["requested_by"] == "auditor-1"
    assert job["status_url"] == f"/api/audit/verify/{job['job_id']}"
    assert response.headers["Location"].endswith(job["status_url"])
    # The message is on the broker for the worker.
    broker = get_redis(settings.celery_broker_url)
    message = json.loads(broker.lindex("celery", 0))
    assert message["headers"]["task"] == "audit.verify_full" and job["job_id"] in message["headers"]["argsrepr"]

    audit_tasks.verify_full.run(job["job_id"])  # what the worker runs for that message
    done = client.get(job["status_url"], headers=auth()).get_json()
    assert done["status"] == "done" and done["finished_at"]
    assert done["result"]["ok"] is False and done["result"]["first_bad_id"] == second and done["result"]["mode"] == "full"
    assert audit_tasks.verify_full.run(job["job_id"])["status"] == "done"  # idempotent


def test_full_verification_checks_every_checkpoint(app, client, auth, create_experiment):
    for round_ in range(3):
        create_experiment(name=f"round {round_}")
        with db.session_scope() as session:
            assert audit_checks.write_checkpoint(session, audit.current_keys()).written
    with db.session_scope() as session:
        result = audit_checks.verify_chain(session, audit.current_keys(), full=True)
    assert result.ok and result.checkpoints_verified == 3 and result.entries == 3 and result.verified_entries == 3


def test_unknown_job_is_404_and_roles_apply(client, auth):
    assert client.get(f"/api/audit/verify/{uuid.uuid4()}", headers=auth()).status_code == 404
    assert client.get("/api/audit/verify?full=1", headers=auth("marketing")).status_code == 403
    assert client.get("/api/audit/verify?full=maybe", headers=auth()).status_code == 422


def test_a_full_verification_that_cannot_be_queued_is_a_503_and_a_failed_job(settings, app, client, auth, migrated_database):
    saved = dict(app.extensions)
    from celery import Celery

    app.extensions["audit_task_client"] = Celery("unreachable", broker="redis://127.0.0.1:1/0", set_as_current=False)
    app.extensions["audit_task_client"].conf.broker_connection_retry = False
    app.extensions["audit_task_client"].conf.broker_connection_max_retries = 0
    try:
        response = client.get("/api/audit/verify?full=1", headers=auth())
    finally:
        app.extensions.clear()
        app.extensions.update(saved)
    assert response.status_code == 503 and response.headers["Retry-After"] == "5"
    with _admin(migrated_database) as conn:
        status, error = conn.execute("SELECT status, error FROM experiment_audit_verify_jobs").fetchone()
    assert status == "failed" and error.startswith("could not queue")


def test_an_auditor_compares_held_checkpoints_with_the_platform(migrated_database, app, client, auth, create_experiment, tmp_path):
    for _ in range(3):
        create_experiment()
        with db.session_scope() as session:
            assert audit_checks.write_checkpoint(session, audit.current_keys()).written
    held = client.get("/api/audit/checkpoints", headers=auth("data_science")).get_json()
    exported = tmp_path / "held.json"
    exported.write_text(json.dumps(held))
    runner = app.test_cli_runner()
    result = runner.invoke(args=["audit", "compare-checkpoints", str(exported)])
    assert result.exit_code == 0 and "3 held checkpoint(s) match the platform" in result.output

    forged = [dict(held[0], entries=held[0]["entries"] + 1)] + held[1:]  # a copy altered by hand
    (tmp_path / "forged.json").write_text(json.dumps(forged))
    result = runner.invoke(args=["audit", "compare-checkpoints", str(tmp_path / "forged.json")])
    assert result.exit_code == 1 and "signature does not verify" in result.output

    with _admin(migrated_database) as conn:  # history rewritten: the first entry removed
        first = conn.execute("SELECT min(id) FROM experiment_audit_logs").fetchone()[0]
        conn.execute("ALTER TABLE experiment_audit_logs DISABLE TRIGGER experiment_audit_logs_no_update_delete")
        try:
            conn.execute("DELETE FROM experiment_audit_logs WHERE id = %s", (first,))
        finally:
            conn.execute("ALTER TABLE experiment_audit_logs ENABLE TRIGGER experiment_audit_logs_no_update_delete")
    result = runner.invoke(args=["audit", "compare-checkpoints", "--no-signatures", str(exported)])
    assert result.exit_code == 1
    assert f"checkpoint {held[0]['id']} (entry {first}): entry {first} is missing" in result.output
    assert "the number of entries up to it changed" in result.output
