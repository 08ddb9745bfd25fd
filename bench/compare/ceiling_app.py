"""The ceiling: a bare Flask endpoint doing one Redis GET and one SET, nothing else.

Served by the side-by-side harness under the project's own gunicorn settings
(``gunicorn.conf.py``: gthread workers x threads, keep-alive) and the project's
virtualenv (same Flask, gunicorn, redis-py and hiredis), so the ratio of a project
endpoint to this one is what the project's work costs beyond the unavoidable.

GET /redis -> one GET + one SET on a random key of 100,000 (``REDIS_URL``).
"""
from __future__ import annotations

import os
import random

import redis
from flask import Flask, jsonify

app = Flask(__name__)
_client = redis.Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/12"))


@app.get("/hello")
def hello():
    return jsonify(hello="world")


@app.get("/redis")
def redis_get_set():
    key = f"flaskbench:{random.randint(1, 100000)}"
    old = _client.get(key)
    _client.set(key, b"1")
    return jsonify(key=key, seen=old is not None)
