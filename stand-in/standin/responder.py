"""A stand-in call's responder: responses, the model's voice, its tool calls, and cutting
them short.

A response follows the reference §4.3: ``response.created``, then per output item
(``output_item.added``, content part, text or audio-transcript deltas in step with the
synthesised voice, ``output_item.done``) and ``response.done``; what it says or which tools it
calls comes from the ``Script``. ``response.cancel``, a barge-in, ``output_audio_buffer.clear``
and ``conversation.item.truncate`` cut the reply and its audio short.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from standin import events as ev
from standin.conversation import Conversation, Item
from standin.media import RATE, ReplyAudio, stream_speech
from standin.script import Decision, Script
from standin.wire import Handler, Wire

if TYPE_CHECKING:
    from standin.server import Faults
    from standin.voice import Voice

log = logging.getLogger(__name__)
JSON = dict[str, Any]
DEFAULT_THEN_SAY = "Done: {output}."
DEFAULT_PREAMBLE = "Let me check."
"""Said before a tool call when the session asks for reasoning (a reasoning model's habit)."""
TOKENS_PER_WORD = 5
"""What a spoken word costs under ``max_output_tokens`` (its text and ~200 ms of audio)."""


@dataclass
class Response:
    id: str
    oob: bool
    metadata: dict[str, str] | None
    task: asyncio.Task[None] | None = None
    cancel_reason: str | None = None
    item_id: str | None = None
    audio_started: bool = False
    played_at_start: int = 0
    output: list[JSON] = field(default_factory=list)
    budget: int | None = None
    """Output tokens left under ``max_output_tokens`` (``None``: no cap)."""
    cut_short: bool = False
    """The cap cut the response short: it ends ``incomplete`` (``max_output_tokens``)."""


class Responder:
    """The model's side of one call: one response at a time, its voice on ``track``."""

    def __init__(
        self,
        wire: Wire,
        conversation: Conversation,
        track: ReplyAudio,
        *,
        voice: Voice,
        script: Script,
        faults: Faults,
        spawn: Callable[[Coroutine[Any, Any, Any]], asyncio.Task[Any]],
        drop: Callable[[], Coroutine[Any, Any, None]],
        on_idle: Callable[[], None],
    ) -> None:
        """``spawn`` runs a task the call cancels when it closes; ``drop`` closes the call (the
        ``drop_after_audio_ms`` fault); ``on_idle`` runs when a response has ended and its
        audio has played (the idle timeout starts)."""
        self._wire = wire
        self._conversation = conversation
        self.track = track
        self._voice = voice
        self._script = script
        self._faults = faults
        self._spawn = spawn
        self._drop = drop
        self._on_idle = on_idle
        self._response: Response | None = None
        self._last_response_id: str | None = None
        self._cleared: set[str] = set()

    def handlers(self) -> Mapping[str, Handler]:
        return {
            "output_audio_buffer.clear": self._clear_output,
            "conversation.item.truncate": self._item_truncate,
            "response.create": self._response_create,
            "response.cancel": self._response_cancel,
        }

    @property
    def busy(self) -> bool:
        return self._response is not None

    def idle(self) -> bool:
        return self._response is None and not self.track.pending()

    def interrupt(self) -> None:
        if self._response is not None:
            self._cancel(self._response, "turn_detected", clear_audio=True)
        elif self.track.pending():
            self.track.clear()
            self._wire.send(
                ev.event(
                    "output_audio_buffer.cleared",
                    response_id=self._last_response_id or ev.new_id("resp"),
                )
            )

    # ------------------------------------------------------------------ client events

    def _clear_output(self, data: JSON, event_id: str | None) -> None:
        self.track.clear()
        response_id = self._last_response_id or ev.new_id("resp")
        self._cleared.add(response_id)
        self._wire.send(ev.event("output_audio_buffer.cleared", response_id=response_id))

    def _item_truncate(self, data: JSON, event_id: str | None) -> None:
        item = self._conversation.find(str(data["item_id"]))
        end_ms = int(data["audio_end_ms"])
        if item is None or item.data.get("role") != "assistant":
            self._wire.send(
                ev.error(
                    "Only assistant audio items can be truncated.",
                    code="invalid_value",
                    param="item_id",
                    event_id=event_id,
                )
            )
            return
        if end_ms < 0 or end_ms > item.audio_ms:
            self._wire.send(
                ev.error(
                    f"audio_end_ms {end_ms} is beyond the item's audio ({item.audio_ms} ms).",
                    code="invalid_value",
                    param="audio_end_ms",
                    event_id=event_id,
                )
            )
            return
        for part in item.data.get("content", []):
            if part.get("type") == "output_audio" and item.audio_ms:
                words = str(part.get("transcript") or "").split()
                keep = round(len(words) * end_ms / item.audio_ms)
                part["transcript"] = " ".join(words[:keep])
        item.audio_ms = end_ms
        self._wire.send(
            ev.event(
                "conversation.item.truncated",
                item_id=item.data["id"],
                content_index=int(data.get("content_index", 0)),
                audio_end_ms=end_ms,
            )
        )

    def _response_create(self, data: JSON, event_id: str | None) -> None:
        if self._response is not None:
            self._wire.send(
                ev.error(
                    "Conversation already has an active response in progress: "
                    f"{self._response.id}. Wait until the response is finished before "
                    "creating a new one.",
                    code="conversation_already_has_active_response",
                    event_id=event_id,
                )
            )
            return
        params = data.get("response") or {}
        if not isinstance(params, dict):
            raise ValueError("response must be an object")
        self.start(params)

    def _response_cancel(self, data: JSON, event_id: str | None) -> None:
        response = self._response
        wanted = data.get("response_id")
        if response is None or (wanted and wanted != response.id):
            self._wire.send(
                ev.error(
                    "Cancellation failed: no active response found",
                    code="response_cancel_not_active",
                    event_id=event_id,
                )
            )
            return
        self._cancel(response, "client_cancelled")

    # ------------------------------------------------------------------ responses

    def start(self, params: JSON) -> None:
        if self._conversation.session.get("type") != "realtime":
            return  # transcription sessions never respond
        oob = params.get("conversation") == "none"
        metadata = params.get("metadata")
        response = Response(
            id=ev.new_id("resp"), oob=oob, metadata=metadata if isinstance(metadata, dict) else None
        )
        self._response = response
        self._last_response_id = response.id
        response.task = self._spawn(self._run_response(response, params))

    def _cancel(self, response: Response, reason: str, clear_audio: bool = False) -> None:
        response.cancel_reason = reason
        if clear_audio:
            self.track.clear()
        if response.task is not None:
            response.task.cancel()

    def _say_what(self, params: JSON) -> Decision:
        """What this response says, or which tools it calls (with what preamble)."""
        instructions = params.get("instructions")
        if (isinstance(instructions, str) and params.get("conversation") == "none") or (
            isinstance(instructions, str) and instructions.lower().startswith("say")
        ):
            match = re.match(r"(?is)^\s*say[:\s]+(.*)$", str(instructions))
            return Decision(say=match.group(1).strip() if match else str(instructions))
        c = self._conversation
        if c.tool_outputs:
            # every output that has come in for the response that asked for the first one
            asked = c.pending_calls.get(c.tool_outputs[0][0], ("", DEFAULT_THEN_SAY))
            mine = [o for o in c.tool_outputs if c.pending_calls.get(o[0]) == asked]
            c.tool_outputs = [o for o in c.tool_outputs if o not in mine]
            for call_id, _ in mine:
                c.pending_calls.pop(call_id, None)
            return Decision(say=Script.after_tool(asked[1], *(output for _, output in mine)))
        tools = {str(t.get("name")) for t in c.session.get("tools", []) if isinstance(t, dict)}
        decision = self._script.decide(c.turn, c.last_text, tools, audio=c.last_was_audio)
        calls = decision.calls
        if c.session.get("parallel_tool_calls") is False:
            calls = calls[:1]
        preamble = decision.preamble
        effort = (c.session.get("reasoning") or {}).get("effort")
        if preamble is None and effort not in (None, "minimal"):
            preamble = DEFAULT_PREAMBLE
        return replace(decision, calls=calls, preamble=preamble or None)

    async def _run_response(self, response: Response, params: JSON) -> None:
        session = self._conversation.session
        modalities = params.get("output_modalities") or session.get("output_modalities", ["audio"])
        voice = str(
            (params.get("audio") or {}).get("output", {}).get("voice")
            or session["audio"]["output"].get("voice", "alloy")
        )
        cap = params.get("max_output_tokens", session.get("max_output_tokens", "inf"))
        response.budget = int(cap) if isinstance(cap, int) else None
        conversation_id = None if response.oob else "conv_standin"
        base = {
            "conversation_id": conversation_id,
            "metadata": response.metadata,
            "voice": voice,
            "modalities": modalities,
            "max_output_tokens": cap,
        }
        self._wire.send(
            ev.event(
                "response.created",
                response=ev.response_object(response.id, status="in_progress", output=[], **base),
            )
        )
        self._wire.send(ev.rate_limits(1200))
        decision = self._say_what(params)
        used = 0
        try:
            if decision.calls and decision.preamble:
                used += await self._speak(response, decision.preamble, voice, modalities)
            for name, arguments in decision.calls:
                cost = len(arguments) // 4 + 5
                if response.budget is not None and cost > response.budget:
                    response.cut_short = True
                    break
                await self._function_call(response, name, arguments, decision.then_say)
                used += cost
                if response.budget is not None:
                    response.budget -= cost
            if not decision.calls:
                used += await self._speak(response, decision.say or "", voice, modalities)
        except asyncio.CancelledError:
            reason = response.cancel_reason or "client_cancelled"
            self._finish_cancelled(response)
            self._response = None
            self._wire.send(
                ev.event(
                    "response.done",
                    response=ev.response_object(
                        response.id,
                        status="cancelled",
                        output=response.output,
                        status_reason=reason,
                        usage=ev.usage(200, 5, used),
                        **base,
                    ),
                )
            )
            if response.audio_started and reason == "turn_detected":
                self._cleared.add(response.id)
                self._wire.send(ev.event("output_audio_buffer.cleared", response_id=response.id))
            elif response.audio_started:
                self._spawn(self._await_drain(response))
            return
        self._response = None
        status = "incomplete" if response.cut_short else "completed"
        self._wire.send(
            ev.event(
                "response.done",
                response=ev.response_object(
                    response.id,
                    status=status,
                    output=response.output,
                    status_reason="max_output_tokens" if response.cut_short else None,
                    usage=ev.usage(200, used // 4, used),
                    **base,
                ),
            )
        )
        if response.audio_started:
            await self._await_drain(response)
        else:
            self._on_idle()

    async def _await_drain(self, response: Response) -> None:
        await self.track.drained.wait()
        if response.id not in self._cleared:
            self._wire.send(ev.event("output_audio_buffer.stopped", response_id=response.id))
        self._on_idle()

    def _item_event(self, kind: str, response: Response, index: int, item: JSON) -> None:
        """``response.output_item.added`` or ``.done``."""
        self._wire.send(ev.event(kind, response_id=response.id, output_index=index, item=item))

    def _part_event(
        self, kind: str, response: Response, item_id: str, index: int, **fields: Any
    ) -> None:
        """An event about the first content part of output item ``index`` (``item_id``)."""
        self._wire.send(
            ev.event(
                kind,
                response_id=response.id,
                item_id=item_id,
                output_index=index,
                content_index=0,
                **fields,
            )
        )

    def _begin_item(self, response: Response, item: JSON) -> tuple[int, Item]:
        """The response's next output item: its index, and its record in the conversation
        (an out-of-band response's items are in none)."""
        response.item_id = str(item["id"])
        response.output.append(item)
        index = len(response.output) - 1
        self._item_event("response.output_item.added", response, index, item)
        record = Item(item) if response.oob else self._conversation.open_item(item)
        return index, record

    def _end_item(self, response: Response, index: int, item: JSON) -> None:
        self._item_event("response.output_item.done", response, index, item)
        if not response.oob:
            self._conversation.done_item(item)

    def _finish_cancelled(self, response: Response) -> None:
        if response.item_id is None:
            return
        item = self._conversation.find(response.item_id)
        data = item.data if item else (response.output[-1] if response.output else None)
        if data is None:
            return
        data["status"] = "incomplete"
        if item:
            item.audio_ms = int(
                (self.track.played_samples - response.played_at_start) * 1000 / RATE
            )
        index = next((i for i, out in enumerate(response.output) if out is data), 0)
        self._end_item(response, index, data)

    async def _function_call(
        self, response: Response, name: str, arguments: str, then_say: str
    ) -> None:
        item_id, call_id = ev.new_id("item"), ev.new_id("call")
        item = ev.function_call_item(item_id, call_id, name, "", "in_progress")
        index, _ = self._begin_item(response, item)
        for i in range(0, len(arguments), 8):
            await asyncio.sleep(0.005)
            self._wire.send(
                ev.event(
                    "response.function_call_arguments.delta",
                    response_id=response.id,
                    item_id=item_id,
                    output_index=index,
                    call_id=call_id,
                    delta=arguments[i : i + 8],
                )
            )
        self._wire.send(
            ev.event(
                "response.function_call_arguments.done",
                response_id=response.id,
                item_id=item_id,
                output_index=index,
                call_id=call_id,
                name=name,
                arguments=arguments,
            )
        )
        item.update(arguments=arguments, status="completed")
        self._conversation.pending_calls[call_id] = (response.id, then_say)
        self._end_item(response, index, item)

    async def _speak(self, response: Response, text: str, voice: str, modalities: list[str]) -> int:
        """Say ``text`` as the response's next output item, within the response's token
        budget (cut short: the item and the response end ``incomplete``); returns the
        tokens it used."""
        audio = modalities == ["audio"]
        item_id = ev.new_id("item")
        item = ev.assistant_item(item_id, "in_progress", None)
        item["content"] = []
        words = text.split()
        if response.budget is not None and len(words) * TOKENS_PER_WORD > response.budget:
            words = words[: response.budget // TOKENS_PER_WORD]
            text = " ".join(words)
            response.cut_short = True
        index, record = self._begin_item(response, item)
        part: JSON = {"type": "audio", "transcript": ""} if audio else {"type": "text", "text": ""}
        self._part_event("response.content_part.added", response, item_id, index, part=part)
        if audio:
            speed = float(self._conversation.session["audio"]["output"].get("speed", 1.0))
            samples = await asyncio.to_thread(self._voice.speak, text, voice, speed)
            response.audio_started = True
            response.played_at_start = self.track.played_samples + self.track.pending()
            self._conversation.voice_locked = True
            item["content"] = [{"type": "output_audio", "transcript": None}]
            self._wire.send(ev.event("output_audio_buffer.started", response_id=response.id))
            self.track.begin(response.id, item_id)

            def said(delta: str, samples_queued: int) -> None:
                kind = "response.output_audio_transcript.delta"
                self._part_event(kind, response, item_id, index, delta=delta)

            await stream_speech(self.track, samples, words, said, self._faults, self._drop_now)
            self.track.end()
            record.audio_ms = int(samples.size * 1000 / RATE)
            kind = "response.output_audio_transcript.done"
            self._part_event(kind, response, item_id, index, transcript=text)
            part = {"type": "audio", "transcript": text}
            item["content"] = [{"type": "output_audio", "transcript": text}]
        else:
            for i, word in enumerate(words):
                await asyncio.sleep(0.01)
                delta = ("" if i == 0 else " ") + word
                self._part_event(
                    "response.output_text.delta", response, item_id, index, delta=delta
                )
            self._part_event("response.output_text.done", response, item_id, index, text=text)
            part = {"type": "text", "text": text}
            item["content"] = [{"type": "output_text", "text": text}]
        item["status"] = "incomplete" if response.cut_short else "completed"
        self._part_event("response.content_part.done", response, item_id, index, part=part)
        self._end_item(response, index, item)
        used = len(words) * TOKENS_PER_WORD
        if response.budget is not None:
            response.budget -= used
        return used

    def _drop_now(self) -> None:
        log.warning("%s: fault switch drops the peer connection mid-reply", self._wire.name)
        self._spawn(self._drop())
