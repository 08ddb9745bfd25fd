"""Layers: mutually exclusive experiments sharing one hash space of 10,000 buckets.

A running experiment in a layer owns the half-open bucket range ``[start, end)`` of
``round(layer_allocation * 100)`` buckets; the range is chosen when the experiment
starts (first fit, lowest free buckets first) and released when it stops or is
archived. A user's layer bucket (:func:`services.experiments.buckets.layer_bucket`)
falls in at most one range, so they are eligible for at most one running experiment
of the layer. Starting takes the layer row ``FOR UPDATE`` so that two concurrent
starts see each other's ranges; the exclusion constraint
``ex_experiments_layer_range_disjoint`` makes an overlap impossible regardless.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.errors import Conflict, Invalid, NotFound
from models import Experiment, Layer
from models.enums import ExperimentStatus

from . import audit
from .audit import Actor
from .buckets import BUCKETS, percent_to_buckets


def _layer_snapshot(layer: Layer) -> dict[str, Any]:
    return {"id": str(layer.id), "name": layer.name, "description": layer.description}


def create_layer(session: Session, data: dict[str, Any], actor: Actor) -> Layer:
    if session.execute(select(Layer.id).where(Layer.name == data["name"])).first() is not None:
        raise Conflict(f"a layer named {data['name']!r} already exists", errors={"json": {"name": ["already taken"]}})
    layer = Layer(id=uuid.uuid4(), name=data["name"], description=data.get("description", ""), created_by=actor.sub)
    session.add(layer)
    try:
        session.flush()
    except IntegrityError as exc:  # a concurrent create took the name
        session.rollback()
        raise Conflict(f"a layer named {data['name']!r} already exists") from exc
    audit.record(session, actor=actor, action="create_layer", experiment_id=None, after=_layer_snapshot(layer))
    return layer


def get_layer(session: Session, layer_id: uuid.UUID, *, for_update: bool = False) -> Layer:
    query = select(Layer).where(Layer.id == layer_id)
    if for_update:
        query = query.with_for_update()
    layer = session.execute(query).scalar_one_or_none()
    if layer is None:
        raise NotFound(f"layer {layer_id} not found")
    return layer


def require_layer(session: Session, layer_id: uuid.UUID) -> None:
    """422 naming the field when an experiment names a layer that does not exist."""
    if session.get(Layer, layer_id) is None:
        raise Invalid(f"layer {layer_id} not found", errors={"json": {"layer_id": [f"no layer {layer_id}"]}})


def list_layers(session: Session) -> list[Layer]:
    return list(session.execute(select(Layer).order_by(Layer.created_at, Layer.id)).scalars())


@dataclass(frozen=True)
class Gap:
    start: int
    end: int

    @property
    def size(self) -> int:
        return self.end - self.start


def _owned(session: Session, layer_id: uuid.UUID, *, exclude: uuid.UUID | None = None) -> list[Experiment]:
    query = (
        select(Experiment)
        .where(Experiment.layer_id == layer_id, Experiment.layer_range_start.is_not(None))
        .order_by(Experiment.layer_range_start)
    )
    if exclude is not None:
        query = query.where(Experiment.id != exclude)
    return list(session.execute(query).scalars())


def _owned_ranges(owners: list[Experiment]) -> list[tuple[int, int]]:
    """The bucket ranges of experiments returned by :func:`_owned` (both ends are set)."""
    return [(e.layer_range_start, e.layer_range_end) for e in owners
            if e.layer_range_start is not None and e.layer_range_end is not None]


def _percent(value: Decimal | None) -> float:
    return float(value) if value is not None else 0.0


def free_gaps(ranges: list[tuple[int, int]]) -> list[Gap]:
    """The free stretches of the layer between sorted, disjoint owned ranges."""
    gaps, cursor = [], 0
    for start, end in sorted(ranges):
        if start > cursor:
            gaps.append(Gap(cursor, start))
        cursor = max(cursor, end)
    if cursor < BUCKETS:
        gaps.append(Gap(cursor, BUCKETS))
    return gaps


def usage(session: Session, layer: Layer) -> dict[str, Any]:
    """What the dashboard and ``GET /api/layers/{id}`` show: who owns which buckets, and what is free."""
    owners = _owned(session, layer.id)
    gaps = free_gaps(_owned_ranges(owners))
    free = sum(g.size for g in gaps)
    members = list(
        session.execute(
            select(Experiment.id, Experiment.name, Experiment.status, Experiment.layer_allocation)
            .where(Experiment.layer_id == layer.id)
            .order_by(Experiment.created_at)
        )
    )
    return {
        "ranges": [
            {
                "experiment_id": e.id,
                "experiment_name": e.name,
                "start": e.layer_range_start,
                "end": e.layer_range_end,
                "allocation": _percent(e.layer_allocation),
            }
            for e in owners
        ],
        "free_percent": free / 100,
        "largest_free_percent": max((g.size for g in gaps), default=0) / 100,
        "free_ranges": [{"start": g.start, "end": g.end} for g in gaps],
        "experiments": [
            {"id": row.id, "name": row.name, "status": row.status, "allocation": _percent(row.layer_allocation)}
            for row in members
        ],
    }


def allocate(session: Session, experiment: Experiment) -> None:
    """Give a starting experiment its bucket range, or refuse (409) saying how much is free."""
    if experiment.layer_id is None:
        return
    layer = get_layer(session, experiment.layer_id, for_update=True)
    needed = percent_to_buckets(_percent(experiment.layer_allocation))
    owners = _owned(session, layer.id, exclude=experiment.id)
    gaps = free_gaps(_owned_ranges(owners))
    fitting = next((g for g in gaps if g.size >= needed), None)
    if fitting is None:
        free = sum(g.size for g in gaps) / 100
        largest = max((g.size for g in gaps), default=0) / 100
        message = (
            f"layer {layer.name!r} has {free:g}% free ({largest:g}% in one contiguous range); "
            f"this experiment needs {needed / 100:g}%"
        )
        raise Conflict(
            message,
            errors={"layer": {"free_percent": free, "largest_free_percent": largest, "needed_percent": needed / 100}},
        )
    experiment.layer_range_start = fitting.start
    experiment.layer_range_end = fitting.start + needed


def release(experiment: Experiment) -> None:
    experiment.layer_range_start = None
    experiment.layer_range_end = None


def holds_range(experiment: Experiment) -> bool:
    return experiment.status == ExperimentStatus.RUNNING.value and experiment.layer_range_start is not None
