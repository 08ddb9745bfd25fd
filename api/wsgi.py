"""WSGI entry point for gunicorn: ``gunicorn api.wsgi:app``."""
from api import create_app
from core.config import load_settings
from core.logs import configure_logging

_settings = load_settings()
configure_logging(_settings.log_format, _settings.log_level, process="api")
app = create_app(_settings)
