"""Fleet bundles keep the board: a bundle's ``appliance.toml`` starts from the board profile
(audio devices, activation), so first boot does not fall back to ALSA's default card."""

from __future__ import annotations

import asyncio
import io
import tomllib
from pathlib import Path

import pytest

from appliance import config as appliance_config
from provisioning.fleet import Fleet, InventoryError, Options, read_inventory
from provisioning.store import Store

SERVER = "https://prov.example.com"


def bundle_config(tmp_path: Path, board: str, template: Path | None = None) -> Path:
    inv = tmp_path / "inventory.csv"
    inv.write_text(f"name,group,host,board\nkitchen,default,,{board}\n")
    store = Store(f"sqlite:///{tmp_path / 'prov.db'}")
    try:
        store.ensure_group("default")
        options = Options(SERVER, tmp_path / "out", template=template)
        asyncio.run(Fleet(store, options, io.StringIO()).run(read_inventory(inv)))
    finally:
        store.close()
    return tmp_path / "out" / "kitchen" / "appliance.toml"


def test_a_bundle_keeps_the_boards_audio_and_activation(tmp_path: Path) -> None:
    cfg = appliance_config.load(bundle_config(tmp_path, "respeaker-2mic"), environ={})
    assert cfg.audio.input_device == "seeed-2mic-voicecard"
    assert cfg.audio.output_device == "seeed-2mic-voicecard"
    assert (cfg.device.name, cfg.device.board, cfg.provisioning.server) == (
        "kitchen",
        "respeaker-2mic",
        SERVER,
    )


def test_the_4mic_bundle_can_be_activated(tmp_path: Path) -> None:
    cfg = appliance_config.load(bundle_config(tmp_path, "respeaker-4mic"), environ={})
    assert cfg.activation.wake_word == "alexa"
    assert cfg.audio.input_device == "seeed-4mic-voicecard"


def test_a_template_overrides_key_by_key(tmp_path: Path) -> None:
    template = tmp_path / "template.toml"
    template.write_text('[audio]\noutput_device = "USB"\n[logging]\nlevel = "DEBUG"\n')
    path = bundle_config(tmp_path, "respeaker-2mic", template)
    data = tomllib.loads(path.read_text())
    assert data["audio"]["output_device"] == "USB"
    assert data["audio"]["input_device"] == "seeed-2mic-voicecard", "the board's other keys stay"
    assert appliance_config.load(path, environ={}).logging.level == "DEBUG"


def test_an_unknown_board_is_refused(tmp_path: Path) -> None:
    inv = tmp_path / "inventory.csv"
    inv.write_text("name,board\nkitchen,respeaker-6mic\n")
    with pytest.raises(InventoryError, match="unknown board 'respeaker-6mic'"):
        read_inventory(inv)
