"""The rule file: both spellings, per-turn transcripts, tool templates, bad files refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from standin import StandIn, StandInConfig
from standin.script import Script
from tests.peer import GaPeer
from tests.standin.conftest import API_KEY, mint

LONG_FORM = """
[[rule]]
on_turn = 1
transcript = "what time is it"

[[rule]]
when_transcript_contains = "weather"
say = "Heard about the weather."

[[rule]]
when_text_contains = "time"
call = { name = "get_time", arguments = { tz = "UTC" } }
after_tool_say = "It is {output.time} in {output.zone}."

[[rule]]
default = true
say = "You said {text}."
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "script.toml"
    path.write_text(text)
    return path


def test_long_form_rules(tmp_path: Path) -> None:
    script = Script.load(write(tmp_path, LONG_FORM))
    assert script.transcript(1) == "what time is it"
    assert script.transcript(2) == ""
    call = script.decide(1, "what time is it", {"get_time"})
    assert (call.call, json.loads(call.arguments)) == ("get_time", {"tz": "UTC"})
    spoken = Script.after_tool(call.then_say, '{"time": "10:42", "zone": "UTC"}')
    assert spoken == "It is 10:42 in UTC."
    assert script.decide(2, "the weather", set()).say == "You said the weather.", "typed text"
    assert script.decide(2, "the weather", set(), audio=True).say == "Heard about the weather."
    no_tool = script.decide(1, "what time is it", set())
    assert no_tool.say == "You said what time is it.", "an undeclared tool is never called"


def test_shipped_script_loads() -> None:
    script = Script.load(None)
    assert script.decide(1, "what time is it", {"get_time"}).call == "get_time"


@pytest.mark.parametrize(
    "rule",
    [
        'when_contains = "a"\nwhen_text_contains = "b"\nsay = "x"',
        'call = { name = "t", extra = 1 }',
        'call = { name = "t" }\narguments = {}',
        'sya = "typo"',
    ],
)
def test_bad_rules_are_refused(tmp_path: Path, rule: str) -> None:
    with pytest.raises(ValueError, match="script rule"):
        Script.load(write(tmp_path, f"[[rule]]\n{rule}\n"))


@pytest.mark.slow  # a WebRTC call in real time
async def test_long_form_rule_file_drives_a_tool_round_trip(tmp_path: Path) -> None:
    config = StandInConfig(api_key=API_KEY, script=write(tmp_path, LONG_FORM), tts="assets")
    tool = {"type": "function", "name": "get_time", "parameters": {"type": "object"}}
    async with StandIn(config) as standin:
        key = await mint(standin.base_url, {"type": "realtime", "tools": [tool]})
        peer = GaPeer(standin.base_url, key)
        assert (await peer.connect()).status_code == 201
        await peer.wait_for("session.created")
        peer.ask("what time is it")
        args = await peer.wait_for("response.function_call_arguments.done", within=10)
        assert json.loads(args["arguments"]) == {"tz": "UTC"}
        await peer.wait_for("response.done")
        output = json.dumps({"time": "10:42", "zone": "UTC"})
        peer.send(
            {
                "type": "conversation.item.create",
                "item": {
                    "type": "function_call_output",
                    "call_id": args["call_id"],
                    "output": output,
                },
            }
        )
        peer.send({"type": "response.create"})
        done = await peer.wait_for("response.output_audio_transcript.done", within=15)
        assert done["transcript"] == "It is 10:42 in UTC."
        await peer.close()
