"""``provisioning standin``: run the stand-in as a server."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
from pathlib import Path

from provisioning.standin.server import StandIn, StandInConfig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="provisioning standin", description="Local stand-in for the OpenAI Realtime service."
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
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(StandIn(config).serve_forever())
    return 0
