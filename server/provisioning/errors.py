"""The provisioning server's exception tree. Catch the narrowest class that you can handle.

ProvisioningError
├── AuthError          a refused credential: HTTP status and code (server_time for clock_skew)
├── UpstreamError      the upstream (OpenAI) refused or failed (retry_after; never its body)
├── SettingsError      a bad setting, naming its environment variable; exit 78 (a ValueError)
├── ProfileError       a group profile is invalid; field names the path (a ValueError)
├── SchemaMismatch     an unversioned database whose tables differ from the models
│                      (a RuntimeError)
├── InventoryError     a fleet inventory file cannot be read (a ValueError)
├── PushError          pushing settings to a device over SSH failed (a RuntimeError)
├── UserError          an operator's mistake on the CLI: one line and an exit code
└── _NameTakenError    inside Store.enroll: another device has the name (rolls back)

The stand-in (``standin``) has a tree of its own: provisioning/standin/errors.py.
"""

from __future__ import annotations


class ProvisioningError(Exception):
    """Base of every error the provisioning server raises on purpose."""
