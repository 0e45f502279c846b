"""The device's exception tree. Catch the narrowest class that you can handle.

ApplianceError
├── ConfigError            bad or missing setting; the daemon exits with code 78 (EX_CONFIG)
├── AudioDeviceError       a sound device is missing, vanished or failed to open
├── GpioError              a pin could not be claimed / no pin factory
├── SpeexDspUnavailable    libspeexdsp could not be loaded (also an ImportError)
├── OpusUnavailable        libopus could not be loaded (also an ImportError)
├── ProvisioningError      could not get a key from the provisioning server
│   ├── ProvisioningUnavailable   server down / 5xx / 503 upstream trouble (retry_after)
│   ├── RateLimited               429 from our server (retry_after)
│   ├── DeviceRevoked             401/403: this device was revoked, disabled or deleted (code)
│   ├── BackendMoved              409: the device's group uses the other backend (live/realtime)
│   ├── ClockSkew                 401 clock_skew: the server judged the device's clock wrong
│   └── EnrollmentError           enrollment refused (bad / reused / expired token)
└── SessionError           the Realtime call failed
    ├── CallRejected              /v1/realtime/calls answered non-201 (status, code)
    ├── RealtimeUnreachable       the Realtime service could not be reached (network, DNS)
    ├── ConnectTimeout            no usable session within the connect deadline
    └── SessionLost               an established session died
"""

from __future__ import annotations

EX_CONFIG = 78
"""sysexits.h EX_CONFIG: systemd's ``RestartPreventExitStatus=78`` stops a crash loop."""


class ApplianceError(Exception):
    """Base of every error the appliance raises on purpose."""


class ConfigError(ApplianceError):
    """A setting is invalid. ``key`` names it, e.g. ``audio.capture_rate``."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key


class AudioDeviceError(ApplianceError):
    """A sound device is missing, vanished, or failed."""


class GpioError(ApplianceError):
    """GPIO could not be set up."""


class ProvisioningError(ApplianceError):
    """No key could be had from the provisioning server."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ProvisioningUnavailable(ProvisioningError):
    """The server is unreachable or reported upstream trouble; try again later."""


class RateLimited(ProvisioningError):
    """The server refused for rate or quota reasons; honour ``retry_after``."""


class DeviceRevoked(ProvisioningError):
    """This device's credential is no longer accepted. Retrying will not help.

    ``code`` is the server's reason when it gave one (``revoked``, ``disabled``,
    ``unknown_key``, ``replayed``, ``invalid_token``)."""

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


class ClockSkew(ProvisioningError):
    """The server refused a token for time (``clock_skew``) even after the device took the
    server's time: not a revocation; the device's clock keeps moving (no RTC, NTP catching
    up). ``offset_s`` is server time minus device time as last learned."""

    def __init__(self, message: str, offset_s: float) -> None:
        super().__init__(message, retry_after=5.0)
        self.offset_s = offset_s


class BackendMoved(ProvisioningError):
    """The device's group uses the other backend (``live`` or ``realtime``): open the next
    session there."""

    def __init__(self, backend: str) -> None:
        super().__init__(f"this device's group now uses the {backend} backend")
        self.backend = backend


class EnrollmentError(ProvisioningError):
    """Enrollment was refused (bad, reused or expired token, or bad request)."""


class SessionError(ApplianceError):
    """The Realtime call failed."""


class CallRejected(SessionError):
    """``POST /v1/realtime/calls`` did not answer 201."""

    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(f"call rejected ({status}{', ' + code if code else ''}): {message}")
        self.status = status
        self.code = code


class RealtimeUnreachable(SessionError):
    """The Realtime service could not be reached (network down, DNS failure)."""


class ConnectTimeout(SessionError):
    """No usable session within the connect deadline."""


class SessionLost(SessionError):
    """An established session died (peer closed/failed, liveness lost, session expired)."""
