"""The stand-in's exception tree. Catch the narrowest class that you can handle.

StandinError
├── LiveConfigError      a live session configuration is refused (param, code; a ValueError)
└── SessionUpdateError   a session.update is refused (param, code; a ValueError)
"""

from __future__ import annotations


class StandinError(Exception):
    """Base of every error the stand-in raises on purpose."""
