"""End to end over real loopback WebRTC: stand-in + provisioning server + daemon on fake
hardware (WAV mic, mock GPIO), driven exactly as ``make demo`` drives it."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from appliance import machine as m
from appliance_dev.demo import Report, run_demo
from tests.wire import validate_client, validate_server

pytestmark = pytest.mark.slow  # a whole device in real time against the stand-in


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Report:
    work = tmp_path_factory.mktemp("demo")
    return asyncio.run(run_demo(work / "out", work, quiet=True))


def states(report: Report) -> list[m.State]:
    return [state for _, state in report.stats.states]


S = m.State
TWO_TURNS = [S.CONNECTING, S.LISTENING, S.THINKING, S.SPEAKING, S.IDLE]
TWO_TURNS += [S.LISTENING, S.THINKING, S.SPEAKING, S.IDLE]
"""Hold-to-talk turn, then a tap turn on the warm session (no second CONNECTING)."""


def test_both_turns_walk_the_states(report: Report) -> None:
    assert report.ok
    assert states(report) == TWO_TURNS


def test_the_tool_round_trip_happened(report: Report) -> None:
    assert report.stats.tool_calls == 1
    outputs = [
        e
        for e in report.client_events
        if e["type"] == "conversation.item.create" and e["item"]["type"] == "function_call_output"
    ]
    assert len(outputs) == 1
    assert '"time"' in outputs[0]["item"]["output"]
    assert (
        report.stats.transcripts[-1][0],
        report.stats.transcripts[-1][1][:6],
    ) == ("assistant", "It is ")


def test_transcripts_of_both_sides(report: Report) -> None:
    roles = [role for role, _ in report.stats.transcripts]
    assert roles == ["user", "assistant", "user", "assistant"]
    assert "moon" in report.stats.transcripts[1][1]


def test_answer_audio_reaches_the_speaker(report: Report) -> None:
    assert report.played is not None
    played = report.played.astype(np.float64)
    spoken = np.concatenate(report.spoken).astype(np.float64)
    assert np.sqrt(np.mean(played**2)) > 200, "no energy in the sink"

    # what the speaker played correlates with what the stand-in said (Opus is lossy,
    # so compare envelopes in 20 ms windows over the first reply)
    def envelope(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        n = x.size // 960
        out: npt.NDArray[np.float64] = np.sqrt((x[: n * 960].reshape(n, 960) ** 2).mean(axis=1))
        return out

    env_spoken, env_played = envelope(spoken[: 48000 * 3]), envelope(played)
    corr = np.correlate(env_played - env_played.mean(), env_spoken - env_spoken.mean(), "valid")
    norm = np.linalg.norm(env_spoken - env_spoken.mean()) * np.sqrt(
        np.convolve((env_played - env_played.mean()) ** 2, np.ones(env_spoken.size), "valid")
    )
    assert float(np.max(corr / np.maximum(norm, 1e-9))) > 0.8


def test_every_event_on_the_wire_is_valid_ga(report: Report) -> None:
    assert report.client_events
    assert report.server_events
    for event in report.client_events:
        assert "event_id" in event
        validate_client(event)
    for event in report.server_events:
        validate_server(event)


def test_make_demo_command_exits_zero(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "appliance_dev.demo", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "demo OK" in result.stdout
    assert (tmp_path / "answer.wav").stat().st_size > 48000
