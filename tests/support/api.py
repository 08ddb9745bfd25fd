"""The test identity provider's claims and request bodies built like the seed's examples."""
from __future__ import annotations

import uuid
from typing import Any

TEST_ISSUER = "https://id.molam.test"
TEST_AUDIENCE = "molam-experiments"


def experiment_body(**overrides: Any) -> dict[str, Any]:
    """The seed's example experiment, with overrides."""
    body: dict[str, Any] = {
        "name": "Checkout Button Color",
        "description": "Test blue vs green button",
        "targeting": {"country": ["SN", "FR"], "lang": ["fr"]},
        "variants": [
            {"name": "Control (Blue)", "config": {"button_color": "blue"}, "traffic_share": 50, "is_control": True},
            {"name": "Green Button", "config": {"button_color": "green"}, "traffic_share": 50},
        ],
    }
    body.update(overrides)
    return body


def new_id() -> str:
    return str(uuid.uuid4())
