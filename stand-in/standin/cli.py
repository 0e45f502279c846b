"""``realtime-standin``: run the stand-in as a server."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from pathlib import Path

from standin.server import StandIn, StandInConfig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="realtime-standin", description="Local stand-in for the OpenAI Realtime service."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument(
        "--api-key",
        default=os.environ.get("STANDIN_API_KEY", "sk-standin-local"),
        help="standard key to accept (env STANDIN_API_KEY)",
    )
    parser.add_argument(
        "--script", type=Path, default=None, help="rule file (default: the shipped script.toml)"
    )
    parser.add_argument("--max-session-s", type=float, default=3600.0)
    parser.add_argument("--tts", choices=["auto", "espeak", "assets"], default="auto")
    parser.add_argument(
        "--loop",
        choices=["auto", "asyncio", "uvloop"],
        default="auto",
        help="event loop (auto: uvloop when installed, as uvicorn does)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    config = StandInConfig(
        api_key=args.api_key,
        host=args.host,
        port=args.port,
        script=args.script,
        max_session_s=args.max_session_s,
        tts=args.tts,
    )
    runner = asyncio.Runner(loop_factory=_loop_factory(args.loop))
    with contextlib.suppress(KeyboardInterrupt), runner:
        runner.run(StandIn(config).serve_forever())
    return 0


def _loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's factory for ``auto`` (when installed) and ``uvloop``; None is asyncio's own."""
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise SystemExit(
                "realtime-standin: --loop uvloop, but uvloop is not installed"
            ) from None
        return None
    return uvloop.new_event_loop
