"""Request, query and response schemas for the experiments resource."""
from __future__ import annotations

import datetime as dt
import json
from typing import Any

import marshmallow as ma
from marshmallow import fields, validate, validates_schema

from core import jsonsafe, rbac
from core.codes import COUNTRIES, CURRENCIES, LANGUAGES
from core.money import MONEY_CURRENCIES
from models import Experiment
from models.enums import (
    DEFAULT_GUARDRAILS,
    EVENT_TYPES,
    FAIL_FAST_ACTIONS,
    FAIL_FAST_RULES,
    GUARDRAIL_ACTIONS,
    MODES,
    STATUSES,
)
from services.analysis.inputs import DEFAULT_BANDIT_WINDOW_S, attribution_windows
from sira.bandit import BanditConfig
from sira.failfast import DEFAULT_FAIL_FAST_ACTION, DEFAULT_GUARDRAIL_ACTION, DEFAULT_GUARDRAIL_MARGIN, FailFastConfig

MAX_CONFIG_BYTES = 16 * 1024
MIN_VARIANTS, MAX_VARIANTS = 2, 20


class StrictSchema(ma.Schema):
    class Meta:
        unknown = ma.RAISE


def _code_in(codes: frozenset[str], what: str, upper: bool):
    def check(value: str) -> None:
        if (upper and value != value.upper()) or (not upper and value != value.lower()):
            raise ma.ValidationError(f"{value!r} must be {'upper' if upper else 'lower'}-case {what}")
        if value not in codes:
            raise ma.ValidationError(f"{value!r} is not a known {what}")

    return check


def _json_object_under(limit: int, what: str):
    """A JSON object ``jsonb`` can store (finite numbers, no NUL, no unpaired surrogate), under ``limit`` bytes."""

    def check(value: dict) -> None:
        problems = jsonsafe.find_problems(value)
        if problems:
            raise ma.ValidationError([f"{problem} (at {jsonsafe.dotted(path)})" for path, problem in problems])
        size = len(json.dumps(value, separators=(",", ":")).encode())
        if size >= limit:
            raise ma.ValidationError(f"{what} is {size} bytes; it must be under {limit} bytes")

    return check


def _unique_list(values: list) -> None:
    if len(set(values)) != len(values):
        raise ma.ValidationError("values must be unique")


class TargetingSchema(StrictSchema):
    country = fields.List(
        fields.String(validate=_code_in(COUNTRIES, "ISO 3166-1 alpha-2 country code", upper=True)),
        validate=[validate.Length(min=1, max=250), _unique_list],
    )
    lang = fields.List(
        fields.String(validate=_code_in(LANGUAGES, "ISO 639 language code", upper=False)),
        validate=[validate.Length(min=1, max=200), _unique_list],
    )
    currency = fields.List(
        fields.String(validate=_code_in(CURRENCIES, "ISO 4217 currency code", upper=True)),
        validate=[validate.Length(min=1, max=200), _unique_list],
    )
    region = fields.List(fields.String(validate=validate.Length(min=1, max=64)), validate=[validate.Length(min=1, max=500), _unique_list])
    device = fields.List(fields.String(validate=validate.Length(min=1, max=32)), validate=[validate.Length(min=1, max=50), _unique_list])
    min_txn = fields.Integer(strict=True, validate=validate.Range(min=0))


class VariantInSchema(StrictSchema):
    name = fields.String(required=True, validate=validate.Length(min=1, max=200))
    config = fields.Dict(keys=fields.String(), load_default=dict, validate=_json_object_under(MAX_CONFIG_BYTES, "config"))
    traffic_share = fields.Decimal(required=True, places=2, validate=validate.Range(min=0, max=100), as_string=False, metadata={"minimum": 0, "maximum": 100})
    is_control = fields.Boolean(load_default=False)


#: SIRA's defaults, from its own config classes (the one place that sets them).
_FAIL_FAST, _BANDIT = FailFastConfig(), BanditConfig()


class FailFastSchema(StrictSchema):
    rule = fields.String(load_default=_FAIL_FAST.rule, validate=validate.OneOf(FAIL_FAST_RULES))
    min_samples = fields.Integer(strict=True, load_default=_FAIL_FAST.min_samples, validate=validate.Range(min=1, max=10_000_000))
    threshold = fields.Float(load_default=_FAIL_FAST.threshold, validate=validate.Range(min=0.5, max=0.999999))
    action = fields.String(load_default=DEFAULT_FAIL_FAST_ACTION, validate=validate.OneOf(FAIL_FAST_ACTIONS))


class BanditSettingsSchema(StrictSchema):
    min_samples = fields.Integer(strict=True, load_default=_BANDIT.min_samples, validate=validate.Range(min=0, max=10_000_000))
    floor = fields.Float(load_default=_BANDIT.floor, validate=validate.Range(min=0.0, max=0.5))


MAX_ATTRIBUTION_WINDOW_S = 90 * 24 * 3600


def _attribution_window_field(**kwargs: Any) -> fields.Dict:
    return fields.Dict(
        keys=fields.String(validate=validate.OneOf(EVENT_TYPES)),
        values=fields.Integer(strict=True, allow_none=True, validate=validate.Range(min=0, max=MAX_ATTRIBUTION_WINDOW_S)),
        allow_none=True,
        metadata={
            "description": (
                "Attribution window per event type, in seconds (null: none). A user counts for the bandit and "
                "fail-fast once the window since assignment has closed, with the events inside it. Event types "
                f"left out get the mode's default ({DEFAULT_BANDIT_WINDOW_S} s for bandits, none for fixed splits)."
            )
        },
        **kwargs,
    )


def _guardrail_margin_field(**kwargs: Any) -> fields.Float:
    return fields.Float(
        validate=validate.Range(min=0.0, max=10.0),
        metadata={
            "description": (
                "Non-inferiority margin of the guardrails, relative: a variant is flagged only when its guardrail "
                "ratio is credibly more than (1 + margin) times control's."
            ),
            "minimum": 0,
            "maximum": 10,
        },
        **kwargs,
    )


def validate_variants(variants: list[dict]) -> dict[str, list[str]]:
    """Cross-variant rules; returns field errors keyed like marshmallow does."""
    problems: list[str] = []
    if not MIN_VARIANTS <= len(variants) <= MAX_VARIANTS:
        problems.append(f"an experiment needs {MIN_VARIANTS} to {MAX_VARIANTS} variants, got {len(variants)}")
    total = sum(v["traffic_share"] for v in variants)
    if total != 100:
        problems.append(f"traffic shares must sum to exactly 100, got {total}")
    controls = sum(1 for v in variants if v.get("is_control"))
    if controls != 1:
        problems.append(f"exactly one variant must be the control, got {controls}")
    names = [v["name"] for v in variants]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        problems.append(f"variant names must be unique; repeated: {', '.join(duplicates)}")
    return {"variants": problems} if problems else {}


def _reporting_currency() -> fields.String:
    return fields.String(
        validate=_code_in(MONEY_CURRENCIES, "ISO 4217 currency code with a minor unit", upper=True),
        metadata={"description": "Money results are converted into it (default: the REPORTING_CURRENCY setting)."},
    )


def _value_cap_percentile(**kwargs: Any) -> fields.Float:
    return fields.Float(
        allow_none=True,
        validate=validate.Range(min=50, max=100, max_inclusive=False),
        metadata={
            "description": "Per-user revenue above this percentile (users with revenue, arms pooled) is capped "
            "for the per-user statistics; null: no capping.",
            "minimum": 50, "exclusiveMaximum": 100,
        },
        **kwargs,
    )


MAX_HOLDOUTS = 20


def percent_field(description: str, maximum: float = 100, **kwargs: Any) -> fields.Decimal:
    """A percentage in (0, maximum] with two decimals (exact: hundredths are buckets)."""
    return fields.Decimal(
        places=2,
        validate=validate.Range(min=0, max=maximum, min_inclusive=False),
        as_string=False,
        metadata={"minimum": 0, "exclusiveMinimum": True, "maximum": maximum, "description": description},
        **kwargs,
    )


def _utc_field(description: str) -> fields.AwareDateTime:
    return fields.AwareDateTime(
        format="iso", default_timezone=dt.timezone.utc, allow_none=True, metadata={"description": description}
    )


MAX_ALLOWED_SERVICES = 64


def _service_role(value: str) -> None:
    if not rbac.is_service_role_name(value):
        raise ma.ValidationError(f"unknown service role {value!r}: service roles are named <product>_module")


class DesignFieldsMixin(ma.Schema):
    """Layer, holdouts, approval and schedule fields (cross-field rules: services.experiments.lifecycle)."""

    category = fields.String(
        allow_none=True,
        validate=validate.Length(min=1, max=64),
        metadata={"description": 'Free-form tag; "pricing" always requires approval.'},
    )
    requires_approval = fields.Boolean(metadata={"description": "Four-eyes approval before start."})
    layer_id = fields.UUID(allow_none=True, metadata={"description": "Layer of mutually exclusive experiments."})
    layer_allocation = percent_field("Percent of the layer's traffic this experiment takes.", allow_none=True)
    holdout_ids = fields.List(fields.UUID(), validate=[validate.Length(max=MAX_HOLDOUTS), _unique_list])
    start_at = _utc_field("Scheduled start (ISO 8601; UTC when no offset is given).")
    end_at = _utc_field("Scheduled stop (ISO 8601; UTC when no offset is given).")
    allowed_services = fields.List(
        fields.String(validate=_service_role),
        allow_none=True,
        validate=[validate.Length(max=MAX_ALLOWED_SERVICES), _unique_list],
        metadata={
            "description": "Service roles (e.g. pay_module) that may assign and track on the experiment; "
            "null or absent: every service role (ops_admin is never limited). Settable while draft."
        },
    )


class ExperimentCreateSchema(StrictSchema, DesignFieldsMixin):
    name = fields.String(required=True, validate=validate.Length(min=1, max=200))
    description = fields.String(load_default="", validate=validate.Length(max=10_000))
    targeting = fields.Nested(TargetingSchema, load_default=dict)
    variants = fields.List(fields.Nested(VariantInSchema), required=True)
    mode = fields.String(load_default="ab", validate=validate.OneOf(MODES))
    coverage = fields.Decimal(
        load_default=100,
        places=2,
        validate=validate.Range(min=0, max=100, min_inclusive=False),
        as_string=False,
        metadata={"minimum": 0, "exclusiveMinimum": True, "maximum": 100, "default": 100},
    )
    primary_metric = fields.String(load_default="conversion", validate=validate.OneOf(EVENT_TYPES))
    fail_fast = fields.Nested(FailFastSchema, load_default=lambda: FailFastSchema().load({}))
    guardrails = fields.List(
        fields.String(validate=validate.OneOf(EVENT_TYPES)),
        load_default=lambda: list(DEFAULT_GUARDRAILS),
        validate=_unique_list,
    )
    guardrail_action = fields.String(load_default=DEFAULT_GUARDRAIL_ACTION, validate=validate.OneOf(GUARDRAIL_ACTIONS))
    guardrail_margin = _guardrail_margin_field(load_default=DEFAULT_GUARDRAIL_MARGIN)
    bandit = fields.Nested(BanditSettingsSchema, load_default=lambda: BanditSettingsSchema().load({}))
    attribution_window_s = _attribution_window_field(load_default=None)
    reporting_currency = _reporting_currency()
    value_cap_percentile = _value_cap_percentile(load_default=99.5)

    @validates_schema
    def check_variants(self, data: dict, **kwargs: Any) -> None:
        errors = validate_variants(data.get("variants") or [])
        if errors:
            raise ma.ValidationError(errors)


class ExperimentUpdateSchema(StrictSchema, DesignFieldsMixin):
    """PATCH: every field optional; a running or stopped experiment accepts only name/description."""

    name = fields.String(validate=validate.Length(min=1, max=200))
    description = fields.String(validate=validate.Length(max=10_000))
    targeting = fields.Nested(TargetingSchema)
    variants = fields.List(fields.Nested(VariantInSchema))
    mode = fields.String(validate=validate.OneOf(MODES))
    coverage = fields.Decimal(
        places=2,
        validate=validate.Range(min=0, max=100, min_inclusive=False),
        as_string=False,
        metadata={"minimum": 0, "exclusiveMinimum": True, "maximum": 100},
    )
    primary_metric = fields.String(validate=validate.OneOf(EVENT_TYPES))
    fail_fast = fields.Nested(FailFastSchema)
    guardrails = fields.List(fields.String(validate=validate.OneOf(EVENT_TYPES)), validate=_unique_list)
    guardrail_action = fields.String(validate=validate.OneOf(GUARDRAIL_ACTIONS))
    guardrail_margin = _guardrail_margin_field()
    bandit = fields.Nested(BanditSettingsSchema)
    attribution_window_s = _attribution_window_field()
    reporting_currency = _reporting_currency()
    value_cap_percentile = _value_cap_percentile()

    @validates_schema
    def check_variants(self, data: dict, **kwargs: Any) -> None:
        if "variants" in data:
            errors = validate_variants(data["variants"])
            if errors:
                raise ma.ValidationError(errors)


class VariantOutSchema(ma.Schema):
    id = fields.UUID()
    name = fields.String()
    config = fields.Dict()
    traffic_share = fields.Float()
    is_control = fields.Boolean()
    paused = fields.Boolean()
    paused_reason = fields.String(allow_none=True)


class ExperimentOutSchema(ma.Schema):
    id = fields.UUID()
    name = fields.String()
    description = fields.String()
    status = fields.String()
    mode = fields.String()
    coverage = fields.Float()
    primary_metric = fields.String()
    targeting = fields.Dict()
    fail_fast = fields.Dict()
    guardrails = fields.Method("dump_guardrails")
    guardrail_action = fields.Method("dump_guardrail_action")
    guardrail_margin = fields.Method("dump_guardrail_margin")
    bandit = fields.Dict()
    attribution_window_s = fields.Method("dump_attribution_window_s")
    reporting_currency = fields.String()
    value_cap_percentile = fields.Float(allow_none=True)
    variants = fields.List(fields.Nested(VariantOutSchema))
    created_by = fields.String()
    created_at = fields.DateTime()
    updated_at = fields.DateTime()
    started_at = fields.DateTime(allow_none=True)
    stopped_at = fields.DateTime(allow_none=True)
    version = fields.Integer()
    category = fields.String(allow_none=True)
    requires_approval = fields.Boolean()
    layer_id = fields.UUID(allow_none=True)
    layer_allocation = fields.Float(allow_none=True)
    layer_range = fields.Method("dump_layer_range", metadata={"description": "[start, end) buckets owned while running, else null."})
    holdout_ids = fields.List(fields.UUID())
    start_at = fields.DateTime(allow_none=True)
    end_at = fields.DateTime(allow_none=True)
    allowed_services = fields.List(
        fields.String(), allow_none=True, metadata={"description": "null: every service role may assign and track."}
    )

    def dump_layer_range(self, experiment: Experiment) -> dict[str, int | None] | None:
        if experiment.layer_range_start is None:
            return None
        return {"start": experiment.layer_range_start, "end": experiment.layer_range_end}

    def dump_guardrails(self, experiment: Experiment) -> list[str]:
        return list(experiment.guardrails.get("event_types", []))

    def dump_guardrail_margin(self, experiment: Experiment) -> float:
        return float(experiment.guardrails.get("margin", DEFAULT_GUARDRAIL_MARGIN))

    def dump_attribution_window_s(self, experiment: Experiment) -> dict[str, int | None]:
        """The windows in force: the configured ones, the mode's default for the rest."""
        return attribution_windows(experiment.mode, experiment.attribution_window_s)

    def dump_guardrail_action(self, experiment: Experiment) -> str | None:
        return experiment.guardrails.get("action")


class QuerySchema(ma.Schema):
    """Query strings also carry pagination parameters, parsed separately."""

    class Meta:
        unknown = ma.EXCLUDE


class ExperimentListQuerySchema(QuerySchema):
    status = fields.String(validate=validate.OneOf(STATUSES))
    mode = fields.String(validate=validate.OneOf(MODES))
    q = fields.String(validate=validate.Length(min=1, max=200), metadata={"description": "case-insensitive substring of the name"})
    created_by = fields.String(validate=validate.Length(min=1, max=200), metadata={"description": "the owner (creator's sub)"})
    layer_id = fields.UUID(metadata={"description": "experiments of this layer"})


class AuditQuerySchema(QuerySchema):
    experiment_id = fields.UUID()


class AuditEntryOutSchema(ma.Schema):
    id = fields.Integer()
    experiment_id = fields.UUID(allow_none=True)
    actor = fields.String()
    actor_roles = fields.List(fields.String())
    action = fields.String()
    before = fields.Dict(allow_none=True)
    after = fields.Dict(allow_none=True)
    request_id = fields.String(allow_none=True)
    client_ip = fields.String(allow_none=True)
    created_at = fields.DateTime()
    prev_hash = fields.String()
    hash = fields.String()


class AuditCheckpointOutSchema(ma.Schema):
    id = fields.Integer()
    entry_id = fields.Integer()
    entry_hash = fields.String()
    entries = fields.Integer()
    created_at = fields.String()
    key_id = fields.String()
    signature = fields.String()


class AuditCheckpointQuerySchema(QuerySchema):
    after_id = fields.Integer(validate=validate.Range(min=0, max=2**62))


class AuditVerifyQuerySchema(QuerySchema):
    full = fields.Boolean(load_default=False)


class AuditVerifyOutSchema(ma.Schema):
    ok = fields.Boolean()
    entries = fields.Integer()
    first_bad_id = fields.Integer(allow_none=True)
    reason = fields.String(allow_none=True)
    mode = fields.String()
    verified_entries = fields.Integer()
    legacy_entries = fields.Integer()
    legacy_through_id = fields.Integer(allow_none=True)
    from_checkpoint = fields.Nested(AuditCheckpointOutSchema, allow_none=True)
    head_id = fields.Integer(allow_none=True)
    head_hash = fields.String(allow_none=True)
    checkpoints_verified = fields.Integer(allow_none=True)
    duration_ms = fields.Float()


class AuditVerifyJobOutSchema(ma.Schema):
    job_id = fields.UUID(attribute="id")
    status = fields.String()
    requested_by = fields.String()
    requested_at = fields.DateTime()
    started_at = fields.DateTime(allow_none=True)
    finished_at = fields.DateTime(allow_none=True)
    result = fields.Nested(AuditVerifyOutSchema, allow_none=True)
    error = fields.String(allow_none=True)
    status_url = fields.Method("_status_url")

    def _status_url(self, job) -> str:
        return f"/api/audit/verify/{job.id}"
