"""JSON logs: the four fields, request ids on API lines, secrets masked, text mode."""
from __future__ import annotations

import io
import json
import logging
import subprocess
import sys

import pytest

from core.config import PROJECT_ROOT
from core.logs import handler, redact


@pytest.fixture
def captured():
    """Every record through the JSON handler of an API process, into a buffer."""
    stream = io.StringIO()
    out = handler("json", "api", stream)
    root = logging.getLogger()
    previous = root.level
    root.addHandler(out)
    root.setLevel(logging.INFO)
    try:
        yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    finally:
        root.removeHandler(out)
        root.setLevel(previous)


def test_api_lines_are_json_with_the_request_id(client, auth, captured):
    response = client.get("/api/experiments", headers={**auth(), "X-Request-ID": "req-logs-1"})
    assert response.status_code == 200
    lines = captured()
    access = [line for line in lines if line["logger"] == "api.access"]
    assert len(access) == 1
    line = access[0]
    assert {"timestamp", "level", "logger", "message", "request_id"} <= set(line)
    assert line["request_id"] == "req-logs-1" and line["level"] == "INFO"
    assert line["route"] == "/api/experiments" and line["status"] == 200 and line["duration_ms"] >= 0
    assert line["timestamp"].endswith("+00:00")


def test_a_forged_request_id_is_replaced(client, auth, captured):
    response = client.get("/api/experiments", headers={**auth(), "X-Request-ID": 'x" \\n{"level": "ERROR"'})
    request_id = response.headers["X-Request-ID"]
    assert request_id != 'x" \\n{"level": "ERROR"' and len(request_id) == 32
    assert [line["request_id"] for line in captured() if line["logger"] == "api.access"] == [request_id]


def test_tokens_and_passwords_never_reach_the_output(client, auth, captured, make_token):
    token = make_token("ops_admin")
    client.get("/api/experiments", headers={"Authorization": f"Bearer {token}"})
    client.get("/api/experiments", headers={"Authorization": f"Bearer {token}x"})  # refused: 401
    log = logging.getLogger("tests.secrets")
    log.warning("connecting to postgresql://molam_app:s3cret-Pa55@db:5432/molam and redis://:r3dis-Pa55@redis:6379/0")
    log.warning("header was %s", f"Bearer {token}")
    log.warning("config: password=hunter2 requirepass hunter3 token: %s", token)
    try:
        raise RuntimeError(f"failed with key -----BEGIN PRIVATE KEY-----\nMIIEv\n-----END PRIVATE KEY----- and {token}")
    except RuntimeError:
        log.exception("boom")
    text = json.dumps(captured())
    for secret in (token, token.split(".")[1], "s3cret-Pa55", "r3dis-Pa55", "hunter2", "MIIEv"):
        assert secret not in text
    assert "postgresql://molam_app:***@db:5432/molam" in text


def test_redaction_leaves_ordinary_text_alone():
    message = "drained 5000 events for experiment 0b7c-... in 0.12 s (request ids: track-1, track-2)"
    assert redact(message) == message


def test_text_format_for_humans():
    stream = io.StringIO()
    out = handler("text", "worker", stream)
    record = logging.LogRecord("tasks.ingest", logging.WARNING, __file__, 1, "drain paused %s", ("2 s",), None)
    out.handle(record)
    line = stream.getvalue().strip()
    assert "WARNING" in line and "[worker] tasks.ingest: drain paused 2 s" in line and not line.startswith("{")


def test_env_file_is_read_and_the_environment_wins(tmp_path):
    env_file = tmp_path / "custom.env"
    env_file.write_text("PORT=4321\nLOG_FORMAT=text\nSIRA_RECOMPUTE_INTERVAL=7\n")
    program = "from core.config import load_settings; s = load_settings(); print(s.port, s.log_format, s.recompute_interval_s)"
    base = {"PATH": "/usr/bin:/bin", "MOLAM_ENV_FILE": str(env_file), "MOLAM_VAR_DIR": str(tmp_path)}
    run = lambda env: subprocess.run(
        [sys.executable, "-c", program], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    assert run(base) == ["4321", "text", "7.0"]
    assert run({**base, "PORT": "5000"}) == ["5000", "text", "7.0"]
    assert run({**base, "MOLAM_ENV_FILE": ""}) == ["3010", "json", "30.0"]


@pytest.mark.parametrize("name,value", [("LOG_FORMAT", "xml"), ("LOG_LEVEL", "chatty"), ("WORKER_METRICS_PORT", "x")])
def test_bad_logging_and_metrics_settings_are_refused(monkeypatch, name, value):
    from core.config import ConfigError, load_settings

    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=name):
        load_settings()
