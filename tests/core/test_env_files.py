"""Which servers a command talks to: the environment, then .env, then what `make run` started."""
from __future__ import annotations

import subprocess
import sys

from core.config import PROJECT_ROOT

PROGRAM = "from core.config import load_settings; s = load_settings(); print(s.database_url, s.redis_url)"


def run(env: dict[str, str]) -> list[str]:
    return subprocess.run(
        [sys.executable, "-c", PROGRAM], cwd=PROJECT_ROOT, env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True, text=True, check=True,
    ).stdout.split()


def test_commands_reach_the_servers_make_run_started(tmp_path):
    (tmp_path / "embedded.env").write_text(
        "DATABASE_URL=postgresql+psycopg://postgres@/molam_experiments?host=/x/pg\nREDIS_URL=redis://127.0.0.1:6390/0\n"
    )
    env_file = tmp_path / ".env"
    env_file.write_text("PORT=3999\n")
    base = {"MOLAM_VAR_DIR": str(tmp_path), "MOLAM_ENV_FILE": str(env_file)}
    assert run(base) == ["postgresql+psycopg://postgres@/molam_experiments?host=/x/pg", "redis://127.0.0.1:6390/0"]
    # .env and the environment come first.
    env_file.write_text("REDIS_URL=redis://cache.internal:6379/0\n")
    assert run(base)[1] == "redis://cache.internal:6379/0"
    assert run({**base, "DATABASE_URL": "postgresql://db/x"})[0] == "postgresql+psycopg://db/x"
    # With env files disabled (the tests' own setting), neither is read.
    assert run({**base, "MOLAM_ENV_FILE": ""}) == ["postgresql+psycopg://postgres@127.0.0.1:5432/molam_experiments",
                                                   "redis://127.0.0.1:6379/0"]


def test_make_run_forgets_a_previous_runs_servers(tmp_path, monkeypatch):
    from scripts import run as make_run

    stale = tmp_path / "embedded.env"
    stale.write_text("DATABASE_URL=postgresql://gone/x\n")
    monkeypatch.setattr(make_run, "EMBEDDED_ENV_FILE", stale)
    monkeypatch.setenv("DATABASE_URL", "postgresql://gone/x")
    monkeypatch.setenv("REDIS_URL", "redis://kept:6379/0")
    make_run.forget_previous_embedded()
    import os

    assert "DATABASE_URL" not in os.environ and os.environ["REDIS_URL"] == "redis://kept:6379/0"
    assert not stale.exists()
