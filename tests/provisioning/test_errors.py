"""The provisioning server's exception tree: every exception class in ``provisioning`` (the
stand-in apart) derives from ``ProvisioningError`` and is drawn under its parent in
provisioning/errors.py."""

from __future__ import annotations

import types

import provisioning.errors
from provisioning.auth import AuthError
from tests.errortree import exception_classes, tree_problems

# alembic's env.py runs a migration when imported; the stand-in has its own tree
SKIP = ("provisioning.migrations.env",)


def test_every_server_exception_is_in_the_tree() -> None:
    classes = exception_classes("provisioning", skip=SKIP)
    assert AuthError in classes
    assert tree_problems(provisioning.errors, provisioning.errors.ProvisioningError, classes) == []


def test_a_stale_or_misplaced_tree_is_reported() -> None:
    root = provisioning.errors.ProvisioningError

    class Drawn(root):  # type: ignore[misc,valid-type]
        pass

    class Undrawn(Drawn):
        pass

    errors = types.ModuleType("errors", "Tree.\n\nProvisioningError\n└── Drawn\n    └── Gone\n")
    assert tree_problems(errors, root, [Drawn, Undrawn, ValueError]) == [
        f"{__name__}.{Undrawn.__qualname__} is missing from the tree in errors",
        "builtins.ValueError does not derive from ProvisioningError",
        "Gone is drawn in errors but no such exception class is defined",
    ]
    moved = types.ModuleType("errors", "ProvisioningError\n├── Drawn\n└── Undrawn\n")
    assert tree_problems(moved, root, [Drawn, Undrawn]) == [
        f"{__name__}.{Undrawn.__qualname__} is drawn under ProvisioningError but derives from Drawn"
    ]
