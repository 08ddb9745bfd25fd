"""The Ops dashboard: a single-page app served at ``/ops`` (no build step, no CDN).

The page, its ES modules and its stylesheet live under ``web/ops``. The browser
talks to the same ``/api`` endpoints as every other client with the Molam ID
token the operator pastes in; nothing here bypasses ``@require``. Two small JSON
documents let the page mirror the server instead of copying it: the RBAC matrix
(generated from :data:`core.rbac.MATRIX`, so roles hide the buttons they cannot
use) and the closed vocabularies of :mod:`models.enums` (for the creation form).
"""
from __future__ import annotations

from flask import Blueprint, Response, jsonify, render_template

from core import rbac
from core.config import PROJECT_ROOT
from models import enums
from sira.bandit import BanditConfig
from sira.failfast import DEFAULT_FAIL_FAST_ACTION, DEFAULT_GUARDRAIL_ACTION, FailFastConfig

WEB_ROOT = PROJECT_ROOT / "web"

blp = Blueprint(
    "ops",
    __name__,
    url_prefix="/ops",
    template_folder=str(WEB_ROOT),
    static_folder=str(WEB_ROOT / "ops" / "static"),
    static_url_path="/static",
)

# Everything the page needs comes from this origin; inline script and style are refused,
# so a value rendered by mistake as markup could not run.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


@blp.after_request
def content_security_policy(response: Response) -> Response:
    # nosniff, DENY framing and no-referrer come with every response (api.headers).
    response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
    return response


@blp.get("")
@blp.get("/")
def index() -> Response:
    response = Response(render_template("ops/index.html"), mimetype="text/html")
    # The page carries no data; always revalidate so a deploy is picked up at once.
    response.headers["Cache-Control"] = "no-cache"
    return response


def rbac_document() -> dict:
    """The RBAC matrix as JSON: ``{"actions": {action: [roles]}, "service_role": {...}}``."""
    return {
        "actions": {action: sorted(roles) for action, roles in rbac.MATRIX.items()},
        "service_role": {"placeholder": rbac.SERVICE, "suffix": rbac.SERVICE.removeprefix("*")},
    }


@blp.get("/rbac.json")
def rbac_json() -> Response:
    return jsonify(rbac_document())


def vocabulary_document() -> dict:
    return {
        "statuses": list(enums.STATUSES),
        "modes": list(enums.MODES),
        "event_types": list(enums.EVENT_TYPES),
        "fail_fast_rules": list(enums.FAIL_FAST_RULES),
        "fail_fast_actions": list(enums.FAIL_FAST_ACTIONS),
        "guardrail_actions": list(enums.GUARDRAIL_ACTIONS),
        "default_guardrails": list(enums.DEFAULT_GUARDRAILS),
        "targeting_list_keys": list(enums.TARGETING_LIST_KEYS),
        "defaults": sira_defaults(),
    }


def sira_defaults() -> dict:
    """SIRA's defaults as the create form pre-fills them (from ``sira``'s config classes)."""
    fail_fast, bandit = FailFastConfig(), BanditConfig()
    return {
        "fail_fast": {"rule": fail_fast.rule, "min_samples": fail_fast.min_samples,
                      "threshold": fail_fast.threshold, "action": DEFAULT_FAIL_FAST_ACTION},
        "guardrail_action": DEFAULT_GUARDRAIL_ACTION,
        "bandit": {"min_samples": bandit.min_samples, "floor": bandit.floor},
    }


@blp.get("/vocabulary.json")
def vocabulary_json() -> Response:
    return jsonify(vocabulary_document())
