"""The API with the engine's ``pool_pre_ping`` off: only for measuring what the ping costs.

``gunicorn bench.api_without_pre_ping:app`` (``bench_assign.py --without-pre-ping``). Production
keeps core/db.py's setting; see bench/README.md ("Assignment") for the figures.
"""
from api import create_app
from core import db
from core.config import load_settings

app = create_app()
db.init_engine(load_settings().database_url, pool_pre_ping=False)
