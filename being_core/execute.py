"""The stage side of the boundary: read a request, run one implementation, write its result last.

This is what ``being-stage REQUEST`` runs, whether launched in-process, as a subprocess or in a container.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
import traceback
from pathlib import Path

from pydantic import ValidationError

from .errors import BeingError, InputError, StageFailed
from .manifest import INTERNAL_DIR, MANIFEST_NAME
from .plugins import load_registry
from .progress import Reporter
from .protocol import StageError, StageRequest, StageResult, write_json_atomic
from .registry import Registry
from .stage import StageContext, StageKind

log = logging.getLogger("being.stage")


def read_request(path: Path) -> StageRequest:
    try:
        return StageRequest.model_validate_json(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"stage request {path} does not exist") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "document"
        raise InputError(f"{path} is not a valid stage request: {where}: {first['msg']}") from None


def root_of(request_path: Path) -> Path:
    """A request lives at ``RUN/.being/stages/<name>/request.json``; RUN is the root."""
    parts = request_path.resolve().parts
    if INTERNAL_DIR in parts:
        return Path(*parts[: len(parts) - 1 - parts[::-1].index(INTERNAL_DIR)])
    raise InputError(f"cannot tell the run folder of {request_path}; pass --root")


def execute(request_path: Path, root: Path | None = None, progress: Reporter | None = None,
            registry: Registry | None = None) -> StageResult:
    """Run the requested stage and write ``result.json``. Errors inside the stage become a failed result."""
    request = read_request(request_path)
    root = (root or root_of(request_path)).resolve()
    out = root / request.out_dir
    started = time.monotonic()

    def finish(ok: bool, outputs=(), metrics=None, info=None, error=None) -> StageResult:
        result = StageResult(stage=request.stage, impl=request.impl, version=request.version, ok=ok,
                             outputs=list(outputs), metrics=metrics or {}, info=info or {}, error=error,
                             seconds=round(time.monotonic() - started, 3))
        write_json_atomic(root / request.result_path, result)
        return result

    try:
        registry = registry or load_registry()
        cls = registry.get(StageKind(request.stage), request.impl)
        if cls.version != request.version:
            raise StageFailed(
                f"{request.stage} '{request.impl}' here is version {cls.version}, but the run asks for "
                f"{request.version}; rebuild its image (`being images build {cls.slug()}`) or reinstall the plugin"
            )
        config = cls.Config.model_validate(request.config)
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        manifest_path = root / MANIFEST_NAME
        manifest = json.loads(manifest_path.read_text(encoding="utf-8")) if manifest_path.exists() else {}
        state = root / request.work_dir / "state"
        state.mkdir(exist_ok=True)
        ctx = StageContext(root=root, out=out, config=config, manifest=manifest, progress=progress or Reporter(),
                           action=request.action, params=request.params, state=state)
        stage = cls()
        report = stage.render(ctx) if request.action == "render" else stage.run(ctx)
        outputs = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
        return finish(True, outputs, report.metrics, report.info)
    except KeyboardInterrupt:
        finish(False, error=StageError(type="KeyboardInterrupt", message="interrupted"))
        raise
    except Exception as exc:  # the stage's failure is data for the core, not a crash of the runner
        message = str(exc) if isinstance(exc, BeingError) else f"{type(exc).__name__}: {exc}"
        log.error("stage %s '%s' failed: %s", request.stage, request.impl, message)
        return finish(False, error=StageError(type=type(exc).__name__, message=message,
                                              traceback=traceback.format_exc()))
