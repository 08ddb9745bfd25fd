"""Exposures decided by SDK clients: recomputed here, then stored as ``assign`` stores them.

A client that evaluates a fixed split locally sends what it decided (``POST
/api/assignments/batch``). Nothing it says is trusted: each exposure is evaluated
again with the server's own definition, targeting, coverage and hash, and only an
exposure whose variant is the one the server would give (or already holds) is kept.
Stored rows are written with the assignment service's own INSERT (running experiment,
unpaused arm, ``ON CONFLICT DO NOTHING``), so the first writer wins whoever it is
and a replayed batch changes nothing.

The batch is one transaction with its rows inserted in (experiment, molam_id) order:
two batches racing over the same users lock rows in the same order and cannot
deadlock, and a concurrent single ``assign`` waits for the batch's commit and then
returns the batch's row.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg.errors
import redis

from core import db
from core import redis as redis_state
from core.errors import NotFound
from core.metrics import EXPERIMENT_ASSIGNMENTS
from models.enums import ExperimentMode

from ..experiments import assignment
from ..experiments.assignment import UserContext
from ..experiments.assignment.cache import cache_assignment
from ..experiments.assignment.service import iso_timestamp
from ..experiments.assignment.store import existing_assignment, insert_assignment
from ..experiments.buckets import split_bucket
from ..experiments.definitions import Definition, get_definition

log = logging.getLogger(__name__)

MAX_BATCH = 1_000
_DEADLOCK_RETRIES = 2


@dataclass(frozen=True, slots=True)
class Exposure:
    experiment_id: str
    variant_id: str
    user: UserContext
    evaluated_at: datetime


@dataclass(frozen=True, slots=True)
class Verdict:
    """One exposure's outcome: ``accepted`` with ``new``, or rejected with a ``reason``."""

    index: int
    exposure: Exposure
    accepted: bool
    reason: str | None = None
    new: bool = False
    expected_variant_id: str | None = None
    stored_variant_id: str | None = None

    def as_dict(self) -> dict[str, Any]:
        exposure = self.exposure
        out: dict[str, Any] = {
            "index": self.index,
            "experiment_id": exposure.experiment_id,
            "molam_id": exposure.user.molam_id,
            "variant_id": exposure.variant_id,
        }
        if self.accepted:
            out["new"] = self.new
        else:
            out["reason"] = self.reason
            if self.expected_variant_id is not None:
                out["expected_variant_id"] = self.expected_variant_id
            if self.stored_variant_id is not None:
                out["stored_variant_id"] = self.stored_variant_id
        return out


def _definitions(client: redis.Redis | None, experiment_ids: set[str]) -> dict[str, Definition | None]:
    found: dict[str, Definition | None] = {}
    for experiment_id in experiment_ids:
        try:
            found[experiment_id] = get_definition(client, experiment_id)
        except NotFound:
            found[experiment_id] = None
    return found


def _expected(definition: Definition, user: UserContext) -> tuple[str | None, str | None]:
    """(variant the server gives a user with no stored row, or None with the reason)."""
    reason = assignment.targeting_reason(definition, user)
    if reason is not None:
        return None, reason
    if not assignment.in_coverage(definition, user.molam_id):
        return None, "outside_coverage"
    variant = assignment.variant_for_bucket(definition, split_bucket(definition.id, user.molam_id))
    return variant.id, None


def record_exposures(
    client: redis.Redis | None,
    exposures: list[Exposure],
    first_index: int = 0,
    caller_roles: tuple[str, ...] | None = None,
) -> list[Verdict]:
    """Recompute, store the matches, reject the rest; verdicts in request order.

    An exposure of an experiment whose ``allowed_services`` leave ``caller_roles`` out
    is rejected with ``service_not_allowed`` (``None``: an internal call, not scoped).
    """
    client = redis_state.usable(client)
    definitions = _definitions(client, {e.experiment_id for e in exposures})
    verdicts: dict[int, Verdict] = {}
    # (experiment, molam_id) -> indexes: a user sent twice is stored once.
    pending: dict[tuple[str, str], list[int]] = {}
    for index, exposure in enumerate(exposures, start=first_index):
        definition = definitions[exposure.experiment_id]
        if definition is None:
            verdicts[index] = Verdict(index, exposure, False, "unknown_experiment")
        elif caller_roles is not None and not definition.permits(caller_roles):
            verdicts[index] = Verdict(index, exposure, False, "service_not_allowed")
        elif not definition.is_running:
            verdicts[index] = Verdict(index, exposure, False, "not_running")
        elif definition.mode != ExperimentMode.AB.value:
            verdicts[index] = Verdict(index, exposure, False, "not_fixed_split")
        elif exposure.variant_id not in definition.by_id:
            verdicts[index] = Verdict(index, exposure, False, "unknown_variant")
        else:
            pending.setdefault((exposure.experiment_id, exposure.user.molam_id), []).append(index)
    by_index = dict(enumerate(exposures, start=first_index))
    if pending:
        for attempt in range(_DEADLOCK_RETRIES + 1):
            try:
                stored = _store(definitions, by_index, pending)
                break
            except psycopg.errors.DeadlockDetected:
                if attempt == _DEADLOCK_RETRIES:
                    raise
                log.warning("exposure batch deadlocked; retrying")
        else:  # pragma: no cover - the loop either breaks or raises
            stored = {}
        for key, (verdict_for, cache_row) in stored.items():
            verdicts.update(verdict_for)
            if cache_row is not None:
                experiment_id, molam_id = key
                variant_id, assigned_at = cache_row
                cache_assignment(client, experiment_id, molam_id, variant_id, assigned_at)
    return [verdicts[i] for i in sorted(verdicts)]


def _store(
    definitions: dict[str, Definition | None],
    exposures: dict[int, Exposure],
    pending: dict[tuple[str, str], list[int]],
) -> dict[tuple[str, str], tuple[dict[int, Verdict], tuple[str, str] | None]]:
    """One transaction: insert or look up each user, in key order. Returns per-key verdicts
    and the ``(variant_id, assigned_at)`` to cache once committed."""
    results: dict[tuple[str, str], tuple[dict[int, Verdict], tuple[str, str] | None]] = {}
    new_rows: dict[str, int] = {}
    with db.get_engine().begin() as connection:
        for key in sorted(pending):
            experiment_id, _ = key
            definition = definitions[experiment_id]
            assert definition is not None  # only known experiments are pending
            indexes = pending[key]
            outcomes = {i: _expected(definition, exposures[i].user) for i in indexes}
            writer = next((i for i in indexes if outcomes[i][0] == exposures[i].variant_id), None)
            row = None
            if writer is not None:
                # A fixed split (bandits are refused above): the period is the definition's
                # version and the probability the arm's bucket share, as ``assign`` records.
                variant = definition.by_id[exposures[writer].variant_id]
                row = insert_assignment(
                    connection, experiment_id, variant.id, exposures[writer].user,
                    assignment.period_id(definition.version, 0), assignment.split_probability(definition, variant),
                )
            new = row is not None
            if row is None:
                row = existing_assignment(connection, experiment_id, exposures[indexes[0]].user.molam_id)
            stored_id = None if row is None else str(row[0])
            verdicts = {}
            for index in indexes:
                exposure = exposures[index]
                expected, reason = outcomes[index]
                if stored_id is not None and stored_id == exposure.variant_id:
                    verdicts[index] = Verdict(index, exposure, True, new=new and index == writer)
                elif stored_id is not None:
                    verdicts[index] = Verdict(index, exposure, False, "conflicts_with_stored", stored_variant_id=stored_id)
                elif reason is not None:
                    verdicts[index] = Verdict(index, exposure, False, reason)
                elif expected != exposure.variant_id:
                    verdicts[index] = Verdict(index, exposure, False, "variant_mismatch", expected_variant_id=expected)
                else:
                    # Expected, not inserted, not there: the arm was paused or the experiment
                    # stopped after this process read its definition.
                    verdicts[index] = Verdict(index, exposure, False, "definition_changed")
            if new:
                new_rows[experiment_id] = new_rows.get(experiment_id, 0) + 1
            results[key] = (verdicts, None if row is None else (str(row[0]), iso_timestamp(row[1])))
    for experiment_id, count in new_rows.items():
        EXPERIMENT_ASSIGNMENTS.labels(experiment_id=experiment_id).inc(count)
    return results
