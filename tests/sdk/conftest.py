"""The API served over real HTTP (werkzeug, threaded) for the SDK client, and a
fault-injecting proxy in front of it for the failure-mode tests."""
from __future__ import annotations

import http.client
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from werkzeug.serving import make_server


@pytest.fixture
def live_api(app) -> Iterator[str]:
    # A stream whose client left holds its slot until the next heartbeat write fails;
    # the threaded test server has threads to spare, so do not let one test's departed
    # stream push the next test's client into its polling fallback.
    slots = app.extensions["sdk_stream_slots"]
    limit, slots.limit = slots.limit, 64
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="live-api", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        slots.limit = limit


class FaultyProxy:
    """Forwards requests to the API; can refuse everything or fail chosen paths with 503."""

    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.down = False
        self.fail: dict[str, int] = {}
        self.requests: list[str] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _forward(self) -> None:
                path = self.path.split("?")[0]
                proxy.requests.append(f"{self.command} {path}")
                if proxy.down:
                    self.close_connection = True
                    self.connection.close()
                    return
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                if proxy.fail.get(path, 0) > 0:
                    proxy.fail[path] -= 1
                    payload = b'{"code":503,"status":"Service Unavailable","message":"injected"}'
                    self.send_response(503)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                upstream = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=10)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                upstream.request(self.command, self.path, body=body, headers=headers)
                response = upstream.getresponse()
                data = response.read()
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                upstream.close()

            do_GET = _forward
            do_POST = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, name="faulty-proxy", daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def faulty_proxy(live_api: str) -> Iterator[FaultyProxy]:
    proxy = FaultyProxy(int(live_api.rsplit(":", 1)[1]))
    try:
        yield proxy
    finally:
        proxy.close()


@pytest.fixture
def service_token(make_token) -> str:
    return make_token("pay_module", "pay-svc")
