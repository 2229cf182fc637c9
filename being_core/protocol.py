"""The versioned JSON documents that cross a process or container boundary.

A stage gets a request and writes a result, last, into its work folder. Paths inside both are relative
to the run folder (the mount root), so the same request works in-process, in a subprocess and in a container.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 1


class _Doc(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StageRequest(_Doc):
    kind: Literal["being.stage-request"] = "being.stage-request"
    schema_version: Literal[1] = SCHEMA_VERSION
    stage: str = Field(description="Stage kind, e.g. 'audio_encoder'.")
    impl: str = Field(description="Implementation name.")
    version: str = Field(description="Implementation version the core expects to run.")
    action: Literal["run", "render"] = Field("run", description="'render' only for trainers.")
    config: dict[str, Any] = Field(default_factory=dict, description="The implementation's validated config.")
    inputs: list[str] = Field(default_factory=list, description="Input files, relative to the run folder.")
    work_dir: str = Field(description="The stage's writable folder, relative to the run folder.")
    params: dict[str, Any] = Field(default_factory=dict, description="Action parameters (render: audio, output).")

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
    kind: Literal["being.stage-result"] = "being.stage-result"
    schema_version: Literal[1] = SCHEMA_VERSION
    stage: str
    impl: str
    version: str
    ok: bool
    outputs: list[str] = Field(default_factory=list, description="Files written, relative to the output folder.")
    metrics: dict[str, Any] = Field(default_factory=dict)
    info: dict[str, Any] = Field(default_factory=dict)
    error: StageError | None = None
    seconds: float = 0.0


def write_json_atomic(path: Path, data: dict[str, Any] | BaseModel) -> None:
    """Write JSON to a temporary name beside ``path`` and rename it into place."""
    text = data.model_dump_json(indent=2) if isinstance(data, BaseModel) else json.dumps(data, indent=2)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_text(text + "\n", encoding="utf-8")
    os.replace(tmp, path)
