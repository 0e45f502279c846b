from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from appliance.config import load
from appliance.errors import EX_CONFIG, ConfigError


def test_defaults_without_a_file() -> None:
    config = load(None, {})
    assert config.audio.backend == "alsa"
    assert config.realtime.voice == "marin"


def test_file_then_environment(tmp_path: Path) -> None:
    path = tmp_path / "appliance.toml"
    path.write_text('[audio]\nbackend = "wav"\ncapture_rate = 48000\n[realtime]\nvoice = "cedar"\n')
    env = {"APPLIANCE_REALTIME_VOICE": "ash", "APPLIANCE_SESSION_NO_SPEECH_S": "2.5"}
    config = load(path, env)
    assert (config.audio.backend, config.audio.capture_rate) == ("wav", 48000)
    assert config.realtime.voice == "ash"
    assert config.session.no_speech_s == 2.5


@pytest.mark.parametrize(
    ("toml", "env", "key"),
    [
        ("[audio]\ncapture_rate = 44100\n", {}, "audio.capture_rate"),
        ('[audio]\nbackend = "pulse"\n', {}, "audio.backend"),
        ("[audio]\nfoo = 1\n", {}, "audio.foo"),
        ("[nonsense]\nx = 1\n", {}, "nonsense"),
        ("", {"APPLIANCE_SESSION_CONNECT_S": "soon"}, "session.connect_s"),
        ("", {"APPLIANCE_ACTIVATION_BUTTON": "maybe"}, "activation.button"),
        ("", {"APPLIANCE_SESSION_REPLY_S": "-1"}, "session.reply_s"),
        ('[realtime]\nvoice = "hal9000"\n', {}, "realtime.voice"),
        ("[session]\nmax_turn_s = true\n", {}, "session.max_turn_s"),
        ('[realtime]\nreasoning_effort = "extreme"\n', {}, "realtime.reasoning_effort"),
        ("", {"APPLIANCE_REALTIME_MAX_OUTPUT_TOKENS": "5000"}, "realtime.max_output_tokens"),
        ('[realtime]\ntruncation = "sometimes"\n', {}, "realtime.truncation"),
        ("[realtime]\nretention_ratio = 1.5\n", {}, "realtime.retention_ratio"),
        ('[realtime]\neagerness = "eager"\n', {}, "realtime.eagerness"),
        ("[realtime]\nidle_timeout_ms = 100\n", {}, "realtime.idle_timeout_ms"),
        (
            '[realtime]\nturn_detection = "semantic_vad"\nidle_timeout_ms = 6000\n',
            {},
            "realtime.idle_timeout_ms",
        ),
        ('[realtime]\nnoise_reduction = "mid_field"\n', {}, "realtime.noise_reduction"),
        ('[realtime]\nparallel_tool_calls = "often"\n', {}, "realtime.parallel_tool_calls"),
        # timeouts must be finite and positive (issue 14: nan, inf and 0 were accepted)
        ("[session]\nconnect_s = nan\n", {}, "session.connect_s"),
        ("[session]\nreply_s = inf\n", {}, "session.reply_s"),
        ("", {"APPLIANCE_SESSION_NO_SPEECH_S": "nan"}, "session.no_speech_s"),
        ("", {"APPLIANCE_PROVISIONING_TIMEOUT_S": "inf"}, "provisioning.timeout_s"),
        ("[session]\nconnect_s = 0\n", {}, "session.connect_s"),
        ("", {"APPLIANCE_SESSION_MAX_TURN_S": "0"}, "session.max_turn_s"),
        ("[activation]\nhold_s = 0.0\n", {}, "activation.hold_s"),
        ("[realtime]\nvad_threshold = nan\n", {}, "realtime.vad_threshold"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, toml: str, env: dict[str, str], key: str) -> None:
    path = tmp_path / "appliance.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as caught:
        load(path, env)
    assert caught.value.key == key


def test_zero_stays_valid_where_it_means_off(tmp_path: Path) -> None:
    env = {
        "APPLIANCE_PROVISIONING_HEARTBEAT_S": "0",
        "APPLIANCE_SESSION_LIVENESS_S": "0",
        "APPLIANCE_ACTIVATION_MUTE_S": "0",
    }
    config = load(None, env)
    assert (config.provisioning.heartbeat_s, config.session.liveness_s) == (0, 0)
    assert config.activation.mute_s == 0


def test_bad_toml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[audio\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(bad, {})
    with pytest.raises(ConfigError, match="not found"):
        load(tmp_path / "missing.toml", {})


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ("[audio]\ncapture_rate = 44100\n", "audio.capture_rate"),
        ("[realtime]\nidle_timeout_ms = 40000\n", "realtime.idle_timeout_ms"),
        ('[activation]\nwake_sensitivity = "loud"\n', "activation.wake_sensitivity"),
    ],
)
@pytest.mark.slow  # a CLI subprocess per case
def test_cli_exits_78_naming_the_key(tmp_path: Path, toml: str, key: str) -> None:
    path = tmp_path / "appliance.toml"
    path.write_text(toml)
    result = subprocess.run(
        [sys.executable, "-m", "appliance", "run", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == EX_CONFIG
    assert key in result.stderr


@pytest.mark.slow  # a CLI subprocess per case
def test_cli_exits_78_when_the_device_never_enrolled(tmp_path: Path) -> None:
    path = tmp_path / "appliance.toml"
    path.write_text(f'[device]\nstate_dir = "{tmp_path / "state"}"\n[audio]\nbackend = "wav"\n')
    result = subprocess.run(
        [sys.executable, "-m", "appliance", "run", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == EX_CONFIG
    assert "device.state_dir" in result.stderr


@pytest.mark.parametrize("board_file", sorted((Path(__file__).parents[2] / "hw").glob("*.toml")))
def test_every_shipped_board_config_loads(board_file: Path) -> None:
    config = load(board_file, {})
    assert config.device.board == board_file.stem


def test_enroll_with_an_unreadable_token_file_exits_78_and_names_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from appliance.__main__ import main

    missing = tmp_path / "enroll-token"
    code = main(["enroll", "--server", "http://127.0.0.1:9", "--token-file", str(missing)])
    assert code == 78
    assert "--token-file" in capsys.readouterr().err


def test_a_board_without_a_button_needs_a_wake_word(tmp_path: Path) -> None:
    conf = tmp_path / "a.toml"
    conf.write_text('[device]\nboard = "respeaker-4mic"\n')
    with pytest.raises(ConfigError) as err:
        load(conf, environ={})
    assert err.value.key == "activation.wake_word"
    assert "no button" in str(err.value)
    conf.write_text('[device]\nboard = "generic"\n[activation]\nbutton = false\n')
    with pytest.raises(ConfigError, match="button is off"):
        load(conf, environ={})
    conf.write_text('[device]\nboard = "respeaker-4mic"\n[activation]\nwake_word = "okay_nabu"\n')
    assert load(conf, environ={}).activation.wake_word == "okay_nabu"


def test_the_4mic_profile_starts_on_the_wake_word() -> None:
    config = load(Path(__file__).parents[2] / "hw" / "respeaker-4mic.toml", environ={})
    assert config.activation.wake_word
    assert not config.activation.button
