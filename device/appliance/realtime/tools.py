"""Function tools the model can call: a typed registry and the built-ins.

A tool is a plain function taking keyword arguments (validated against its JSON Schema's
required names) and returning something JSON-serialisable. Sync tools run in a thread and
every call has a timeout, so a slow tool never blocks audio. Failures become an error
result the model can speak about; they never raise into the session.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

log = logging.getLogger(__name__)
JSON = dict[str, Any]
ToolFunc = Callable[..., Any] | Callable[..., Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class Tool:
    name: str
    description: str
    func: ToolFunc
    parameters: JSON = field(default_factory=lambda: {"type": "object", "properties": {}})
    timeout_s: float = 5.0

    def schema(self) -> JSON:
        return {
            "type": "function",
            "name": self.name,
            "description": self.description,
            "parameters": self.parameters,
        }


class ToolRegistry:
    def __init__(self) -> None:
        self._tools: dict[str, Tool] = {}

    def register(self, tool: Tool) -> None:
        if tool.name in self._tools:
            raise ValueError(f"tool {tool.name!r} is already registered")
        self._tools[tool.name] = tool

    def names(self) -> list[str]:
        return sorted(self._tools)

    def schemas(self) -> list[JSON]:
        return [self._tools[name].schema() for name in self.names()]

    async def call(self, name: str, arguments: str) -> str:
        """Run a tool and return its output as a JSON string (``{"error": …}`` on failure)."""
        tool = self._tools.get(name)
        if tool is None:
            return _error(f"unknown tool {name!r}")
        try:
            args = json.loads(arguments or "{}")
            if not isinstance(args, dict):
                raise ValueError("arguments must be a JSON object")
        except ValueError as exc:
            return _error(f"bad arguments: {exc}")
        missing = [p for p in tool.parameters.get("required", []) if p not in args]
        if missing:
            return _error(f"missing arguments: {', '.join(missing)}")
        started = time.perf_counter()
        try:
            if inspect.iscoroutinefunction(tool.func):
                result = await asyncio.wait_for(tool.func(**args), tool.timeout_s)
            else:
                result = await asyncio.wait_for(
                    asyncio.to_thread(tool.func, **args), tool.timeout_s
                )
        except TimeoutError:
            log.warning("tool %s timed out after %.1f s", name, tool.timeout_s)
            return _error(f"the tool {name} took longer than {tool.timeout_s:g} seconds")
        except Exception as exc:  # a tool's bug must not kill the session
            log.warning("tool %s failed: %s", name, exc)
            return _error(f"the tool {name} failed: {type(exc).__name__}")
        log.info("tool %s ran in %.0f ms", name, (time.perf_counter() - started) * 1000)
        return json.dumps(result, default=str)


def _error(message: str) -> str:
    return json.dumps({"error": message})


def get_time() -> JSON:
    """The device's local date and time."""
    now = datetime.now().astimezone()
    return {
        "time": now.strftime("%H:%M"),
        "date": now.strftime("%A %d %B %Y"),
        "timezone": now.tzname() or "",
        "iso": now.isoformat(timespec="seconds"),
    }


def builtin_registry() -> ToolRegistry:
    registry = ToolRegistry()
    registry.register(
        Tool("get_time", "Get the current local date and time on the device.", get_time)
    )
    return registry
