"""Provisioning server and fleet tooling: holds the OpenAI key, enrolls devices, mints keys."""

__version__ = "0.1.0"


def package_version() -> str:
    """The installed server distribution's version (``provisioning --version``)."""
    from appliance_common import package_version as version_of

    return version_of("pi-realtime-provisioning")
