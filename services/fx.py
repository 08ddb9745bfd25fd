"""Exchange rates: published in sets, never edited, looked up by day.

A set is ``rate`` units of each currency per one ``base``, valid from ``valid_from``
(a UTC day). Publishing a set for a ``(base, valid_from)`` that already exists adds
a new revision; the newest revision of a set is the one in force, older ones stay
for the audit trail. The rate of a currency on a day is taken from the set with the
latest ``valid_from`` on or before that day that prices it, so a set published
later for a past day re-prices that day (and the following ones up to the next set)
the next time results are read: money rollups keep amounts per currency and day, so
nothing is re-read from raw events.
"""
from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from core.errors import NotFound
from models import FxRate

from .experiments import audit
from .experiments.audit import Actor

_PUBLISH_LOCK_KEY = 147_000_010


def _latest_revisions(session: Session):
    """Rows of the newest revision of every set."""
    newest = (
        select(FxRate.base, FxRate.valid_from, func.max(FxRate.revision).label("revision"))
        .group_by(FxRate.base, FxRate.valid_from)
        .subquery()
    )
    return session.execute(
        select(FxRate.base, FxRate.valid_from, FxRate.revision, FxRate.currency, FxRate.rate, FxRate.recorded_at)
        .join(newest, (FxRate.base == newest.c.base) & (FxRate.valid_from == newest.c.valid_from)
              & (FxRate.revision == newest.c.revision))
        .order_by(FxRate.base, FxRate.currency, FxRate.valid_from)
    ).all()


def publish(session: Session, base: str, valid_from: date, rates: dict[str, Decimal], actor: Actor) -> dict[str, Any]:
    """Store a set as a new revision and audit it, in the caller's transaction."""
    session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PUBLISH_LOCK_KEY})
    previous = session.execute(
        select(func.max(FxRate.revision)).where(FxRate.base == base, FxRate.valid_from == valid_from)
    ).scalar_one_or_none() or 0
    revision = previous + 1
    session.add_all(
        FxRate(base=base, valid_from=valid_from, revision=revision, currency=currency, rate=rate, recorded_by=actor.sub)
        for currency, rate in sorted(rates.items())
    )
    session.flush()
    document = {
        "base": base,
        "valid_from": valid_from.isoformat(),
        "revision": revision,
        "rates": {currency: str(rate) for currency, rate in sorted(rates.items())},
    }
    before = None
    if previous:
        old = session.execute(
            select(FxRate.currency, FxRate.rate)
            .where(FxRate.base == base, FxRate.valid_from == valid_from, FxRate.revision == previous)
        ).all()
        before = {**document, "revision": previous, "rates": {c: str(r) for c, r in sorted(old)}}
    audit.record(session, actor=actor, action="fx_rates", experiment_id=None, before=before, after=document)
    return {**document, "rates": {c: float(r) for c, r in sorted(rates.items())}}


@dataclass
class RateTable:
    """Every set's newest revision, indexed for "rate of currency on day" look-ups."""

    # (base, currency) -> sorted valid_from days and the matching rates
    _days: dict[tuple[str, str], list[date]] = field(default_factory=dict)
    _rates: dict[tuple[str, str], list[tuple[Decimal, int]]] = field(default_factory=dict)
    bases: tuple[str, ...] = ()

    @classmethod
    def load(cls, session: Session) -> RateTable:
        return cls.from_rows((r.base, r.valid_from, r.revision, r.currency, r.rate) for r in _latest_revisions(session))

    @classmethod
    def from_rows(cls, rows: Iterable[tuple[str, date, int, str, Decimal]]) -> RateTable:
        table = cls()
        for base, valid_from, revision, currency, rate in sorted(rows, key=lambda r: (r[0], r[3], r[1])):
            table._days.setdefault((base, currency), []).append(valid_from)
            table._rates.setdefault((base, currency), []).append((Decimal(rate), revision))
        table.bases = tuple(sorted({base for base, _ in table._days}))
        return table

    def rate(self, base: str, currency: str, day: date) -> tuple[Decimal, date, int] | None:
        """Units of ``currency`` per one ``base`` on ``day``, with the set's valid_from and revision."""
        if currency == base:
            return Decimal(1), day, 0
        days = self._days.get((base, currency))
        if not days:
            return None
        index = bisect.bisect_right(days, day) - 1
        if index < 0:
            return None
        rate, revision = self._rates[(base, currency)][index]
        return rate, days[index], revision

    def factor(self, source: str, target: str, day: date) -> Decimal | None:
        """Units of ``target`` per one unit of ``source`` on ``day``; ``None`` when no rate covers it.

        Direct when a set's base is one of the two currencies, otherwise crossed through
        the first base (alphabetically) that prices both.
        """
        if source == target:
            return Decimal(1)
        for base in (target, source, *self.bases):
            from_source = self.rate(base, source, day)
            to_target = self.rate(base, target, day)
            if from_source is not None and to_target is not None:
                return to_target[0] / from_source[0]
        return None


def rates_on(session: Session, day: date, base: str | None = None) -> dict[str, Any]:
    """The rates in force on ``day``: per base, each currency's rate, its set's valid_from and revision."""
    table = RateTable.load(session)
    bases = [base] if base else list(table.bases)
    if base and base not in table.bases:
        raise NotFound(f"no exchange rates with base {base}")
    sets = []
    for one in bases:
        currencies = sorted(currency for b, currency in table._days if b == one)
        rates = {}
        for currency in currencies:
            found = table.rate(one, currency, day)
            if found is not None:
                rate, valid_from, revision = found
                rates[currency] = {"rate": float(rate), "valid_from": valid_from.isoformat(), "revision": revision}
        if rates:
            sets.append({"base": one, "rates": rates})
    return {"on": day.isoformat(), "sets": sets}
