"""A local stand-in for the OpenAI Realtime service (GA protocol), for the demo and tests."""

from standin.server import Faults, StandIn, StandInConfig

__all__ = ["Faults", "StandIn", "StandInConfig"]
