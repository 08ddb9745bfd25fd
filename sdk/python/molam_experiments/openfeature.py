"""An OpenFeature provider backed by a :class:`molam_experiments.Client`.

Flag key = experiment id. ``resolve_object_details`` gives the variant's ``config``
as the value and the variant name as ``variant``; ``resolve_string_details`` the
variant name; the typed resolvers read one key of the config when the flag key is
``"<experiment id>/<config key>"``. The evaluation context's ``targeting_key`` is the
Molam ID and its attributes ``country``, ``lang``, ``currency``, ``region``, ``device``,
``txn_count`` the assignment context (other attributes are ignored).

Reasons: ``TARGETING_MATCH`` (assigned in an experiment with targeting rules),
``SPLIT`` (assigned, no targeting), ``DISABLED`` (experiment not running: default
value), ``DEFAULT`` (user not eligible: targeting, coverage; default value),
``ERROR`` (no definitions or server unreachable where it decides: default value).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from openfeature.evaluation_context import EvaluationContext
from openfeature.exception import ErrorCode
from openfeature.flag_evaluation import FlagResolutionDetails, Reason
from openfeature.provider import AbstractProvider, Metadata

from .client import Client
from .evaluation import CONTEXT_KEYS

_MISSING = object()


class MolamProvider(AbstractProvider):
    def __init__(self, client: Client):
        super().__init__()
        self._client = client

    def get_metadata(self) -> Metadata:
        return Metadata(name="molam-experiments")

    def shutdown(self) -> None:
        self._client.flush()

    # --- resolution --------------------------------------------------------------------

    def _assignment(self, experiment_id: str, context: EvaluationContext | None):
        if context is None or not context.targeting_key:
            return None, FlagResolutionDetails(
                value=None, reason=Reason.ERROR, error_code=ErrorCode.TARGETING_KEY_MISSING,
                error_message="the evaluation context needs a targeting_key (the Molam ID)",
            )
        attributes = {k: v for k, v in (context.attributes or {}).items() if k in CONTEXT_KEYS}
        try:
            assignment = self._client.assign(experiment_id, context.targeting_key, **attributes)
        except (TypeError, ValueError) as exc:
            return None, FlagResolutionDetails(value=None, reason=Reason.ERROR, error_code=ErrorCode.INVALID_CONTEXT,
                                               error_message=str(exc))
        return assignment, None

    def _resolve(self, flag_key: str, default: Any, context: EvaluationContext | None, pick) -> FlagResolutionDetails:
        experiment_id, _, config_key = flag_key.partition("/")
        assignment, error = self._assignment(experiment_id, context)
        if error is not None:
            return FlagResolutionDetails(value=default, reason=error.reason, error_code=error.error_code,
                                         error_message=error.error_message)
        metadata = {"experiment_id": experiment_id, "source": assignment.source}
        if not assignment.eligible:
            metadata["ineligible_reason"] = assignment.reason or ""
            if assignment.reason == "not_running":
                return FlagResolutionDetails(value=default, reason=Reason.DISABLED, flag_metadata=metadata)
            if assignment.reason in ("unavailable", "invalid_context"):
                return FlagResolutionDetails(
                    value=default, reason=Reason.ERROR, flag_metadata=metadata,
                    error_code=ErrorCode.PROVIDER_NOT_READY if assignment.reason == "unavailable" else ErrorCode.INVALID_CONTEXT,
                    error_message=f"assignment {assignment.reason}",
                )
            return FlagResolutionDetails(value=default, reason=Reason.DEFAULT, flag_metadata=metadata)
        metadata.update(variant_id=assignment.variant_id, is_control=bool(assignment.is_control))
        value = pick(assignment, config_key)
        if value is _MISSING:
            return FlagResolutionDetails(
                value=default, reason=Reason.ERROR, variant=assignment.variant_name, flag_metadata=metadata,
                error_code=ErrorCode.TYPE_MISMATCH,
                error_message=f"variant {assignment.variant_name!r} has no value of the requested type for {flag_key!r}",
            )
        experiment = self._client.experiment(experiment_id)
        targeted = experiment is not None and bool(experiment.targeting)
        return FlagResolutionDetails(
            value=value, reason=Reason.TARGETING_MATCH if targeted else Reason.SPLIT,
            variant=assignment.variant_name, flag_metadata=metadata,
        )

    @staticmethod
    def _typed(kind: type | tuple[type, ...]):
        def pick(assignment, config_key: str) -> Any:
            if not config_key:
                return _MISSING
            value = (assignment.config or {}).get(config_key, _MISSING)
            if value is _MISSING or not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
                return _MISSING
            return value

        return pick

    def resolve_object_details(
        self, flag_key: str, default_value: Sequence[Any] | Mapping[str, Any], evaluation_context: EvaluationContext | None = None
    ) -> FlagResolutionDetails:
        def pick(assignment, config_key: str) -> Any:
            if not config_key:
                return assignment.config
            value = (assignment.config or {}).get(config_key, _MISSING)
            return value if isinstance(value, (Mapping, list)) else _MISSING

        return self._resolve(flag_key, default_value, evaluation_context, pick)

    def resolve_string_details(self, flag_key: str, default_value: str, evaluation_context: EvaluationContext | None = None):
        typed = self._typed(str)

        def pick(assignment, config_key: str) -> Any:
            return assignment.variant_name if not config_key else typed(assignment, config_key)

        return self._resolve(flag_key, default_value, evaluation_context, pick)

    def resolve_boolean_details(self, flag_key: str, default_value: bool, evaluation_context: EvaluationContext | None = None):
        return self._resolve(flag_key, default_value, evaluation_context, self._typed(bool))

    def resolve_integer_details(self, flag_key: str, default_value: int, evaluation_context: EvaluationContext | None = None):
        return self._resolve(flag_key, default_value, evaluation_context, self._typed(int))

    def resolve_float_details(self, flag_key: str, default_value: float, evaluation_context: EvaluationContext | None = None):
        return self._resolve(flag_key, default_value, evaluation_context, self._typed((int, float)))

    def track(self, tracking_event_name: str, evaluation_context: EvaluationContext | None = None,
              tracking_event_details: Any = None) -> None:
        """OpenFeature tracking → ``client.track``: needs the targeting key and an
        ``experiment_id`` attribute in the details; ``value`` is the event value."""
        if evaluation_context is None or not evaluation_context.targeting_key or tracking_event_details is None:
            return
        attributes = dict(getattr(tracking_event_details, "attributes", None) or {})
        experiment_id = attributes.pop("experiment_id", None)
        if not experiment_id:
            return
        fields: dict[str, Any] = {}
        value = getattr(tracking_event_details, "value", None)
        if value is not None:
            fields["value"] = value
        for key in ("currency", "event_id", "variant_id", "occurred_at"):
            if key in attributes:
                fields[key] = attributes.pop(key)
        if attributes:
            fields["metadata"] = attributes
        self._client.track(experiment_id, evaluation_context.targeting_key, tracking_event_name, **fields)
