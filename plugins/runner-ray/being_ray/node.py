"""What runs on the Ray node: find the run folder (or unpack the shipped one), run the stage through the
inner runner, send progress and log lines back, and return what the stage wrote when it was shipped."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from .bundle import files_below, pack, unpack


class NodeJob(BaseModel):
    """One stage request for a node; paths are the driver's (``root``) and run-folder relative (``request``)."""

    kind: str
    impl: str
    root: str
    request: str
    request_sha256: str
    work_dir: str
    storage: str  # "shared": must see the run folder; "auto": try; "shipped": the bundle holds the inputs
    inner: str
    inner_options: dict[str, Any]
    launch_id: str


class _HubStream(io.StringIO):
    """A text stream whose lines go to the driver's progress hub (a Ray actor), a few at a time."""

    def __init__(self, hub: Any, launch_id: str):
        super().__init__()
        self._hub, self._id = hub, launch_id
        self._lines: list[str] = []

    def write(self, text: str) -> int:
        self._lines += [line for line in text.splitlines() if line]
        return len(text)

    def flush(self) -> None:
        if self._lines:
            self._hub.put.remote(self._id, self._lines)
            self._lines = []


class _Collect(logging.Handler):
    """Keeps the stage's log records (the driver writes them into the run log)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[tuple[int, str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append((record.levelno, record.name, record.getMessage()))


def node_name() -> str:
    try:
        import ray

        return ray.util.get_node_ip_address()
    except Exception:  # noqa: BLE001 - only a label
        return socket.gethostname()


def sees(root: Path, request_rel: str, sha256: str) -> bool:
    """Whether this node sees the driver's run folder: the request is there with the same bytes."""
    try:
        return hashlib.sha256((root / request_rel).read_bytes()).hexdigest() == sha256
    except OSError:
        return False


def run_job(job_data: dict[str, Any], bundle: bytes | None, hub: Any) -> dict[str, Any]:
    """The Ray task. Returns ``{"visible": False}`` when ``storage`` is ``auto`` and the run folder is not here;
    ``times``: when the task's body began, when the stage began and ended (``time.time()`` on the node)."""
    entered = time.time()
    from being_core.plugins import load_registry
    from being_core.progress import JsonLinesReporter

    job = NodeJob.model_validate(job_data)
    node = node_name()
    scratch = None
    root = Path(job.root)
    if bundle is None and not sees(root, job.request, job.request_sha256):
        if job.storage == "auto":
            return {"visible": False, "node": node}
        from being_core.errors import StageFailed

        raise StageFailed(f"Ray node {node} cannot see the run folder {root} (runner_options.storage: shared); "
                          f"mount it at the same path on every node, or use storage: auto or shipped")
    if bundle is not None:
        scratch = Path(tempfile.mkdtemp(prefix="being-ray-"))
        root = scratch / "run"
        unpack(bundle, root)
    handler = _Collect()
    logger = logging.getLogger("being")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    stream = _HubStream(hub, job.launch_id)
    try:
        registry = load_registry()
        impl = registry.implementation(job.kind, job.impl)
        inner = registry.runner(job.inner)
        options = inner.cls.Options.model_validate(job.inner_options)
        inner.cls().check(impl, options)  # on the node: its Docker images, its devices
        began = time.time()
        inner.cls().launch(impl, root / job.request, root, options, JsonLinesReporter(stream, interval_s=0.5))
        ended = time.time()
        stream.flush()
        back = pack(root, files_below(root, job.work_dir)) if scratch is not None else None
        return {"visible": True, "node": node, "pid": os.getpid(), "bundle": back, "log": handler.records,
                "times": [entered, began, ended]}
    finally:
        logger.removeHandler(handler)
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


class ProgressHub:
    """A tiny Ray actor on the driver's side: nodes put progress lines, the driver takes them."""

    def __init__(self) -> None:
        self._lines: dict[str, list[str]] = {}

    def put(self, launch_id: str, lines: list[str]) -> None:
        self._lines.setdefault(launch_id, []).extend(lines)

    def take(self, launch_id: str) -> list[str]:
        return self._lines.pop(launch_id, [])
