"""Money results: revenue in the reporting currency, per currency, capped, CUPED-adjusted.

Read from ``experiment_user_money_rollups`` (exact minor units per user, currency and
UTC day) and priced at read time with :class:`services.fx.RateTable`: each (currency,
day) is converted at the rate in force that day, so a rate published late re-prices
the days it covers on the next read, and nothing reads raw events. A (currency, day)
no rate covers is left out of every converted number and counted in
``unconverted_events``; the per-currency breakdown (native minor units) still has it.

Per-user statistics need per-user sums: the money rows are folded into one value per
user here (users with money events only; everyone else is a zero), and two
aggregates over the assignments give the covariate sums for CUPED and the refund
counts for the ratio metrics. Definitions: ``docs/statistics.md`` ("Money").
"""
from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

import numpy as np
from sqlalchemy import text
from sqlalchemy.orm import Session

from core.money import CURRENCY_EXPONENTS
from models.enums import EventType
from sira.money import (
    ArmValues,
    Estimate,
    PairStats,
    cuped,
    cuped_theta,
    mean_estimate,
    per_user_analysis,
    ratio_estimate,
    relative_change,
)

from ..fx import RateTable
from .inputs import ExperimentInput

CONVERSION = EventType.CONVERSION.value
REFUND = EventType.REFUND.value

_SETTINGS = text("SELECT reporting_currency, value_cap_percentile FROM experiments WHERE id = :id")

_MONEY_ROWS = text(
    """
    SELECT m.variant_id, m.molam_id, m.event_type, m.currency, m.day, m.events, m.amount_minor,
           coalesce(a.pre_exposure_value, a.txn_count::double precision, 0) AS covariate
    FROM experiment_user_money_rollups m
    LEFT JOIN experiment_assignments a ON a.experiment_id = m.experiment_id AND a.molam_id = m.molam_id
    WHERE m.experiment_id = :id
    """
)

# Per variant, over every assigned user: the covariate's sums (pre_exposure_value, else
# txn_count, else 0), conversions and refund counts, and their cross products.
_ASSIGNED = text(
    """
    SELECT a.variant_id, count(*) AS n,
           count(a.pre_exposure_value) AS with_pre_exposure_value,
           count(*) FILTER (WHERE a.pre_exposure_value IS NULL AND a.txn_count IS NOT NULL) AS with_txn_count,
           coalesce(sum(x.v), 0) AS sum_x, coalesce(sum(x.v * x.v), 0) AS sum_x2,
           count(c.molam_id) AS converters,
           coalesce(sum(x.v) FILTER (WHERE c.molam_id IS NOT NULL), 0) AS sum_x_converted,
           coalesce(sum(r.events), 0) AS refunds, coalesce(sum(r.events * r.events), 0) AS refunds2,
           coalesce(sum(r.events) FILTER (WHERE c.molam_id IS NOT NULL), 0) AS refunds_of_converters
    FROM experiment_assignments a
    CROSS JOIN LATERAL (SELECT coalesce(a.pre_exposure_value, a.txn_count::double precision, 0) AS v) x
    LEFT JOIN experiment_user_rollups c
      ON c.experiment_id = a.experiment_id AND c.molam_id = a.molam_id AND c.event_type = 'conversion'
    LEFT JOIN experiment_user_rollups r
      ON r.experiment_id = a.experiment_id AND r.molam_id = a.molam_id AND r.event_type = 'refund'
    WHERE a.experiment_id = :id
    GROUP BY a.variant_id
    """
)


@dataclass
class _Assigned:
    n: int = 0
    with_pre_exposure_value: int = 0
    with_txn_count: int = 0
    sum_x: float = 0.0
    sum_x2: float = 0.0
    converters: int = 0
    sum_x_converted: float = 0.0
    refunds: int = 0
    refunds2: float = 0.0
    refunds_of_converters: int = 0


@dataclass
class _Arm:
    """One variant's money, folded per user."""

    # event type -> molam_id -> converted amount (reporting currency, major units)
    users: dict[str, dict[str, float]] = field(default_factory=lambda: defaultdict(dict))
    covariate: dict[str, float] = field(default_factory=dict)
    # event type -> exact converted total (reporting currency, major units)
    totals: dict[str, Decimal] = field(default_factory=lambda: defaultdict(Decimal))
    # event type -> currency -> molam_id -> native minor units
    native: dict[str, dict[str, dict[str, int]]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(lambda: defaultdict(int)))
    )
    unconverted: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    unconverted_currencies: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))


@dataclass(frozen=True)
class MoneySettings:
    reporting_currency: str
    value_cap_percentile: float | None


def _estimate(result: Estimate) -> dict[str, Any]:
    return {"estimate": result.estimate, "lower": result.lower, "upper": result.upper}


def _uplift(result: Estimate) -> dict[str, Any]:
    return result.as_dict()


def _values(users: dict[str, float]) -> np.ndarray:
    return np.fromiter(users.values(), dtype=float, count=len(users))


def _arm_values(n: int, users: dict[str, float], covariate: dict[str, float], assigned: _Assigned) -> ArmValues:
    return ArmValues(
        n,
        _values(users),
        np.fromiter((covariate.get(m, 0.0) for m in users), dtype=float, count=len(users)),
        assigned.sum_x,
        assigned.sum_x2,
    )


def _per_converter(stats: PairStats, users_with_event: int, confidence: float) -> Estimate:
    """Σ amount / users with the event: a = the user's amount, b = 1 if the user had the event."""
    return ratio_estimate(
        PairStats(stats.n, stats.sum_a, stats.sum_a2, users_with_event, users_with_event, stats.sum_a), confidence
    )


def _maybe_uplift(result: Estimate | None) -> dict[str, Any] | None:
    return None if result is None else _uplift(result)


def load_money_settings(session: Session, experiment_id: uuid.UUID) -> MoneySettings:
    row = session.execute(_SETTINGS, {"id": experiment_id}).one()
    cap = row.value_cap_percentile
    return MoneySettings(row.reporting_currency, float(cap) if cap is not None else None)


def _fold(session: Session, experiment_id: uuid.UUID, rates: RateTable, currency: str) -> dict[uuid.UUID, _Arm]:
    arms: dict[uuid.UUID, _Arm] = defaultdict(_Arm)
    factors: dict[tuple[str, date], Decimal | None] = {}
    for row in session.execute(_MONEY_ROWS, {"id": experiment_id}):
        arm = arms[row.variant_id]
        minor = int(row.amount_minor)
        arm.native[row.event_type][row.currency][row.molam_id] += minor
        arm.covariate[row.molam_id] = float(row.covariate)
        key = (row.currency, row.day)
        if key not in factors:
            factor = rates.factor(row.currency, currency, row.day)
            factors[key] = None if factor is None else factor.scaleb(-CURRENCY_EXPONENTS[row.currency])
        factor = factors[key]
        if factor is None:
            arm.unconverted[row.event_type] += int(row.events)
            arm.unconverted_currencies[row.event_type].add(row.currency)
            continue
        amount = minor * factor
        arm.totals[row.event_type] += amount
        users = arm.users[row.event_type]
        users[row.molam_id] = users.get(row.molam_id, 0.0) + float(amount)
    return arms


def _assigned(session: Session, experiment_id: uuid.UUID) -> dict[uuid.UUID, _Assigned]:
    return {
        row.variant_id: _Assigned(
            n=int(row.n), with_pre_exposure_value=int(row.with_pre_exposure_value), with_txn_count=int(row.with_txn_count),
            sum_x=float(row.sum_x), sum_x2=float(row.sum_x2), converters=int(row.converters),
            sum_x_converted=float(row.sum_x_converted), refunds=int(row.refunds), refunds2=float(row.refunds2),
            refunds_of_converters=int(row.refunds_of_converters),
        )
        for row in session.execute(_ASSIGNED, {"id": experiment_id})
    }


def _money_total(total: Decimal, currency: str) -> tuple[float, int]:
    places = CURRENCY_EXPONENTS[currency]
    rounded = total.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_EVEN)
    return float(rounded), int(rounded.scaleb(places))


def money_results(
    session: Session, experiment: ExperimentInput, rates: RateTable | None = None, confidence: float = 0.95
) -> dict[str, Any]:
    """The money part of the results.

    ``{"reporting_currency", "value_cap_percentile", "covariate": {...}, "variants": {variant_id:
    {"revenue": {event_type: block}, "net_revenue", "ratios", "conversion_cuped"}}}``.
    """
    settings = load_money_settings(session, experiment.id)
    rates = rates if rates is not None else RateTable.load(session)
    currency = settings.reporting_currency
    folded = _fold(session, experiment.id, rates, currency)
    assigned = _assigned(session, experiment.id)
    arms = [folded.get(arm.variant_id, _Arm()) for arm in experiment.arms]
    counts = [assigned.get(arm.variant_id, _Assigned()) for arm in experiment.arms]
    control = experiment.control_index
    event_types = sorted({event_type for arm in arms for event_type in arm.native})

    def n_of(index: int) -> int:
        return max(experiment.arms[index].assigned_users, counts[index].n)

    variants: dict[str, dict[str, Any]] = {str(arm.variant_id): {"revenue": {}} for arm in experiment.arms}
    for event_type in event_types:
        values = [_arm_values(n_of(i), arm.users.get(event_type, {}), arm.covariate, counts[i])
                  for i, arm in enumerate(arms)]
        cap, analysed = per_user_analysis(values, control, settings.value_cap_percentile, confidence)
        converters = [
            _per_converter(values[i].stats(), experiment.arms[i].counts(event_type).users, confidence)
            for i in range(len(arms))
        ]
        for i, arm in enumerate(arms):
            result = analysed[i]
            total, total_minor = _money_total(arm.totals.get(event_type, Decimal(0)), currency)
            variants[str(experiment.arms[i].variant_id)]["revenue"][event_type] = {
                "currency": currency,
                "total": total,
                "total_minor": total_minor,
                "per_user": _estimate(result.per_user),
                "per_user_uncapped": _estimate(result.per_user_uncapped),
                "per_converter": _estimate(converters[i]),
                "per_converter_uplift": None if i == control else _uplift(
                    relative_change(converters[control], converters[i], confidence)
                ),
                "uplift": _maybe_uplift(result.uplift),
                "uplift_uncapped": _maybe_uplift(result.uplift_uncapped),
                "cap": {"percentile": cap.percentile, "value": cap.value, "users_capped": cap.users_capped},
                "by_currency": _by_currency(arm.native.get(event_type, {}), n_of(i), confidence),
                "unconverted_events": arm.unconverted.get(event_type, 0),
                "unconverted_currencies": sorted(arm.unconverted_currencies.get(event_type, ())),
                "cuped": {
                    **_estimate(result.cuped.adjusted),
                    "uplift": _maybe_uplift(result.cuped_uplift),
                    "variance_reduction": result.cuped.variance_reduction,
                    "theta": result.theta,
                },
            }

    _net_revenue(experiment, arms, counts, variants, currency, n_of, confidence)
    _ratios(experiment, arms, counts, variants, n_of, confidence)
    _conversion_cuped(experiment, counts, variants, n_of, confidence)
    return {
        "reporting_currency": currency,
        "value_cap_percentile": settings.value_cap_percentile,
        "covariate": {
            "pre_exposure_value": sum(c.with_pre_exposure_value for c in counts),
            "txn_count": sum(c.with_txn_count for c in counts),
            "none": sum(c.n - c.with_pre_exposure_value - c.with_txn_count for c in counts),
        },
        "variants": variants,
    }


def _by_currency(native: dict[str, dict[str, int]], n: int, confidence: float) -> dict[str, Any]:
    """Per currency: exact total (minor units), users, and the per-assigned-user mean in that currency."""
    out: dict[str, Any] = {}
    for code, users in sorted(native.items()):
        scale = 10.0 ** -CURRENCY_EXPONENTS[code]
        values = np.fromiter(users.values(), dtype=float, count=len(users)) * scale
        stats = PairStats(n, float(values.sum()), float(values @ values), 0.0, 0.0, 0.0)
        out[code] = {
            "total_minor": int(sum(users.values())),
            "per_user": _estimate(mean_estimate(stats, confidence)),
            "users": len(users),
        }
    return out


def _net_revenue(experiment, arms, counts, variants, currency, n_of, confidence) -> None:
    estimates = []
    for i, arm in enumerate(arms):
        revenue = arm.users.get(CONVERSION, {})
        refunds = arm.users.get(REFUND, {})
        net = np.fromiter(
            (revenue.get(m, 0.0) - refunds.get(m, 0.0) for m in revenue.keys() | refunds.keys()), dtype=float
        )
        stats = PairStats(n_of(i), float(net.sum()), float(net @ net), 0.0, 0.0, 0.0)
        estimates.append(mean_estimate(stats, confidence))
        total, total_minor = _money_total(
            arm.totals.get(CONVERSION, Decimal(0)) - arm.totals.get(REFUND, Decimal(0)), currency
        )
        variants[str(experiment.arms[i].variant_id)]["net_revenue"] = {
            "currency": currency,
            "total": total,
            "total_minor": total_minor,
            "per_user": _estimate(estimates[-1]),
            "uplift": None,
            "unconverted_events": arm.unconverted.get(CONVERSION, 0) + arm.unconverted.get(REFUND, 0),
        }
    control = experiment.control_index
    for i in range(len(arms)):
        if i != control:
            variants[str(experiment.arms[i].variant_id)]["net_revenue"]["uplift"] = _uplift(
                relative_change(estimates[control], estimates[i], confidence)
            )


def _ratio_block(stats: list[PairStats], control: int, confidence: float) -> list[dict[str, Any]]:
    estimates = [ratio_estimate(s, confidence) for s in stats]
    return [
        {**_estimate(e), "uplift": _uplift(relative_change(estimates[control], e, confidence)) if i != control else None,
         "message": e.message}
        for i, e in enumerate(estimates)
    ]


def _ratios(experiment, arms, counts, variants, n_of, confidence) -> None:
    """Revenue per converter, refunds per converter, refunded amount per revenue (delta method)."""
    per_converter, refunds_per_converter, refunded_share = [], [], []
    for i, arm in enumerate(arms):
        n = n_of(i)
        revenue = arm.users.get(CONVERSION, {})
        refunds = arm.users.get(REFUND, {})
        r = _values(revenue)
        converters = counts[i].converters
        per_converter.append(PairStats(n, float(r.sum()), float(r @ r), converters, converters, float(r.sum())))
        refunds_per_converter.append(PairStats(
            n, counts[i].refunds, counts[i].refunds2, converters, converters, counts[i].refunds_of_converters
        ))
        keys = list(revenue.keys() | refunds.keys())
        a = np.fromiter((refunds.get(m, 0.0) for m in keys), dtype=float, count=len(keys))
        b = np.fromiter((revenue.get(m, 0.0) for m in keys), dtype=float, count=len(keys))
        refunded_share.append(PairStats(n, float(a.sum()), float(a @ a), float(b.sum()), float(b @ b), float(a @ b)))
    control = experiment.control_index
    blocks = {
        "revenue_per_converter": _ratio_block(per_converter, control, confidence),
        "refunds_per_converter": _ratio_block(refunds_per_converter, control, confidence),
        "refunded_amount_per_revenue": _ratio_block(refunded_share, control, confidence),
    }
    for i, arm in enumerate(experiment.arms):
        variants[str(arm.variant_id)]["ratios"] = {name: values[i] for name, values in blocks.items()}


def _conversion_cuped(experiment, counts, variants, n_of, confidence) -> None:
    """CUPED on the conversion indicator (a = converted, b = the covariate)."""
    stats = [
        PairStats(n_of(i), c.converters, c.converters, c.sum_x, c.sum_x2, c.sum_x_converted)
        for i, c in enumerate(counts)
    ]
    theta = cuped_theta(stats)
    pooled_x = sum(s.sum_b for s in stats) / max(sum(s.n for s in stats), 1)
    adjusted = [cuped(s, theta, pooled_x, confidence) for s in stats]
    control = experiment.control_index
    for i, arm in enumerate(experiment.arms):
        variants[str(arm.variant_id)]["conversion_cuped"] = {
            **_estimate(adjusted[i].adjusted),
            "uplift": _uplift(relative_change(adjusted[control].adjusted, adjusted[i].adjusted, confidence))
            if i != control else None,
            "variance_reduction": adjusted[i].variance_reduction,
            "theta": theta,
        }
