"""The staged event: one record type and one set of field rules for both sides of the stream.

The API side (:func:`validate_event`) builds a :class:`StagedEvent` from a client's JSON; the
write side (:func:`coerce_record`) re-checks what it reads back from the stream with the same
checkers, because the stream is an interface (an old producer, a manual XADD or a bug must not
wedge the pipeline). A record travels as a JSON array in field order, which is also the column
order of the writer's COPY. ``api.events`` documents the same fields and limits as OpenAPI
schemas; a test keeps the two in step, constraints included.
"""
from __future__ import annotations

import json
import math
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any, NamedTuple

from core import jsonsafe
from core.money import MAX_MINOR_UNITS, MONEY_CURRENCIES, AmountError, decimal_of, to_minor_units
from models.enums import EVENT_TYPES

MAX_BATCH_REQUEST = 1000
MAX_METADATA_BYTES = 4096
MAX_EVENT_ID = 128
MAX_MOLAM_ID = 200
MAX_FUTURE_SKEW = timedelta(days=1)

EVENT_TYPE_SET = frozenset(EVENT_TYPES)


class StagedEvent(NamedTuple):
    """One validated event on its way from the API to PostgreSQL (``variant_id`` may be filled late)."""

    event_id: str
    experiment_id: str
    variant_id: str | None
    molam_id: str
    event_type: str
    value: float | None
    currency: str | None
    metadata: str  # serialised JSON object
    occurred_at: str  # ISO 8601, UTC
    received_at: str  # ISO 8601, UTC
    # A money event (one with a currency): its amount in the currency's minor units, and no
    # ``value``, so plain values and money never mix.
    amount_minor: int | None = None


RECORD_FIELDS: tuple[str, ...] = StagedEvent._fields
#: Fields a client may send to ``track`` (the server fills ``experiment_id``, ``received_at``
#: and ``amount_minor``, the exact form of a money event's ``value``).
TRACK_FIELDS = frozenset(RECORD_FIELDS) - {"experiment_id", "received_at", "amount_minor"}
BATCH_FIELDS = TRACK_FIELDS | {"experiment_id"}


# --------------------------------------------------------------------------- field checkers
# Each returns the error message for a present value, or None when the value is acceptable.


def parse_uuid(value: object) -> str | None:
    if not isinstance(value, str):
        return None
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return None


def _bounded_text(value: object, limit: int) -> str | None:
    if not isinstance(value, str) or not value or len(value) > limit:
        return f"must be a non-empty string of at most {limit} characters"
    return jsonsafe.text_problem(value)


def check_event_id(value: object) -> str | None:
    return _bounded_text(value, MAX_EVENT_ID)


def check_molam_id(value: object) -> str | None:
    return _bounded_text(value, MAX_MOLAM_ID)


def check_event_type(value: object) -> str | None:
    if not isinstance(value, str) or value not in EVENT_TYPE_SET:
        return f"must be one of: {', '.join(EVENT_TYPES)}"
    return None


def check_value(value: object) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "must be a number"
    try:
        finite = math.isfinite(float(value))
    except OverflowError:
        finite = False
    return None if finite else "must be a finite number"


def check_currency(value: object) -> str | None:
    if not isinstance(value, str) or value not in MONEY_CURRENCIES:
        return "must be an upper-case ISO 4217 code of a currency with a minor unit (XOF, EUR, ...)"
    return None


def check_amount_minor(value: object) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_MINOR_UNITS:
        return f"must be an integer number of minor units in [0, {MAX_MINOR_UNITS}]"
    return None


def money_amount(value: object, currency: str) -> tuple[int | None, str | None]:
    """A money event's ``value`` as exact minor units of ``currency``, and the error message."""
    if value is None:
        return None, "required when currency is given (the amount, e.g. 12.34)"
    try:
        return to_minor_units(decimal_of(value), currency), None
    except AmountError as exc:
        return None, str(exc)


def serialise_metadata(value: object) -> tuple[str, str | None]:
    """The metadata object as compact JSON, and the error message if it is not acceptable.

    Acceptable means storable in ``jsonb``: finite numbers, no NUL, no unpaired surrogate
    (the API's body guard refuses these already; the record contract does not rely on it).
    """
    if not isinstance(value, dict):
        return "{}", "must be a JSON object"
    try:
        encoded = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        size = len(encoded.encode())
    except (ValueError, UnicodeEncodeError, RecursionError):
        encoded = None
    if encoded is None or "\\u0000" in encoded:  # the walk says where (a literal "\\u0000" text passes)
        problems = jsonsafe.find_problems(value)
        if problems:
            path, problem = problems[0]
            return "{}", f"{problem} (at {jsonsafe.dotted(path)})"
        if encoded is None:
            return "{}", "must be a JSON object of finite numbers and storable strings"
    if size > MAX_METADATA_BYTES:
        return encoded, f"is {size} bytes; at most {MAX_METADATA_BYTES} bytes"
    return encoded, None


def check_metadata_json(value: object) -> str | None:
    """The write side's check of serialised metadata: a JSON object ``jsonb`` accepts.

    Cheap for what the API stages (a substring scan); a full strict decode only when
    the text could hold NaN, Infinity, NUL or a surrogate, so a bad record becomes a
    dead letter on its own instead of failing its batch's COPY.
    """
    if not isinstance(value, str):
        return "must be serialised JSON"
    suspicious = ("NaN", "Infinity", "\\u0000", "\\ud", "\\uD")
    if not value.isascii() or any(token in value for token in suspicious):
        try:
            decoded = jsonsafe.loads(value.encode("utf-8"))
        except UnicodeEncodeError:
            return jsonsafe.SURROGATE_MESSAGE
        except (jsonsafe.NotJSON, jsonsafe.Rejected) as exc:
            return f"is not storable JSON: {exc}"
        if not isinstance(decoded, dict):
            return "must be a JSON object"
    elif not value.startswith("{"):
        return "must be a JSON object"
    return None


def parse_timestamp(value: object, now: datetime | None = None) -> tuple[str | None, str | None]:
    """An ISO 8601 string normalised to UTC, and the error message; ``now`` bounds the future."""
    if not isinstance(value, str):
        return None, "must be an ISO 8601 datetime string"
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None, f"{value!r} is not an ISO 8601 datetime"
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    if now is not None and moment - now > MAX_FUTURE_SKEW:
        return None, "must not be more than a day in the future"
    return moment.astimezone(timezone.utc).isoformat(), None


# --------------------------------------------------------------------------- both sides


def validate_event(
    raw: object, *, experiment_id: str | None, received_at: datetime, received_iso: str
) -> tuple[StagedEvent | None, dict[str, list[str]]]:
    """Check one client event and return its staged record, or errors keyed by field.

    ``experiment_id`` comes from the URL for ``track``; ``None`` means the event must carry
    its own (batch). Written by hand rather than with marshmallow: the batch path validates
    up to 1,000 events per request and this is 3-4 times faster.
    """
    if not isinstance(raw, dict):
        return None, {"_schema": ["an event must be a JSON object"]}
    errors: dict[str, list[str]] = {}
    allowed = TRACK_FIELDS if experiment_id is not None else BATCH_FIELDS
    for name in raw:
        if name not in allowed:
            errors[str(name)] = ["unknown field"]

    def check(name: str, checker: Any) -> Any:
        value = raw.get(name)
        if value is not None:
            problem = checker(value)
            if problem:
                errors[name] = [problem]
        return value

    if experiment_id is None:
        experiment_id = parse_uuid(raw.get("experiment_id"))
        if experiment_id is None:
            errors["experiment_id"] = ["required" if "experiment_id" not in raw else "must be a UUID"]
    for required in ("molam_id", "event_type"):
        if raw.get(required) is None:
            errors[required] = ["required"]
    molam_id = check("molam_id", check_molam_id)
    event_type = check("event_type", check_event_type)
    currency = check("currency", check_currency)
    amount_minor = None
    if currency is None:
        value = check("value", check_value)
    else:
        value = None
        if "currency" not in errors:
            amount_minor, problem = money_amount(raw.get("value"), currency)
            if problem:
                errors["value"] = [problem]

    variant_id = raw.get("variant_id")
    if variant_id is not None:
        variant_id = parse_uuid(variant_id)
        if variant_id is None:
            errors["variant_id"] = ["must be a UUID"]

    metadata_json = "{}"
    if raw.get("metadata") is not None:
        metadata_json, problem = serialise_metadata(raw["metadata"])
        if problem:
            errors["metadata"] = [problem]

    event_id = raw.get("event_id")
    if event_id is None:
        event_id = uuid.uuid4().hex
    else:
        check("event_id", check_event_id)

    occurred_iso: str | None = received_iso
    if raw.get("occurred_at") is not None:
        occurred_iso, problem = parse_timestamp(raw["occurred_at"], received_at)
        if problem:
            errors["occurred_at"] = [problem]

    if errors:
        return None, errors
    return StagedEvent(
        event_id, experiment_id, variant_id, molam_id, event_type,  # type: ignore[arg-type]
        None if value is None else float(value), currency, metadata_json, occurred_iso, received_iso,  # type: ignore[arg-type]
        amount_minor,
    ), {}


def coerce_record(raw: object) -> StagedEvent:
    """Re-check a record read back from the stream; ``ValueError`` makes it a dead letter."""
    if isinstance(raw, (list, tuple)) and len(raw) == len(RECORD_FIELDS) - 1:
        raw = _upgrade_legacy_record(raw)
    if not isinstance(raw, (list, tuple)) or len(raw) != len(RECORD_FIELDS):
        raise ValueError(f"malformed record: expected a list of {len(RECORD_FIELDS)} fields")
    record = StagedEvent(*raw)
    problems = {
        "event_id": check_event_id(record.event_id),
        "molam_id": check_molam_id(record.molam_id),
        "event_type": check_event_type(record.event_type),
        "value": None if record.value is None else check_value(record.value),
        "currency": None if record.currency is None else check_currency(record.currency),
        "amount_minor": (
            (None if record.amount_minor is None else "needs a currency") if record.currency is None
            else "is required with a currency" if record.amount_minor is None
            else "comes without a value" if record.value is not None
            else check_amount_minor(record.amount_minor)
        ),
        "metadata": check_metadata_json(record.metadata),
        "occurred_at": parse_timestamp(record.occurred_at)[1],
        "received_at": parse_timestamp(record.received_at)[1],
    }
    for name in ("experiment_id", "variant_id"):
        if parse_uuid(getattr(record, name)) is None:
            problems[name] = "must be a UUID"
    for name, problem in problems.items():
        if problem:
            raise ValueError(f"{name} {problem}")
    return record


def _upgrade_legacy_record(raw: list[Any] | tuple[Any, ...]) -> list[Any]:
    """A record staged before money was minor units: ``value`` in major units beside a currency.

    Converted exactly (its float's shortest decimal text) or refused as a dead letter;
    never written as a plain value that would be summed with other currencies.
    """
    value, currency = raw[5], raw[6]
    if currency is None:
        return [*raw, None]
    if not isinstance(currency, str) or currency not in MONEY_CURRENCIES:
        raise ValueError(f"currency {currency!r} is not a currency with a minor unit")
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError("value: a money event needs a numeric amount")
    minor, problem = money_amount(value, currency)
    if problem:
        raise ValueError(f"value: {problem}")
    return [*raw[:5], None, *raw[6:], minor]
