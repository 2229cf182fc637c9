"""The versioned JSON documents that cross a process or container boundary.

A stage gets a request and writes a result, last, into its work folder. Paths inside both are relative
to the run folder (the mount root), so the same request works in-process, in a subprocess and in a container.
The request carries everything the stage may know besides its input files: its config, the dataset facts,
the ``info`` of the upstream stages it declares, and the action's parameters. All of it is in the cache key.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .paths import RunPath
from .stage import DatasetFacts

SCHEMA_VERSION = 2


class _Doc(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StageRequest(_Doc):
    kind: Literal["being.stage-request"] = "being.stage-request"
    schema_version: Literal[2] = 2
    stage: str = Field(description="Stage kind, e.g. 'audio_encoder'.")
    impl: str = Field(description="Implementation name.")
    version: str = Field(description="Implementation version the core expects to run.")
    action: str = Field("run", description="'run', or an action the kind declares (a trainer's 'render').")
    config: dict[str, Any] = Field(default_factory=dict, description="The implementation's validated config.")
    dataset: DatasetFacts = Field(description="The run's dataset facts (frames, size, split).")
    upstream: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="The info of the earlier stages the implementation reads (reads_info).")
    inputs: list[RunPath] = Field(default_factory=list, description="Input files, relative to the run folder.")
    work_dir: RunPath = Field(description="The stage's writable folder, relative to the run folder.")
    params: dict[str, Any] = Field(default_factory=dict, description="The action's parameters.")

    @property
    def out_dir(self) -> str:
        return f"{self.work_dir}/out"

    @property
    def result_path(self) -> str:
        return f"{self.work_dir}/result.json"


class StageError(_Doc):
    type: str
    message: str
    traceback: str = ""


class StageResult(_Doc):
    """The stage's word on how it went. Its files are what it left in ``out/``; the core lists them itself."""

    kind: Literal["being.stage-result"] = "being.stage-result"
    schema_version: Literal[2] = 2
    stage: str
    impl: str
    version: str
    ok: bool
    metrics: dict[str, Any] = Field(default_factory=dict)
    info: dict[str, Any] = Field(default_factory=dict)
    error: StageError | None = None
    seconds: float = 0.0


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) atomically (:func:`write_bytes_atomic`)."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary name beside ``path`` and rename it into place: ``path`` is either the old
    file or the whole new one, and a failed write (a full disk) leaves no partial file behind."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as exc:  # name the file the user knows, not the temporary one
        raise OSError(exc.errno, exc.strerror, str(path)) from None
    finally:
        tmp.unlink(missing_ok=True)


def write_json_atomic(path: Path, data: dict[str, Any] | BaseModel) -> None:
    """Write JSON atomically (:func:`write_text_atomic`)."""
    text = data.model_dump_json(indent=2) if isinstance(data, BaseModel) else json.dumps(data, indent=2)
    write_text_atomic(path, text + "\n")
