"""The interactive API docs' scripts and styles, served from this repository (no CDN).

flask-smorest renders ``/docs`` (Swagger UI) and ``/redoc`` and points them at these
files; the versions vendored under ``web/openapi`` are listed in its README. The
Swagger validator badge is off: it would load an image from validator.swagger.io.
"""
from __future__ import annotations

from flask import Blueprint, Flask, Response, request

from core.config import PROJECT_ROOT

ASSETS = PROJECT_ROOT / "web" / "openapi"
ASSETS_URL = "/openapi-ui"

SWAGGER_UI_URL = f"{ASSETS_URL}/swagger-ui/"
REDOC_URL = f"{ASSETS_URL}/redoc/redoc.standalone.js"
SWAGGER_UI_CONFIG = {"validatorUrl": None}

# The pages' own inline script and the libraries' inline styles and blob workers are
# allowed; nothing from another origin is.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; worker-src 'self' blob:; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

blp = Blueprint("openapi_ui", __name__, static_folder=str(ASSETS), static_url_path=ASSETS_URL)

#: The pages flask-smorest serves: they get the policy above (the assets get it with them).
UI_PATHS = ("/docs", "/redoc")


def init_openapi_ui(app: Flask) -> None:
    app.register_blueprint(blp)

    @app.after_request
    def content_security_policy(response: Response) -> Response:
        if request.path in UI_PATHS or request.path.startswith(ASSETS_URL + "/"):
            response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        return response
