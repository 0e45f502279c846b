"""Provisioning server, fleet tooling and the local Realtime stand-in."""

__version__ = "0.1.0"
