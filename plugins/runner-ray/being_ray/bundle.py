"""Files that travel with a Ray task when its node cannot see the run folder (shipped storage).

A bundle is an uncompressed tar of run-folder-relative paths (frames and models are compressed already).
Unpacking refuses anything but plain files and folders below the destination: a bundle is data from another
machine, so no link, device, absolute path or ``..`` gets through.
"""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from being_core.errors import StageFailed
from being_core.paths import is_inside
from being_core.protocol import StageRequest


def pack(root: Path, rels: Iterable[str]) -> bytes:
    """The files at ``rels`` (relative to ``root``), with their relative paths."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for rel in sorted(set(rels)):
            tar.add(root / rel, arcname=rel, recursive=False)
    return buffer.getvalue()


def files_below(root: Path, rel_dir: str) -> list[str]:
    """Every file under ``root / rel_dir``, relative to ``root``."""
    base = root / rel_dir
    return [p.relative_to(root).as_posix() for p in sorted(base.rglob("*")) if p.is_file()] if base.is_dir() else []


def unpack(data: bytes, dest: Path, under: str | None = None) -> list[str]:
    """Write a bundle's files below ``dest`` (each one under ``under`` when given); returns their paths."""
    written = []
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        members = tar.getmembers()
        for member in members:
            path = PurePosixPath(member.name)
            inside = not path.is_absolute() and ".." not in path.parts and (
                under is None or path.parts[: len(PurePosixPath(under).parts)] == PurePosixPath(under).parts)
            if not inside or not (member.isfile() or member.isdir()):
                raise StageFailed(f"a Ray task sent back {member.name!r}, which is not a plain file"
                                  f"{' under ' + under if under else ''}; nothing was kept")
        for member in members:
            if member.isfile():
                target = dest / member.name
                target.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                assert source is not None
                tmp = target.with_name(f".{target.name}.part")
                with open(tmp, "wb") as out:
                    while chunk := source.read(1 << 20):
                        out.write(chunk)
                os.replace(tmp, target)
                written.append(member.name)
    return written


def inputs_of(request: StageRequest, root: Path, request_rel: str) -> list[str]:
    """What a node needs to run ``request``: the request itself, its declared inputs, the files its action's
    parameters name, and the stage's saved state (checkpoints), so that a shipped retry resumes too."""
    rels = [request_rel, *request.inputs]
    for value in request.params.values():
        if isinstance(value, str) and (root / value).is_file() and _inside(root, value):
            rels.append(value)
    rels += files_below(root, f"{request.work_dir}/state")
    return rels


def _inside(root: Path, rel: str) -> bool:
    """A run path (:func:`being_core.paths.is_inside`) that, links followed, still lies under ``root``."""
    if not is_inside(rel):
        return False
    try:
        (root / rel).resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return True
