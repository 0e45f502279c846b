"""The stand-in's exception tree: every exception class in ``provisioning.standin`` derives
from ``StandinError`` and is drawn under its parent in provisioning/standin/errors.py."""

from __future__ import annotations

import provisioning.standin.errors
from tests.errortree import exception_classes, tree_problems

# call.py is being split in another branch: re-parent it there, then drop it from here
PENDING = ["provisioning.standin.call.SessionUpdateError does not derive from StandinError"]


def test_every_standin_exception_is_in_the_tree() -> None:
    # __main__ runs the stand-in when imported
    classes = exception_classes("provisioning.standin", skip=("provisioning.standin.__main__",))
    root = provisioning.standin.errors.StandinError
    problems = tree_problems(provisioning.standin.errors, root, classes)
    assert [p for p in problems if p not in PENDING] == []
    assert [p for p in PENDING if p not in problems] == [], "fixed: remove it from PENDING"
