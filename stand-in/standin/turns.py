"""A stand-in call's turns: the input audio buffer and the server's turn detection.

Input audio arrives from the RTP track (WebRTC) or ``input_audio_buffer.append`` events
(WebSocket); ``Turns`` runs it through a WebRTC VAD in 20 ms frames at 16 kHz. Under
``server_vad`` or ``semantic_vad`` it sends ``speech_started`` (three speech frames in a row;
it interrupts a reply when the session says so) and ``speech_stopped`` (enough silence), then
commits the buffer as a user audio item with the script's transcript and asks the responder
for a reply. It also answers ``input_audio_buffer.commit/clear`` and fires the idle timeout.
"""

from __future__ import annotations

import asyncio
import base64
from typing import TYPE_CHECKING, Protocol

import webrtcvad

from appliance_common.pcm import Pcm, Resampler
from standin import events as ev
from standin.conversation import SEMANTIC_SILENCE_MS, Conversation
from standin.media import decode_wire, wire_rate
from standin.peer import VAD_RATE, VadFrames
from standin.wire import Handler, Wire

if TYPE_CHECKING:
    from collections.abc import Mapping

    from standin.script import Script

JSON = ev.JSON
SEGMENT_WORDS = 4
"""Words per diarized transcription segment (a word taken as 0.4 s of speech)."""


class Replies(Protocol):
    """What turn detection asks of the responder."""

    @property
    def busy(self) -> bool:
        """A response is in progress."""

    def idle(self) -> bool:
        """No response in progress and no reply audio left to play."""

    def interrupt(self) -> None:
        """The user started talking over the reply: cancel it and drop its audio."""

    def start(self, params: JSON) -> None: ...


class Turns:
    """Input audio, VAD and turn-taking of one call."""

    def __init__(
        self, wire: Wire, conversation: Conversation, script: Script, replies: Replies
    ) -> None:
        self._wire = wire
        self._conversation = conversation
        self._script = script
        self._replies = replies
        self._audio_turn = 0
        self.audio_ms = 0
        """Input audio heard so far."""
        self._buffer_ms = 0
        self.speaking = False
        self._speech_run = 0
        self._silence_ms = 0
        self._speech_item: str | None = None
        self._idle_handle: asyncio.TimerHandle | None = None
        self._vad = webrtcvad.Vad()
        self._appended = Resampler(VAD_RATE)
        self._frames = VadFrames()

    def handlers(self) -> Mapping[str, Handler]:
        return {
            "input_audio_buffer.append": self._append,
            "input_audio_buffer.commit": self._commit_event,
            "input_audio_buffer.clear": self._clear,
        }

    def close(self) -> None:
        if self._idle_handle:
            self._idle_handle.cancel()

    def restart(self) -> None:
        """Turn detection changed: a new VAD starts from silence."""
        self.speaking = False
        self._speech_run = 0
        self._silence_ms = 0
        if self._replies.idle():
            self.arm_idle_timeout()  # idle from now on (e.g. VAD back after push-to-talk)

    # ------------------------------------------------------------------ audio in

    def hear(self, samples: Pcm) -> None:
        """Input audio at ``VAD_RATE``, from the track or from appended events."""
        for chunk in self._frames.push(samples):
            self._on_audio(chunk)

    def _append(self, data: JSON, event_id: str | None) -> None:
        # the WebSocket path (over WebRTC audio arrives on the track), in the input format
        raw = base64.b64decode(str(data["audio"]), validate=True)
        kind = self._conversation.audio_format("input")
        self.hear(self._appended.pcm(decode_wire(raw, kind), wire_rate(kind)))

    def _on_audio(self, chunk: bytes) -> None:
        self.audio_ms += 20
        self._buffer_ms += 20
        td = self._conversation.turn_detection
        if td is None:
            return
        self._vad.set_mode(min(3, max(0, int(float(td.get("threshold", 0.5)) * 4))))
        speech = self._vad.is_speech(chunk, VAD_RATE)
        padding = int(td.get("prefix_padding_ms", 300)) + 60
        if not self.speaking:
            self._speech_run = self._speech_run + 1 if speech else 0
            if self._speech_run >= 3:
                self._on_speech_started(td)
            elif not speech and self._buffer_ms > padding:
                self._buffer_ms = padding  # keep only the padding
            return
        if speech:
            self._silence_ms = 0
            return
        self._silence_ms += 20
        if td["type"] == "semantic_vad":
            needed = SEMANTIC_SILENCE_MS.get(str(td.get("eagerness", "auto")), 700)
        else:
            needed = int(td.get("silence_duration_ms", 500))
        if self._silence_ms >= needed:
            self._on_speech_stopped(td)

    # ------------------------------------------------------------------ turns

    def _on_speech_started(self, td: JSON) -> None:
        self.speaking = True
        self._silence_ms = 0
        if self._idle_handle:
            self._idle_handle.cancel()
            self._idle_handle = None
        self._speech_item = ev.new_id("item")
        start = max(0, self.audio_ms - 60 - int(td.get("prefix_padding_ms", 300)))
        self._wire.send(
            ev.event(
                "input_audio_buffer.speech_started", audio_start_ms=start, item_id=self._speech_item
            )
        )
        if td.get("interrupt_response", True):
            self._replies.interrupt()

    def _on_speech_stopped(self, td: JSON) -> None:
        self.speaking = False
        self._speech_run = 0
        item_id = self._speech_item or ev.new_id("item")
        self._wire.send(
            ev.event(
                "input_audio_buffer.speech_stopped",
                audio_end_ms=self.audio_ms - self._silence_ms + 100,
                item_id=item_id,
            )
        )
        self._commit(item_id)
        if td.get("create_response", True) and not self._replies.busy:
            self._replies.start({})

    def _commit_event(self, data: JSON, event_id: str | None) -> None:
        if self._buffer_ms < 100:
            self._wire.error(
                "Error committing input audio buffer: buffer too small. Expected at least "
                f"100ms of audio, but buffer only has {self._buffer_ms}.00ms of audio.",
                "input_audio_buffer_commit_empty",
                event_id,
            )
            return
        self._commit(self._speech_item or ev.new_id("item"))

    def _clear(self, data: JSON, event_id: str | None) -> None:
        self._buffer_ms = 0
        self.speaking = False
        self._wire.send(ev.event("input_audio_buffer.cleared"))

    def _commit(self, item_id: str) -> None:
        self._audio_turn += 1
        transcript = self._script.transcript(self._audio_turn)
        self._conversation.user_said(transcript, audio=True)
        self._buffer_ms = 0
        self._speech_item = None
        self._commit_item(item_id)
        transcription = (
            self._conversation.session.get("audio", {}).get("input", {}).get("transcription")
        )
        if transcription and "diarize" in str(transcription.get("model")):
            self._send_segments(item_id, transcript)
        if transcription:
            self._wire.send(
                ev.event(
                    "conversation.item.input_audio_transcription.delta",
                    item_id=item_id,
                    content_index=0,
                    delta=transcript,
                )
            )
            self._wire.send(
                ev.event(
                    "conversation.item.input_audio_transcription.completed",
                    item_id=item_id,
                    content_index=0,
                    transcript=transcript,
                    usage={"type": "duration", "seconds": 1.0},
                )
            )

    def _commit_item(self, item_id: str) -> None:
        """``input_audio_buffer.committed`` and the user audio item it becomes."""
        self._wire.send(
            ev.event(
                "input_audio_buffer.committed",
                previous_item_id=self._conversation.last_id(),
                item_id=item_id,
            )
        )
        self._conversation.add_item(ev.user_audio_item(item_id, None))

    def _send_segments(self, item_id: str, transcript: str) -> None:
        """A diarizing transcription model's segments: one per few words, one speaker."""
        words = transcript.split()
        for n, start in enumerate(range(0, len(words), SEGMENT_WORDS)):
            self._wire.send(
                ev.event(
                    "conversation.item.input_audio_transcription.segment",
                    item_id=item_id,
                    content_index=0,
                    id=f"seg_{n}",
                    speaker="A",
                    start=start * 0.4,
                    end=min(len(words), start + SEGMENT_WORDS) * 0.4,
                    text=" ".join(words[start : start + SEGMENT_WORDS]),
                )
            )

    # ------------------------------------------------------------------ idle timeout

    def arm_idle_timeout(self) -> None:
        td = self._conversation.turn_detection
        if self._idle_handle:
            self._idle_handle.cancel()
            self._idle_handle = None
        if not td or td.get("type") != "server_vad" or not td.get("idle_timeout_ms"):
            return
        loop = asyncio.get_running_loop()
        self._idle_handle = loop.call_later(int(td["idle_timeout_ms"]) / 1000, self._idle_fired)

    def _idle_fired(self) -> None:
        self._idle_handle = None
        if self._replies.busy or self.speaking:
            return
        item_id = ev.new_id("item")
        self._wire.send(
            ev.event(
                "input_audio_buffer.timeout_triggered",
                audio_start_ms=max(0, self.audio_ms - self._buffer_ms),
                audio_end_ms=self.audio_ms,
                item_id=item_id,
            )
        )
        self._buffer_ms = 0
        self._commit_item(item_id)
        self._replies.start({"instructions": "Say: Are you still there?"})
