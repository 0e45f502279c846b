"""Telemetry as pure functions of a reading, and the heartbeat through its small Protocol."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from appliance import machine as m
from appliance import telemetry
from appliance.errors import ProvisioningError, ProvisioningUnavailable
from appliance.heartbeat import send
from appliance.machine import State


def reading(state: State = State.IDLE, **snap: object) -> telemetry.Vitals:
    snapshot = replace(m.Snapshot(), state=state, **snap)  # type: ignore[arg-type]
    return telemetry.Vitals(snapshot, telemetry.Stats(), wake_word="", echo=None)


def test_the_status_line_says_what_the_device_is_doing() -> None:
    assert telemetry.status_text(reading()) == "idle, press the button to talk"
    wake = replace(reading(), wake_word="alexa")
    assert telemetry.status_text(wake) == "idle, wake word alexa"
    assert telemetry.status_text(reading(State.SPEAKING)) == "in conversation (speaking)"
    offline = reading(State.OFFLINE, retry_s=8.0)
    offline.stats.last_error = "DNS failed"
    assert telemetry.status_text(offline) == "offline: DNS failed, retry in 8 s"
    assert telemetry.status_text(reading(State.ERROR)) == "error: unknown"
    assert telemetry.status_text(reading(State.MUTED)) == "muted"


def test_counters_follow_the_state_changes() -> None:
    stats = telemetry.Stats()
    snap = m.Snapshot()
    stats.woke = True  # the wake word, and then nobody spoke
    stats.entered(State.LISTENING, State.IDLE, snap, 1.0)
    assert (stats.false_wakes, stats.woke) == (1, False)
    stats.entered(State.LISTENING, State.THINKING, snap, 10.0)
    stats.entered(State.THINKING, State.SPEAKING, snap, 10.25)
    assert (stats.turns, stats.last_turn_latency_ms) == (1, 250.0)
    stats.entered(State.OFFLINE, State.CONNECTING, replace(snap, resume=True), 11.0)
    stats.entered(State.OFFLINE, State.CONNECTING, snap, 12.0)  # a press, not a reconnect
    assert stats.reconnects == 1
    assert [state for _, state in stats.states][-1] is State.CONNECTING


def test_the_health_report_carries_no_more_than_it_should() -> None:
    vitals = reading(State.IDLE)
    vitals.stats.transcripts += [("user", "what time is it"), ("assistant", "ten " * 100)]
    vitals.stats.false_wakes = 2
    report = telemetry.health(vitals, uptime_s=3600.0, interval_s=60.0)
    assert report["uptime_s"] == 3600
    assert report["aec"] == "none"
    assert report["false_wakes_per_hour"] == 2.0
    assert report["heartbeat_s"] == 60.0
    assert report["last_turn"]["user"] == "what time is it"
    assert len(report["last_turn"]["assistant"]) == telemetry.SUMMARY_CHARS
    assert "last_turn" not in telemetry.health(vitals, 1.0, transcripts=False)


class Device:
    """A device as the heartbeat sees it (no App needed)."""

    def __init__(self) -> None:
        self.reachable: list[bool] = []

    def vitals(self) -> telemetry.Vitals:
        return reading(State.IDLE)

    def server_unreachable(self, exc: ProvisioningError) -> None:
        self.reachable.append(False)

    def server_reachable(self) -> None:
        self.reachable.append(True)


class Server:
    def __init__(self, down: bool) -> None:
        self.down = down
        self.reports: list[dict[str, Any]] = []
        self.rotations = 0

    async def heartbeat(self, health: dict[str, Any]) -> dict[str, Any]:
        if self.down:
            raise ProvisioningUnavailable("connection refused")
        self.reports.append(health)
        return {"rotate_key": True} if len(self.reports) == 2 else {}

    async def rotate_key(self) -> None:
        self.rotations += 1


async def test_a_heartbeat_tells_the_device_whether_the_server_answers() -> None:
    device, up, down = Device(), Server(down=False), Server(down=True)
    assert await send(up, device, started=0.0)
    assert up.reports[0]["state"] == "idle"
    assert not await send(down, device, started=0.0)
    assert device.reachable == [True, False]
    assert up.rotations == 0
    assert await send(up, device, started=0.0)
    assert up.rotations == 1, "the server's reply asked for a new key"
