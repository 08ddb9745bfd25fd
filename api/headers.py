"""Security headers on every response, whatever produced it (a view, an error handler, a static file).

The API answers JSON and the pages it serves (``/ops``, ``/docs``, ``/redoc``) load
nothing from other origins, so no response needs to be sniffed, framed or to leak
its URL to another site. A blueprint may set a stricter header of its own (the
dashboard's ``Content-Security-Policy``); these are only defaults.
"""
from __future__ import annotations

from flask import Flask, Response

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


def init_security_headers(app: Flask) -> None:
    @app.after_request
    def add_security_headers(response: Response) -> Response:
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response
