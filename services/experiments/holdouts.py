"""Long-term holdouts: a fixed share of users kept out of a family of experiments.

Membership is a pure function of the holdout id and the Molam ID
(:func:`services.experiments.buckets.holdout_bucket`), independent of every
experiment's own hashes, so it is the same whichever experiment asks and however
often. The assignment path records a member (``experiment_holdout_members``) the
first time one of the holdout's experiments is asked about them, after targeting,
coverage and layer checks: a member is someone who *would* have been enrolled. Their
events, tracked with any of those experiments' ids, are accepted and kept per holdout
(``experiment_holdout_events``), which is what :func:`holdout_results` compares with
the users those experiments enrolled.
"""
from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.errors import Conflict, NotFound
from models import Holdout
from models.enums import EVENT_TYPES, LOWER_IS_BETTER
from sira.stats import (
    ProportionStats,
    SampleStats,
    beta_credible_interval,
    mean_interval,
    relative_uplift,
    wilson_interval,
)

from . import audit
from .audit import Actor


def _snapshot(holdout: Holdout) -> dict[str, Any]:
    return {"id": str(holdout.id), "name": holdout.name, "description": holdout.description, "percent": float(holdout.percent)}


def create_holdout(session: Session, data: dict[str, Any], actor: Actor) -> Holdout:
    if session.execute(select(Holdout.id).where(Holdout.name == data["name"])).first() is not None:
        raise Conflict(f"a holdout named {data['name']!r} already exists", errors={"json": {"name": ["already taken"]}})
    holdout = Holdout(
        id=uuid.uuid4(),
        name=data["name"],
        description=data.get("description", ""),
        percent=data["percent"],
        created_by=actor.sub,
    )
    session.add(holdout)
    try:
        session.flush()
    except IntegrityError as exc:
        session.rollback()
        raise Conflict(f"a holdout named {data['name']!r} already exists") from exc
    audit.record(session, actor=actor, action="create_holdout", experiment_id=None, after=_snapshot(holdout))
    return holdout


def get_holdout(session: Session, holdout_id: uuid.UUID) -> Holdout:
    holdout = session.get(Holdout, holdout_id)
    if holdout is None:
        raise NotFound(f"holdout {holdout_id} not found")
    return holdout


def list_holdouts(session: Session) -> list[Holdout]:
    return list(session.execute(select(Holdout).order_by(Holdout.created_at, Holdout.id)).scalars())


def summary(session: Session, holdout: Holdout) -> dict[str, Any]:
    row = session.execute(
        text(
            "SELECT (SELECT count(*) FROM experiment_holdout_members WHERE holdout_id = :h), "
            "       (SELECT coalesce(array_agg(experiment_id::text ORDER BY experiment_id), '{}') "
            "        FROM experiment_holdout_links WHERE holdout_id = :h)"
        ),
        {"h": holdout.id},
    ).one()
    return {"members": row[0], "experiment_ids": list(row[1])}


# --- events of holdout members ------------------------------------------------------

_MEMBER_HOLDOUTS = text(
    "SELECT m.holdout_id::text FROM experiment_holdout_members m "
    "JOIN experiment_holdout_links l ON l.holdout_id = m.holdout_id "
    "WHERE l.experiment_id = CAST(:experiment_id AS uuid) AND m.molam_id = :molam_id"
)
_INSERT_EVENT = text(
    "INSERT INTO experiment_holdout_events "
    "(holdout_id, event_id, experiment_id, molam_id, event_type, value, currency, occurred_at, received_at) "
    "SELECT CAST(h AS uuid), :event_id, CAST(:experiment_id AS uuid), :molam_id, :event_type, :value, :currency, "
    "CAST(:occurred_at AS timestamptz), CAST(:received_at AS timestamptz) FROM unnest(CAST(:holdouts AS text[])) AS h "
    "ON CONFLICT (holdout_id, event_id) DO NOTHING"
)


def member_holdouts(session: Session, experiment_id: str, molam_id: str) -> list[str]:
    """The experiment's holdouts in which this user is a recorded member."""
    return [r[0] for r in session.execute(_MEMBER_HOLDOUTS, {"experiment_id": experiment_id, "molam_id": molam_id})]


def record_event(session: Session, holdout_ids: list[str], record: Any) -> None:
    """Keep a validated event (``services.ingestion.staging`` record) for each holdout; committed here.

    The same ``event_id`` sent again is counted once per holdout.
    """
    session.execute(
        _INSERT_EVENT,
        {
            "holdouts": holdout_ids,
            "event_id": record.event_id,
            "experiment_id": record.experiment_id,
            "molam_id": record.molam_id,
            "event_type": record.event_type,
            "value": record.value,
            "currency": record.currency,
            "occurred_at": record.occurred_at,
            "received_at": record.received_at,
        },
    )
    session.commit()


# --- results --------------------------------------------------------------------------

# Per event type: users with >= 1 event and the per-user value sums (sum, sum of squares)
# for holdout members and for the users the holdout's experiments enrolled (distinct
# Molam IDs over all of them; a user enrolled in two experiments counts once, with the
# events tracked for either).
_HOLDOUT_COUNTS = text(
    """
    WITH per_user AS (
        SELECT molam_id, event_type, count(*) AS events, coalesce(sum(value), 0) AS value_sum
        FROM experiment_holdout_events WHERE holdout_id = :h GROUP BY molam_id, event_type
    )
    SELECT event_type, count(*), sum(events), sum(value_sum), sum(value_sum * value_sum)
    FROM per_user GROUP BY event_type
    """
)
_ENROLLED_COUNTS = text(
    """
    WITH per_user AS (
        SELECT r.molam_id, r.event_type, sum(r.events) AS events, sum(r.value_sum) AS value_sum
        FROM experiment_user_rollups r
        JOIN experiment_holdout_links l ON l.experiment_id = r.experiment_id AND l.holdout_id = :h
        GROUP BY r.molam_id, r.event_type
    )
    SELECT event_type, count(*), sum(events), sum(value_sum), sum(value_sum * value_sum)
    FROM per_user GROUP BY event_type
    """
)
_POPULATIONS = text(
    """
    SELECT (SELECT count(*) FROM experiment_holdout_members WHERE holdout_id = :h),
           (SELECT count(DISTINCT a.molam_id) FROM experiment_assignments a
            JOIN experiment_holdout_links l ON l.experiment_id = a.experiment_id AND l.holdout_id = :h)
    """
)


def _interval(interval) -> dict[str, float] | None:
    return None if interval is None else {"lower": interval.lower, "upper": interval.upper}


def _group_block(users: int, counts: tuple | None) -> tuple[dict[str, Any], ProportionStats, SampleStats]:
    converted, events, value_sum, value_squares = counts or (0, 0, 0.0, 0.0)
    converted = min(int(converted), users)
    proportion = ProportionStats(users=users, successes=converted)
    sample = SampleStats(n=users, sum=float(value_sum or 0.0), sum_squares=float(value_squares or 0.0))
    block = {
        "users": users,
        "events": int(events or 0),
        "rate": proportion.rate,
        "interval": _interval(wilson_interval(proportion.successes, proportion.users)),
        "credible_interval": _interval(beta_credible_interval(proportion.successes, proportion.users)),
        "value_sum": float(value_sum or 0.0),
        "value_mean": sample.mean,
        "value_interval": _interval(mean_interval(sample)) if sample.n >= 2 else None,
    }
    return block, proportion, sample


def _uplift(control, treatment) -> dict[str, Any]:
    result = relative_uplift(control, treatment)
    return {
        "estimate": result.estimate,
        "lower": result.interval.lower if result.interval else None,
        "upper": result.interval.upper if result.interval else None,
        "message": result.message,
    }


def holdout_results(session: Session, holdout: Holdout) -> dict[str, Any]:
    """Holdout members vs enrolled users on every event type, with the experiment results' intervals.

    The holdout plays control: ``uplift`` is the enrolled users' rate relative to the
    holdout's (for refunds, churn and fraud alerts a negative uplift is the good outcome).
    """
    members, enrolled = session.execute(_POPULATIONS, {"h": holdout.id}).one()
    held = {r[0]: r[1:] for r in session.execute(_HOLDOUT_COUNTS, {"h": holdout.id})}
    exposed = {r[0]: r[1:] for r in session.execute(_ENROLLED_COUNTS, {"h": holdout.id})}
    metrics: dict[str, Any] = {}
    for event_type in EVENT_TYPES:
        holdout_block, holdout_p, holdout_s = _group_block(members, held.get(event_type))
        enrolled_block, enrolled_p, enrolled_s = _group_block(enrolled, exposed.get(event_type))
        metrics[event_type] = {
            "lower_is_better": event_type in LOWER_IS_BETTER,
            "holdout": holdout_block,
            "enrolled": enrolled_block,
            "uplift": _uplift(holdout_p, enrolled_p),
            "value_uplift": _uplift(holdout_s, enrolled_s),
        }
    return {
        "holdout_id": holdout.id,
        "name": holdout.name,
        "percent": float(holdout.percent),
        "members": members,
        "enrolled_users": enrolled,
        "experiment_ids": summary(session, holdout)["experiment_ids"],
        "metrics": metrics,
    }
