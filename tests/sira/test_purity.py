"""sira is pure computation: importing all of it must not pull in the web stack,
the database, the cache or the task queue."""

import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import sira

FORBIDDEN = ("flask", "sqlalchemy", "redis", "celery", "psycopg", "psycopg2", "kombu", "werkzeug")
ROOT = Path(__file__).resolve().parents[2]


def test_sira_imports_no_infrastructure():
    modules = ["sira"] + [f"sira.{m.name}" for m in pkgutil.iter_modules(sira.__path__)]
    assert len(modules) >= 6
    script = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True
    )
    loaded = set(json.loads(completed.stdout))
    assert "sira" in loaded
    assert loaded.isdisjoint(FORBIDDEN), sorted(loaded & set(FORBIDDEN))
