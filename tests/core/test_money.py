"""The minor-unit table against the ISO 4217 list, and exact amount parsing for every exponent."""
from __future__ import annotations

import json
from decimal import Decimal

import iso4217
import pycountry
import pytest

from core.codes import CURRENCIES
from core.money import (
    CURRENCY_EXPONENTS,
    MAX_MINOR_UNITS,
    AmountError,
    DecimalLiteral,
    decimal_of,
    from_minor_units,
    to_minor_units,
)


def test_the_exponent_table_is_the_iso_4217_list():
    # iso4217 packages ISO's own list one; codes with minor unit "N.A." are not money.
    iso = {c.code: c.exponent for c in iso4217.Currency if c.exponent is not None}
    assert CURRENCY_EXPONENTS == iso
    assert {c.code for c in iso4217.Currency if c.exponent is None} == {
        "XAG", "XAU", "XBA", "XBB", "XBC", "XBD", "XDR", "XPD", "XPT", "XSU", "XTS", "XUA", "XXX",
    }
    assert set(CURRENCY_EXPONENTS) <= CURRENCIES == {c.alpha_3 for c in pycountry.currencies}
    assert (CURRENCY_EXPONENTS["XOF"], CURRENCY_EXPONENTS["EUR"], CURRENCY_EXPONENTS["KWD"],
            CURRENCY_EXPONENTS["TND"], CURRENCY_EXPONENTS["CLF"]) == (0, 2, 3, 3, 4)


@pytest.mark.parametrize("currency", sorted(CURRENCY_EXPONENTS))
def test_every_currency_round_trips_its_smallest_and_largest_amounts(currency):
    places = CURRENCY_EXPONENTS[currency]
    smallest = Decimal(1).scaleb(-places)
    assert to_minor_units(smallest, currency) == 1
    assert from_minor_units(1, currency) == smallest
    for minor in (0, 7, 123_456, MAX_MINOR_UNITS):
        assert to_minor_units(from_minor_units(minor, currency), currency) == minor
        assert to_minor_units(str(from_minor_units(minor, currency)), currency) == minor
    with pytest.raises(AmountError, match="decimal place"):
        to_minor_units(smallest / 10, currency)


@pytest.mark.parametrize(
    ("amount", "currency", "minor"),
    [("1500", "XOF", 1500), ("1500.00", "XOF", 1500), ("1.5E3", "XOF", 1500), ("0.10", "EUR", 10),
     ("19.99", "EUR", 1999), ("1.005", "KWD", 1005), ("0.001", "TND", 1), ("1.2345", "CLF", 12345)],
)
def test_exact_parsing(amount, currency, minor):
    assert to_minor_units(amount, currency) == minor


@pytest.mark.parametrize(
    ("amount", "currency", "message"),
    [("10.005", "EUR", "2 decimal places"), ("1.5", "XOF", "0 decimal places"), ("1.0001", "KWD", "3 decimal"),
     ("NaN", "EUR", "finite"), ("Infinity", "EUR", "finite"), ("-0.01", "EUR", "negative"),
     ("abc", "EUR", "decimal"), ("1e16", "XOF", "at most"), ("1", "XAU", "minor unit"), ("1", "ZZZ", "minor unit")],
)
def test_refusals_say_why(amount, currency, message):
    with pytest.raises(AmountError, match=message):
        to_minor_units(amount, currency)


def test_json_numbers_keep_their_decimal_text():
    body = json.loads('{"a": 0.1, "b": 1234567890123.45, "c": 7, "d": 2.50}', parse_float=DecimalLiteral)
    assert decimal_of(body["a"]) == Decimal("0.1") and decimal_of(body["c"]) == Decimal(7)
    # 17 significant digits: a float rounds it, the literal does not.
    precise = json.loads('{"v": 1234567890123456.78}', parse_float=DecimalLiteral)["v"]
    assert decimal_of(precise) == Decimal("1234567890123456.78")
    assert Decimal(repr(float("1234567890123456.78"))) != Decimal("1234567890123456.78")
    assert to_minor_units(decimal_of(body["d"]), "EUR") == 250
    # Still a float for everything else, re-serialised unchanged.
    assert isinstance(body["a"], float) and json.dumps(body) == '{"a": 0.1, "b": 1234567890123.45, "c": 7, "d": 2.5}'
    with pytest.raises(AmountError):
        decimal_of(True)
    with pytest.raises(AmountError):
        decimal_of(" 1")
