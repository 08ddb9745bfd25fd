"""Experiment lifecycle. Every mutation writes its audit entry in the same transaction."""
from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.errors import Conflict, Invalid, NotFound
from models import Experiment, Holdout, Variant
from models.enums import APPROVAL_CATEGORIES
from models.enums import ExperimentStatus as S
from sira.failfast import DEFAULT_GUARDRAIL_MARGIN

from . import approvals, audit, layers
from .audit import Actor

# action -> (statuses it may start from, status it leads to)
TRANSITIONS: dict[str, tuple[frozenset[str], str]] = {
    "start": (frozenset({S.DRAFT.value, S.STOPPED.value}), S.RUNNING.value),
    "stop": (frozenset({S.RUNNING.value}), S.STOPPED.value),
    "archive": (frozenset({S.DRAFT.value, S.STOPPED.value}), S.ARCHIVED.value),
}
# Analysis settings change how results are read, never who sees what: editable at any time.
EDITABLE_AFTER_DRAFT = frozenset({"name", "description", "reporting_currency", "value_cap_percentile"})
# A running experiment may still have its scheduled stop moved (or cleared).
EDITABLE_WHILE_RUNNING = EDITABLE_AFTER_DRAFT | {"end_at"}
DESIGN_COLUMNS = ("category", "requires_approval", "layer_id", "layer_allocation", "start_at", "end_at", "allowed_services")


def snapshot(experiment: Experiment) -> dict[str, Any]:
    """The experiment as plain JSON: what the audit log records as before/after."""
    return {
        "id": str(experiment.id),
        "name": experiment.name,
        "description": experiment.description,
        "status": experiment.status,
        "mode": experiment.mode,
        "coverage": float(experiment.coverage),
        "primary_metric": experiment.primary_metric,
        "targeting": experiment.targeting,
        "fail_fast": experiment.fail_fast,
        "guardrails": experiment.guardrails,
        "bandit": experiment.bandit,
        "attribution_window_s": experiment.attribution_window_s,
        "reporting_currency": experiment.reporting_currency,
        "value_cap_percentile": float(experiment.value_cap_percentile) if experiment.value_cap_percentile is not None else None,
        "version": experiment.version,
        "category": experiment.category,
        "requires_approval": experiment.requires_approval,
        "layer_id": str(experiment.layer_id) if experiment.layer_id else None,
        "layer_allocation": float(experiment.layer_allocation) if experiment.layer_allocation is not None else None,
        "layer_range": (
            [experiment.layer_range_start, experiment.layer_range_end] if experiment.layer_range_start is not None else None
        ),
        "holdout_ids": [str(h.id) for h in experiment.holdouts],
        "start_at": experiment.start_at.isoformat() if experiment.start_at else None,
        "end_at": experiment.end_at.isoformat() if experiment.end_at else None,
        "allowed_services": list(experiment.allowed_services) if experiment.allowed_services is not None else None,
        "variants": [
            {
                "id": str(v.id),
                "name": v.name,
                "config": v.config,
                "traffic_share": float(v.traffic_share),
                "is_control": v.is_control,
                "paused": v.paused,
            }
            for v in experiment.variants
        ],
    }


def get_experiment(session: Session, experiment_id: uuid.UUID, *, for_update: bool = False) -> Experiment:
    query = select(Experiment).where(Experiment.id == experiment_id)
    if for_update:
        query = query.with_for_update()
    experiment = session.execute(query).scalar_one_or_none()
    if experiment is None:
        raise NotFound(f"experiment {experiment_id} not found")
    return experiment


def list_experiments(
    session: Session,
    *,
    status: str | None,
    offset: int,
    limit: int,
    search: str | None = None,
    mode: str | None = None,
    created_by: str | None = None,
    layer_id: uuid.UUID | None = None,
) -> tuple[list[Experiment], int]:
    """Newest first; ``search`` matches a case-insensitive substring of the name."""
    conditions = []
    if status:
        conditions.append(Experiment.status == status)
    if mode:
        conditions.append(Experiment.mode == mode)
    if created_by:
        conditions.append(Experiment.created_by == created_by)
    if layer_id:
        conditions.append(Experiment.layer_id == layer_id)
    if search:
        escaped = search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        conditions.append(Experiment.name.ilike(f"%{escaped}%", escape="\\"))
    query = select(Experiment).where(*conditions)
    count = select(func.count()).select_from(Experiment).where(*conditions)
    total = session.execute(count).scalar_one()
    rows = session.execute(query.order_by(Experiment.created_at.desc(), Experiment.id).offset(offset).limit(limit))
    return list(rows.scalars()), total


def _build_variants(specs: list[dict[str, Any]]) -> list[Variant]:
    return [
        Variant(
            name=spec["name"],
            config=spec.get("config") or {},
            traffic_share=spec["traffic_share"],
            is_control=bool(spec.get("is_control")),
            position=position,
        )
        for position, spec in enumerate(specs)
    ]


def _settings_columns(data: dict[str, Any]) -> dict[str, Any]:
    """Map API fields onto columns (guardrails + guardrail_action share one JSONB column)."""
    settings: tuple[str, ...] = (
        "name", "description", "targeting", "mode", "coverage", "primary_metric", "fail_fast", "bandit",
        "attribution_window_s", "reporting_currency", "value_cap_percentile",
    )
    columns = {k: data[k] for k in settings if k in data}
    columns.update({k: data[k] for k in DESIGN_COLUMNS if k in data})
    return columns


def _holdouts(session: Session, holdout_ids: list[uuid.UUID]) -> list[Holdout]:
    found = {h.id: h for h in session.execute(select(Holdout).where(Holdout.id.in_(holdout_ids))).scalars()}
    missing = [str(i) for i in holdout_ids if i not in found]
    if missing:
        raise Invalid("unknown holdout", errors={"json": {"holdout_ids": [f"no holdout {m}" for m in missing]}})
    return [found[i] for i in holdout_ids]


def _check_design(session: Session, experiment: Experiment, data: dict[str, Any], *, approvals_required: bool) -> None:
    """Cross-field rules of the design fields, against the experiment as it will be."""
    layer_id = data.get("layer_id", experiment.layer_id)
    allocation = data.get("layer_allocation", experiment.layer_allocation)
    if layer_id is not None:
        layers.require_layer(session, layer_id)
        if allocation is None:
            raise Invalid("layer_allocation is required with a layer", errors={"json": {"layer_allocation": ["required when layer_id is set"]}})
    elif allocation is not None:
        raise Invalid("layer_allocation needs a layer", errors={"json": {"layer_allocation": ["only with a layer_id"]}})
    category = data.get("category", experiment.category)
    if category in APPROVAL_CATEGORIES or approvals_required:
        if data.get("requires_approval") is False:
            reason = f"category {category!r}" if category in APPROVAL_CATEGORIES else "APPROVALS_REQUIRED=1"
            raise Invalid(
                "approval cannot be switched off",
                errors={"json": {"requires_approval": [f"always true here ({reason})"]}},
            )
        experiment.requires_approval = True
    start_at = data.get("start_at", experiment.start_at)
    end_at = data.get("end_at", experiment.end_at)
    if start_at is not None and end_at is not None and end_at <= start_at:
        raise Invalid("end_at must be after start_at", errors={"json": {"end_at": ["must be after start_at"]}})


def create_experiment(session: Session, data: dict[str, Any], actor: Actor, *, approvals_required: bool = False) -> Experiment:
    experiment = Experiment(
        id=uuid.uuid4(),
        status=S.DRAFT.value,
        created_by=actor.sub,
        guardrails={"event_types": data["guardrails"], "action": data["guardrail_action"], "margin": data.get("guardrail_margin", DEFAULT_GUARDRAIL_MARGIN)},
        variants=_build_variants(data["variants"]),
        version=1,
        **_settings_columns(data),
    )
    _check_design(session, experiment, data, approvals_required=approvals_required)
    if data.get("holdout_ids"):
        experiment.holdouts = _holdouts(session, data["holdout_ids"])
    session.add(experiment)
    session.flush()
    session.refresh(experiment)
    audit.record(session, actor=actor, action="create", experiment_id=experiment.id, after=snapshot(experiment))
    return experiment


def update_experiment(
    session: Session, experiment_id: uuid.UUID, changes: dict[str, Any], actor: Actor, *, approvals_required: bool = False
) -> Experiment:
    experiment = get_experiment(session, experiment_id, for_update=True)
    if experiment.status != S.DRAFT.value:
        editable = EDITABLE_WHILE_RUNNING if experiment.status == S.RUNNING.value else EDITABLE_AFTER_DRAFT
        frozen = sorted(set(changes) - editable)
        if frozen:
            raise Conflict(
                f"experiment is {experiment.status}: only name, description and the analysis settings "
                f"(reporting_currency, value_cap_percentile) can change; "
                f"not {', '.join(frozen)} (stop and clone it, or edit while draft)"
            )
    if not changes:
        return experiment
    before = snapshot(experiment)
    _check_design(session, experiment, changes, approvals_required=approvals_required)
    for key, value in _settings_columns(changes).items():
        setattr(experiment, key, value)
    if "holdout_ids" in changes:
        experiment.holdouts = _holdouts(session, changes["holdout_ids"])
    if "guardrails" in changes or "guardrail_action" in changes or "guardrail_margin" in changes:
        experiment.guardrails = {
            "event_types": changes.get("guardrails", experiment.guardrails.get("event_types", [])),
            "action": changes.get("guardrail_action", experiment.guardrails.get("action")),
            "margin": changes.get("guardrail_margin", experiment.guardrails.get("margin", DEFAULT_GUARDRAIL_MARGIN)),
        }
    if "variants" in changes:
        experiment.variants.clear()
        session.flush()
        experiment.variants.extend(_build_variants(changes["variants"]))
    experiment.version += 1
    experiment.updated_at = datetime.now(timezone.utc)
    session.flush()
    session.refresh(experiment)
    after = snapshot(experiment)
    audit.record(session, actor=actor, action="update", experiment_id=experiment.id, before=before, after=after)
    if experiment.status == S.DRAFT.value and _differs(before, after):
        # What was approved is not what the experiment now is.
        approvals.invalidate(session, experiment, actor)
    return experiment


def _differs(before: dict[str, Any], after: dict[str, Any]) -> bool:
    """A real change: something other than the version (variants get new ids when replaced)."""
    def essence(document: dict[str, Any]) -> dict[str, Any]:
        variants = [{k: v for k, v in variant.items() if k != "id"} for variant in document["variants"]]
        return {**{k: v for k, v in document.items() if k != "version"}, "variants": variants}

    return essence(before) != essence(after)


def transition(
    session: Session, experiment_id: uuid.UUID, action: str, actor: Actor, *, approvals_required: bool = False
) -> Experiment:
    sources, target = TRANSITIONS[action]
    experiment = get_experiment(session, experiment_id, for_update=True)
    if experiment.status not in sources:
        raise Conflict(
            f"cannot {action} an experiment that is {experiment.status} "
            f"(allowed from: {', '.join(sorted(sources))})"
        )
    if action == "start":
        approvals.check_can_start(session, experiment, approvals_required=approvals_required)
    before = snapshot(experiment)
    if action == "start":
        layers.allocate(session, experiment)
    now = datetime.now(timezone.utc)
    experiment.status = target
    if action == "start":
        experiment.started_at = experiment.started_at or now
        experiment.stopped_at = None
    elif action == "stop":
        experiment.stopped_at = now
    if action in ("stop", "archive"):
        layers.release(experiment)
    experiment.version += 1
    experiment.updated_at = now
    session.flush()
    audit.record(session, actor=actor, action=action, experiment_id=experiment.id, before=before, after=snapshot(experiment))
    return experiment


def delete_experiment(session: Session, experiment_id: uuid.UUID, actor: Actor) -> None:
    experiment = get_experiment(session, experiment_id, for_update=True)
    if experiment.status != S.DRAFT.value:
        raise Conflict(f"only draft experiments can be deleted; this one is {experiment.status} (archive it instead)")
    before = snapshot(experiment)
    session.delete(experiment)
    session.flush()
    audit.record(session, actor=actor, action="delete", experiment_id=experiment_id, before=before)


def set_variant_paused(
    session: Session,
    experiment_id: uuid.UUID,
    variant_id: uuid.UUID,
    *,
    paused: bool,
    actor: Actor,
    reason: str | None = None,
) -> Experiment:
    """Pause or resume one arm: a paused arm receives no new users (existing ones keep it)."""
    experiment = get_experiment(session, experiment_id, for_update=True)
    if experiment.status == S.ARCHIVED.value:
        raise Conflict("experiment is archived")
    variant = next((v for v in experiment.variants if v.id == variant_id), None)
    if variant is None:
        raise NotFound(f"variant {variant_id} not found in experiment {experiment_id}")
    if variant.paused == paused:
        return experiment
    if paused and all(v.paused for v in experiment.variants if v.id != variant_id):
        raise Conflict("cannot pause the last active variant; stop the experiment instead")
    before = snapshot(experiment)
    variant.paused = paused
    variant.paused_reason = reason if paused else None
    experiment.version += 1
    experiment.updated_at = datetime.now(timezone.utc)
    session.flush()
    audit.record(
        session,
        actor=actor,
        action="pause_variant" if paused else "resume_variant",
        experiment_id=experiment.id,
        before=before,
        after=snapshot(experiment),
    )
    return experiment
