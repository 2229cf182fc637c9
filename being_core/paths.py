"""Paths that run documents (``being.json``, requests, results, action parameters) may name.

Run folders travel between people, so every path read from one is confined to it: relative, POSIX, never
through ``..``. A document naming anything else is refused before any file is touched.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Annotated

from pydantic import AfterValidator


def is_inside(rel: object) -> bool:
    """Whether ``rel`` is a path a run document may name: relative, in the run folder, never through ``..``."""
    if not isinstance(rel, str) or not rel or "\\" in rel or "\x00" in rel:
        return False
    path = PurePosixPath(rel)
    return not path.is_absolute() and ".." not in path.parts


def _inside(rel: str) -> str:
    if not is_inside(rel):
        raise ValueError(f"{rel!r} is not a path inside the run folder")
    return rel


#: A path relative to the run folder, validated by :func:`is_inside` (for pydantic models).
RunPath = Annotated[str, AfterValidator(_inside)]
