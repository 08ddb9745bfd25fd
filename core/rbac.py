"""The RBAC matrix, in one place.

Service roles are any role named ``<something>_module`` (``pay_module``,
``connect_module``, ...): Molam's services calling assign and track.
"""
from __future__ import annotations

import re
from collections.abc import Iterable

OPS_ADMIN = "ops_admin"
MARKETING = "marketing"
DATA_SCIENCE = "data_science"
SERVICE = "*_module"  # placeholder meaning "any service role"

HUMAN_ROLES = (OPS_ADMIN, MARKETING, DATA_SCIENCE)

MATRIX: dict[str, frozenset[str]] = {
    "create": frozenset({OPS_ADMIN, MARKETING}),
    "update": frozenset({OPS_ADMIN, MARKETING, DATA_SCIENCE}),
    "start": frozenset({OPS_ADMIN, MARKETING, DATA_SCIENCE}),
    "stop": frozenset({OPS_ADMIN, MARKETING, DATA_SCIENCE}),
    "pause_variant": frozenset({OPS_ADMIN, MARKETING, DATA_SCIENCE}),
    "archive": frozenset({OPS_ADMIN}),
    "delete": frozenset({OPS_ADMIN}),
    "list": frozenset({OPS_ADMIN, MARKETING, DATA_SCIENCE}),
    "get": frozenset({OPS_ADMIN, MARKETING, DATA_SCIENCE}),
    "results": frozenset({OPS_ADMIN, MARKETING, DATA_SCIENCE}),
    "reports": frozenset({OPS_ADMIN, MARKETING, DATA_SCIENCE}),
    "insights": frozenset({OPS_ADMIN, DATA_SCIENCE}),
    "audit": frozenset({OPS_ADMIN, DATA_SCIENCE}),
    "audit_checkpoints": frozenset({OPS_ADMIN, DATA_SCIENCE}),
    "export": frozenset({OPS_ADMIN, DATA_SCIENCE}),
    "fx_rates": frozenset({OPS_ADMIN, DATA_SCIENCE}),
    "assign": frozenset({OPS_ADMIN, SERVICE}),
    "track": frozenset({OPS_ADMIN, SERVICE}),
    # SDK clients: download definitions and follow their changes; upload exposures.
    "sdk_definitions": frozenset({OPS_ADMIN, SERVICE}),
    "record_exposures": frozenset({SERVICE}),
    # Experiment design and governance.
    "create_layer": frozenset({OPS_ADMIN, MARKETING}),
    "list_layers": frozenset({OPS_ADMIN, MARKETING, DATA_SCIENCE}),
    "create_holdout": frozenset({OPS_ADMIN, DATA_SCIENCE}),
    "list_holdouts": frozenset({OPS_ADMIN, MARKETING, DATA_SCIENCE}),
    "holdout_results": frozenset({OPS_ADMIN, MARKETING, DATA_SCIENCE}),
    # Whoever may create or update an experiment may ask for its approval; only an
    # ops_admin other than the requester may decide (the second rule is the service's).
    "request_approval": frozenset({OPS_ADMIN, MARKETING, DATA_SCIENCE}),
    "approve": frozenset({OPS_ADMIN}),
    "reject": frozenset({OPS_ADMIN}),
    "list_approvals": frozenset({OPS_ADMIN, MARKETING, DATA_SCIENCE}),
    "schedules": frozenset({OPS_ADMIN, MARKETING, DATA_SCIENCE}),
    "plan": frozenset({OPS_ADMIN, MARKETING, DATA_SCIENCE}),
}


def is_service_role(role: str) -> bool:
    return role.endswith("_module") and len(role) > len("_module")


#: How a service role may be spelled where it is stored (an experiment's ``allowed_services``).
SERVICE_ROLE_NAME = re.compile(r"[a-z][a-z0-9_]{0,56}_module")


def is_service_role_name(role: object) -> bool:
    """A service role as Molam ID issues them: lower-case ``<product>_module``, at most 64 characters."""
    return isinstance(role, str) and SERVICE_ROLE_NAME.fullmatch(role) is not None


def service_permitted(allowed_services: Iterable[str] | None, roles: Iterable[str]) -> bool:
    """May a caller with ``roles`` assign and track on an experiment limited to ``allowed_services``?

    ``None`` means every service. The restriction scopes service roles only: a caller
    holding any other role that the RBAC matrix lets assign (``ops_admin``) is not limited.
    """
    if allowed_services is None:
        return True
    for role in roles:
        if role in allowed_services or not is_service_role(role):
            return True
    return False


def allowed(action: str, roles: Iterable[str]) -> bool:
    permitted = MATRIX[action]
    for role in roles:
        if role in permitted:
            return True
        if SERVICE in permitted and is_service_role(role):
            return True
    return False
