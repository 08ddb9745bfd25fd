"""The OpenFeature provider through the OpenFeature SDK, against the real API."""
from __future__ import annotations

import pytest
from openfeature import api
from openfeature.evaluation_context import EvaluationContext
from openfeature.flag_evaluation import Reason

from molam_experiments import Client
from molam_experiments.openfeature import MolamProvider


@pytest.fixture
def flags(live_api, service_token):
    client = Client(live_api, service_token, refresh=60)
    api.set_provider(MolamProvider(client))
    yield api.get_client()
    api.clear_providers()
    client.close(timeout_s=5)


def test_object_value_variant_and_reasons(flags, client, auth, create_experiment, live_api, service_token):
    targeted = create_experiment(start=True, targeting={"country": ["SN"]})
    plain = create_experiment(start=True, targeting={}, name="plain")
    stopped = create_experiment(name="never started")
    api.set_provider(MolamProvider(Client(live_api, service_token, refresh=60)))
    flags = api.get_client()
    context = EvaluationContext(targeting_key="of-user", attributes={"country": "SN", "unrelated": 1})
    details = flags.get_object_details(targeted["id"], {"button_color": "grey"}, context)
    assert details.reason == Reason.TARGETING_MATCH
    variant = next(v for v in targeted["variants"] if v["name"] == details.variant)
    assert details.value == variant["config"]
    assert details.flag_metadata["variant_id"] == variant["id"]
    assert flags.get_object_details(plain["id"], {}, context).reason == Reason.SPLIT
    color = flags.get_string_details(f"{plain['id']}/button_color", "grey", context)
    assert color.value in ("blue", "green") and color.reason == Reason.SPLIT
    assert flags.get_string_value(plain["id"], "none", context) in {v["name"] for v in plain["variants"]}
    disabled = flags.get_object_details(stopped["id"], {"button_color": "grey"}, context)
    assert disabled.reason == Reason.DISABLED and disabled.value == {"button_color": "grey"}
    outside = flags.get_object_details(targeted["id"], {"button_color": "grey"},
                                       EvaluationContext(targeting_key="newcomer", attributes={"country": "FR"}))
    assert outside.reason == Reason.DEFAULT and outside.value == {"button_color": "grey"}
    mismatch = flags.get_boolean_details(f"{plain['id']}/button_color", False, context)
    assert mismatch.value is False and mismatch.error_code is not None
    missing_key = flags.get_object_details(plain["id"], {}, EvaluationContext())
    assert missing_key.error_code is not None and missing_key.value == {}
