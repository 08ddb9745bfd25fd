"""The benchmark's baseline: a bare Flask endpoint doing one Redis GET and one SET.

Served by gunicorn with exactly the settings used for the API, so the ratio of the
two request rates measures what the assignment path costs beyond the unavoidable
(HTTP parsing, a JSON body, Redis round trips).
"""
from __future__ import annotations

import os

import redis
from flask import Flask, jsonify, request

app = Flask(__name__)
_client = redis.Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))


@app.post("/baseline")
def baseline():
    body = request.get_json()
    key = f"bench:baseline:{body['molam_id']}"
    value = _client.get(key)
    _client.set(key, body["molam_id"])
    return jsonify(molam_id=body["molam_id"], seen=value is not None)
