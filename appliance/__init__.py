"""Realtime voice appliance for the Raspberry Pi (device daemon)."""

__version__ = "0.1.0"
