"""The camera tool: a photo the model asked for, sized to fit the data channel."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from appliance import machine as m
from appliance.camera import encode_jpeg, jpeg_budget, jpeg_that_fits
from standin import StandIn, StandInConfig
from tests.e2e.harness import device
from tests.standin.conftest import API_KEY
from tests.waiting import observe
from tests.wire import validate_client

pytestmark = pytest.mark.slow  # a whole device in real time against the stand-in


def photo(path: Path, width: int = 2400, height: int = 1800) -> Path:
    """A large, hard-to-compress 'photo' (gradients plus noise) written as a JPEG file."""
    rng = np.random.default_rng(1)
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 255 // width, y * 255 // height, (x + y) * 255 // (width + height)], -1)
    rgb = np.clip(rgb + rng.integers(-40, 40, rgb.shape), 0, 255).astype(np.uint8)
    path.write_bytes(encode_jpeg(rgb, width, height, 2))
    return path


def test_the_jpeg_shrinks_until_it_fits_and_says_when_it_cannot() -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (1500, 2000, 3)).astype(np.uint8)
    for budget in (jpeg_budget(65_536), jpeg_budget(16_384)):
        data, width, height = jpeg_that_fits(rgb, budget)
        assert len(data) <= budget
        assert data[:2] == b"\xff\xd8"
        assert width / height == pytest.approx(2000 / 1500, rel=0.02)
    with pytest.raises(ValueError, match="fits"):
        jpeg_that_fits(rgb, 200)


@pytest.fixture
async def standin() -> AsyncIterator[StandIn]:
    async with StandIn(StandInConfig(api_key=API_KEY)) as server:
        yield server


async def test_look_sends_a_photo_that_fits_the_peers_message_size(
    standin: StandIn, tmp_path: Path
) -> None:
    camera = photo(tmp_path / "desk.jpg")
    assert camera.stat().st_size > 256 * 1024, "bigger than any data-channel message"
    async with device(standin, tmp_path, camera=str(camera)) as dev:
        assert "look" in dev.app.tools.names()
        await dev.push_to_talk()
        await dev.wait(m.State.IDLE, 30)  # a warm session stays open
        session = dev.app.session
        assert session is not None
        session.max_message_size = 65_536  # a peer that gives no a=max-message-size
        out = json.loads(await dev.app.tools.call("look", "{}"))
        assert "added to the conversation" in out["photo"]
        call = standin.calls[str(session.call_id)]
        received = observe(call, "received")
        await received.first(lambda e: "input_image" in json.dumps(e), "the photo")
        images = [e for e in received if "input_image" in json.dumps(e)]
    (event,) = images
    validate_client(event)
    assert len(json.dumps(event)) <= 65_536
    url = event["item"]["content"][0]["image_url"]
    assert url.startswith("data:image/jpeg;base64,")


async def test_look_without_a_session_is_an_error_the_model_can_speak_about(
    standin: StandIn, tmp_path: Path
) -> None:
    async with device(standin, tmp_path, camera=str(photo(tmp_path / "p.jpg", 64, 48))) as dev:
        out = json.loads(await dev.app.tools.call("look", "{}"))
        assert out["error"].startswith("the tool look failed")
