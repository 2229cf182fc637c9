"""``being.json``: what each stage of a run did, with the hashes that decide whether it must run again."""

from __future__ import annotations

import fnmatch
import hashlib
import json
import re
import time
from pathlib import Path
from typing import Any

from .errors import InputError
from .paths import is_inside
from .protocol import write_json_atomic

MANIFEST_NAME = "being.json"
MANIFEST_SCHEMA_VERSION = 1
INTERNAL_DIR = ".being"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_json(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def match_patterns(root: Path, patterns: tuple[str, ...] | list[str]) -> dict[str, list[str]]:
    """Files under ``root`` matching each glob pattern (relative, sorted naturally by frame number)."""
    found: dict[str, list[str]] = {}
    for pattern in patterns:
        hits = [p.relative_to(root).as_posix() for p in root.glob(pattern) if p.is_file()]
        found[pattern] = sorted(hits, key=natural_key)
    return found


def natural_key(rel: str) -> tuple:
    """Sort ``ori_imgs/10.jpg`` after ``ori_imgs/9.jpg``."""
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", rel))


def matches_any(rel: str, patterns: tuple[str, ...] | list[str]) -> bool:
    return any(fnmatch.fnmatchcase(rel, p) and rel.count("/") == p.count("/") for p in patterns)


class Manifest:
    """The run's ``being.json``. Saved atomically after every change, so an interrupted run resumes."""

    def __init__(self, root: Path, data: dict[str, Any]):
        self.root, self.data = root, data

    @classmethod
    def load(cls, root: Path) -> Manifest:
        path = root / MANIFEST_NAME
        if not path.exists():
            return cls(root, {"kind": "being.manifest", "schema_version": MANIFEST_SCHEMA_VERSION,
                              "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "stages": {}, "files": {}})
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise InputError(f"{path} is not a readable Being manifest: {exc}") from None
        if data.get("kind") != "being.manifest" or data.get("schema_version") != MANIFEST_SCHEMA_VERSION:
            raise InputError(
                f"{path} is not a Being manifest of schema version {MANIFEST_SCHEMA_VERSION} "
                f"(kind={data.get('kind')!r}, schema_version={data.get('schema_version')!r})"
            )
        data.setdefault("stages", {})
        data.setdefault("files", {})
        if not isinstance(data["stages"], dict) or not isinstance(data["files"], dict):
            raise InputError(f"{path} is not a Being manifest: 'stages' and 'files' must be mappings")
        recorded = list(data["files"])
        for entry in data["stages"].values():
            if isinstance(entry, dict):
                recorded += [*entry.get("outputs", {}), *entry.get("inputs", {})]
        outside = [rel for rel in recorded if not is_inside(rel)]
        if outside:  # a shared or crafted run folder must never make Being touch other files
            raise InputError(f"{path} names files outside its run folder ({', '.join(map(repr, outside[:3]))}); "
                             f"refusing to use it")
        return cls(root, data)

    def save(self) -> None:
        write_json_atomic(self.root / MANIFEST_NAME, self.data)

    @property
    def stages(self) -> dict[str, Any]:
        return self.data["stages"]

    def digest(self, rel: str) -> str:
        """sha256 of a run file, reusing the stored hash while size and mtime are unchanged."""
        path = self.root / rel
        st = path.stat()
        cached = self.data["files"].get(rel)
        if cached and cached[0] == st.st_size and cached[1] == st.st_mtime_ns:
            return cached[2]
        digest = sha256_file(path)
        self.data["files"][rel] = [st.st_size, st.st_mtime_ns, digest]
        return digest

    def digests(self, rels: list[str]) -> dict[str, str]:
        return {rel: self.digest(rel) for rel in rels}

    def forget(self, rels: list[str]) -> None:
        for rel in rels:
            self.data["files"].pop(rel, None)

    def outputs_intact(self, kind: str) -> bool:
        """True when every output the stage recorded is still on disk with the same hash."""
        entry = self.stages.get(kind)
        if not entry or entry.get("status") != "done":
            return False
        for rel, digest in entry.get("outputs", {}).items():
            if not (self.root / rel).is_file() or self.digest(rel) != digest:
                return False
        return True
