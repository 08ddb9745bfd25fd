"""Money as exact integers: the ISO 4217 minor-unit table and amount parsing.

An amount travels as ``(currency, minor units)``: 1,500 XOF is ``("XOF", 1500)``,
12.34 EUR is ``("EUR", 1234)``, 1.005 KWD is ``("KWD", 1005)``. Nothing that holds
money ever goes through a binary float: amounts are parsed from the client's decimal
text, stored as ``bigint``/``numeric`` and summed exactly by PostgreSQL. Statistics
(means, variances, intervals) are computed in floating point from those exact sums,
which is where rounding belongs.
"""
from __future__ import annotations

from decimal import Decimal, InvalidOperation

# ISO 4217 list one (active codes), "minor unit" column. Codes whose minor unit is
# "N.A." (XAU, XDR, XTS, XXX, ...) are units of account or test codes, not money a
# payment is made in: they are absent, so an event in them is refused.
_BY_EXPONENT: dict[int, str] = {
    0: "BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX UYI VND VUV XAF XOF XPF",
    2: (
        "AED AFN ALL AMD AOA ARS AUD AWG AZN BAM BBD BDT BMD BND BOB BOV BRL BSD BTN BWP BYN BZD "
        "CAD CDF CHE CHF CHW CNY COP COU CRC CUP CVE CZK DKK DOP DZD EGP ERN ETB EUR FJD FKP GBP "
        "GEL GHS GIP GMD GTQ GYD HKD HNL HTG HUF IDR ILS INR IRR JMD KES KGS KHR KPW KYD KZT LAK "
        "LBP LKR LRD LSL MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN MXV MYR MZN NAD NGN NIO "
        "NOK NPR NZD PAB PEN PGK PHP PKR PLN QAR RON RSD RUB SAR SBD SCR SDG SEK SGD SHP SLE SOS "
        "SRD SSP STN SVC SYP SZL THB TJS TMT TOP TRY TTD TWD TZS UAH USD USN UYU UZS VED VES WST "
        "XAD XCD XCG YER ZAR ZMW ZWG"
    ),
    3: "BHD IQD JOD KWD LYD OMR TND",
    4: "CLF UYW",
}

#: Currency code -> number of decimal places of its minor unit (XOF 0, EUR 2, KWD 3, CLF 4).
CURRENCY_EXPONENTS: dict[str, int] = {
    code: exponent for exponent, codes in _BY_EXPONENT.items() for code in codes.split()
}
MONEY_CURRENCIES: frozenset[str] = frozenset(CURRENCY_EXPONENTS)

#: Largest accepted amount of one event, in minor units (10^15: ten trillion euros, or
#: 10^15 dong). Sums of many such amounts stay exact: rollups store ``numeric``.
MAX_MINOR_UNITS = 10**15


class AmountError(ValueError):
    """The text is not an amount of this currency; the message says why (for a 422)."""


def exponent(currency: str) -> int:
    """Decimal places of ``currency``'s minor unit; ``KeyError`` for a non-money code."""
    return CURRENCY_EXPONENTS[currency]


def to_minor_units(amount: Decimal | int | str, currency: str) -> int:
    """The exact integer number of minor units, or :class:`AmountError`.

    Refuses more decimals than the currency has (``10.005`` EUR), non-finite values,
    negative amounts (a refund is a ``refund`` event with a positive amount) and
    amounts beyond :data:`MAX_MINOR_UNITS`. Trailing zeros are fine: ``10.50`` EUR
    and ``1500.0`` XOF are exact.
    """
    places = CURRENCY_EXPONENTS.get(currency)
    if places is None:
        raise AmountError(f"{currency!r} is not an ISO 4217 currency with a minor unit")
    if isinstance(amount, bool):
        raise AmountError("must be a decimal amount")
    try:
        value = amount if isinstance(amount, Decimal) else Decimal(amount)
    except (InvalidOperation, ValueError, TypeError):
        raise AmountError("must be a decimal amount") from None
    if not value.is_finite():
        raise AmountError("must be a finite amount")
    if value < 0:
        raise AmountError("must not be negative (send refunds as refund events with a positive amount)")
    scaled = value.scaleb(places)
    if scaled != scaled.to_integral_value():
        raise AmountError(f"{currency} has {places} decimal place{'s' if places != 1 else ''}; got {amount}")
    minor = int(scaled)
    if minor > MAX_MINOR_UNITS:
        raise AmountError(f"must be at most {from_minor_units(MAX_MINOR_UNITS, currency)} {currency}")
    return minor


def from_minor_units(minor: int, currency: str) -> Decimal:
    """The exact decimal amount of ``minor`` minor units (``1234`` EUR -> ``Decimal("12.34")``)."""
    return Decimal(minor).scaleb(-CURRENCY_EXPONENTS[currency])


class DecimalLiteral(float):
    """A JSON number that also remembers the decimal text it was written as.

    Used as ``json.loads(..., parse_float=DecimalLiteral)``: it *is* a float (so
    every other field behaves as before and re-serialises unchanged), and
    :func:`decimal_of` reads the client's exact digits for money instead of the
    float's binary approximation.
    """

    text: str

    def __new__(cls, text: str) -> DecimalLiteral:
        number = super().__new__(cls, text)
        number.text = text
        return number


def decimal_of(number: object) -> Decimal:
    """The exact decimal a JSON value denotes: its literal text, an int, or a decimal string."""
    if isinstance(number, DecimalLiteral):
        return Decimal(number.text)
    if isinstance(number, float):
        return Decimal(repr(number))  # shortest round-trip text: what the sender most likely wrote
    if isinstance(number, int) and not isinstance(number, bool):
        return Decimal(number)
    if isinstance(number, str) and number.strip() == number and number:
        try:
            return Decimal(number)
        except InvalidOperation:
            pass
    raise AmountError("must be a decimal number (a JSON number or a string such as \"12.34\")")
