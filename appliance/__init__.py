"""Realtime voice appliance for the Raspberry Pi (device daemon)."""

__version__ = "0.1.0"


def package_version() -> str:
    """The installed distribution's version (both CLIs' ``--version``)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pi-realtime-appliance")
    except PackageNotFoundError:  # a source tree that was never installed
        return "unknown"
