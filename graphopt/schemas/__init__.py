"""JSON Schemas of the files graphopt writes (``graphopt.partition/1``, ``fusion/1``, ...).

The schemas ship with the package so scripts can check a file without graphopt's code:
``jsonschema.validate(doc, graphopt.schemas.load("graphopt.partition/1"))``. They pin the
contract's fields and types; extra fields are allowed, as the contract says.

Example:
    >>> from graphopt import schemas
    >>> schemas.validate(json.load(open("out/partition.json")))   # raises on a bad document
"""
from __future__ import annotations

import json
from functools import cache
from importlib import resources

from graphopt.errors import GraphoptError

__all__ = ["load", "validate", "NAMES"]

NAMES = ("graphopt.partition/1", "graphopt.fusion/1", "graphopt.memory/1", "graphopt.train/1",
         "graphopt.device/1", "graphopt.parallel/1")


@cache
def load(name: str) -> dict:
    """The schema for ``name`` (e.g. ``"graphopt.partition/1"``)."""
    if name not in NAMES:
        raise GraphoptError(f"no schema {name!r}; known: {', '.join(NAMES)}")
    stem = name.removeprefix("graphopt.").replace("/", "-")
    return json.loads(resources.files(__name__).joinpath(f"{stem}.json").read_text())


def validate(doc: dict) -> None:
    """Check ``doc`` against the schema its ``schema`` field names (needs ``jsonschema``)."""
    try:
        import jsonschema
    except ImportError:  # pragma: no cover - the test extra installs it
        raise GraphoptError("validating needs jsonschema: pip install jsonschema") from None
    name = doc.get("schema") if isinstance(doc, dict) else None
    if name not in NAMES:
        raise GraphoptError(f"document has no known schema field (got {name!r})")
    jsonschema.validate(doc, load(name))
