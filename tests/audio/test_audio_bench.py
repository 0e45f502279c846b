"""The audio bench's subset switches (``BENCH_AUDIO_CONDITIONS``, ``BENCH_AUDIO_RUNS``)."""

from __future__ import annotations

import pytest

from appliance_dev.bench import audio


def test_a_subset_runs_only_what_was_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(audio, "ONLY_CONDITIONS", "bench")
    monkeypatch.setattr(audio, "ONLY_RUNS", "speex")
    rows = audio.run(rooms=1)
    names = [name for name, _ in rows]
    assert names[0].startswith("rooms: bench")
    assert any(n.startswith("speex, issue 18 | bench: barge-in") for n in names)
    assert not [n for n in names[1:] if "today" in n or "webrtc" in n or "hard" in n]


@pytest.mark.parametrize(("attr", "value"), [("ONLY_CONDITIONS", "kitchen"), ("ONLY_RUNS", "aec9")])
def test_an_unknown_name_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, attr: str, value: str
) -> None:
    monkeypatch.setattr(audio, attr, value)
    with pytest.raises(ValueError, match=f"unknown .* {value} \\(one of "):
        audio.run(rooms=1)
