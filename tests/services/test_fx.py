"""Rate look-ups: the set in force on a day, revisions, direct, inverse and cross rates."""
from __future__ import annotations

from datetime import date
from decimal import Decimal

from services.fx import RateTable

D = Decimal


def table(*rows):
    return RateTable.from_rows(rows)


def test_the_rate_in_force_is_the_latest_valid_from_on_or_before_the_day():
    rates = table(("EUR", date(2026, 12, 1), 1, "XOF", D("655.957")), ("EUR", date(2026, 12, 10), 1, "XOF", D("650")))
    assert rates.rate("EUR", "XOF", date(2026, 11, 30)) is None
    assert rates.rate("EUR", "XOF", date(2026, 12, 9)) == (D("655.957"), date(2026, 12, 1), 1)
    assert rates.rate("EUR", "XOF", date(2026, 12, 10))[0] == D("650")
    # 1,000 XOF on 5 Dec in EUR: 1000 / 655.957; EUR -> XOF the inverse.
    assert rates.factor("XOF", "EUR", date(2026, 12, 5)) == D(1) / D("655.957")
    assert rates.factor("EUR", "XOF", date(2026, 12, 5)) == D("655.957")
    assert rates.factor("XOF", "XOF", date(2000, 1, 1)) == 1


def test_cross_rates_go_through_a_common_base():
    rates = table(("EUR", date(2026, 12, 1), 1, "XOF", D("655.957")), ("EUR", date(2026, 12, 1), 1, "USD", D("1.05")))
    assert rates.factor("XOF", "USD", date(2026, 12, 2)) == D("1.05") / D("655.957")
    assert rates.factor("KWD", "USD", date(2026, 12, 2)) is None  # unconverted, never guessed


def test_only_the_newest_revision_of_a_set_counts():
    # RateTable.load keeps the newest revision per set; from_rows receives what load selected.
    rates = table(("EUR", date(2026, 12, 1), 2, "XOF", D("656")))
    assert rates.rate("EUR", "XOF", date(2026, 12, 3)) == (D("656"), date(2026, 12, 1), 2)
