"""A group profile carries the gpt-realtime-2.x session features into every key it mints
(``client_secrets``): the admin API accepts them and the service echoes them back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
from openai.types.realtime import RealtimeSessionCreateRequest

from appliance.identity import enroll
from appliance.realtime.provisioning_keys import ProvisioningKeySource
from provisioning.server import ProvisioningServer
from tests.wire import extras

PROFILE: dict[str, Any] = {
    "type": "realtime",
    "model": "gpt-realtime-2.1",
    "reasoning": {"effort": "medium"},
    "parallel_tool_calls": True,
    "max_output_tokens": 1024,
    "truncation": {"type": "retention_ratio", "retention_ratio": 0.8},
    "audio": {
        "input": {
            "noise_reduction": {"type": "far_field"},
            "turn_detection": {"type": "semantic_vad", "eagerness": "low"},
        },
        "output": {"voice": "marin"},
    },
}


def test_the_profile_is_a_ga_session_object() -> None:
    assert extras(RealtimeSessionCreateRequest.model_validate(PROFILE)) == []


async def test_a_group_profile_carries_the_session_features_into_minted_keys(
    server: ProvisioningServer, tmp_path: Path
) -> None:
    admin = server.store.create_admin("ops")
    async with httpx.AsyncClient() as http:
        put = await http.put(
            f"{server.base_url}/v1/admin/groups/default",
            headers={"Authorization": f"Bearer {admin}"},
            json={"profile": PROFILE},
        )
    assert put.status_code == 200
    identity = await enroll(server.base_url, server.store.create_token("default"), tmp_path, "k")
    session = (await ProvisioningKeySource(identity).get_key()).session
    for key in ("model", "reasoning", "parallel_tool_calls", "max_output_tokens", "truncation"):
        assert session[key] == PROFILE[key], key
    wanted_input = PROFILE["audio"]["input"]
    assert session["audio"]["input"]["noise_reduction"] == wanted_input["noise_reduction"]
    assert session["audio"]["input"]["turn_detection"] == wanted_input["turn_detection"]
