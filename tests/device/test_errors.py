"""The device's exception tree: every exception class in ``appliance`` derives from
``ApplianceError`` and is drawn under its parent in appliance/errors.py."""

from __future__ import annotations

import appliance.errors
from tests.errortree import exception_classes, tree_problems


def test_every_device_exception_is_in_the_tree() -> None:
    classes = exception_classes("appliance")
    assert appliance.errors.SessionLost in classes
    assert tree_problems(appliance.errors, appliance.errors.ApplianceError, classes) == []
