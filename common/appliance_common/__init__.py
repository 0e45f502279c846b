"""Code the device, the provisioning server and the stand-in share (small, few dependencies).

Extras pull only what a module needs: ``[webrtc]`` for ``ice``/``opus``/``pcm`` (aiortc, PyAV,
numpy), ``[http]`` for ``serving`` (uvicorn, starlette). ``boards``, ``models`` and
``logging_setup`` need nothing beyond the standard library.
"""


def package_version(distribution: str) -> str:
    """An installed distribution's version (each CLI's ``--version``)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:  # a source tree that was never installed
        return "unknown"
