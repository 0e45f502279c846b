"""Realtime voice appliance for the Raspberry Pi (device daemon)."""

__version__ = "0.1.0"


def package_version() -> str:
    """The installed device distribution's version (``appliance --version``)."""
    from appliance_common import package_version as version_of

    return version_of("pi-realtime-appliance")
