"""The stage side of the boundary: read a request, run one implementation, write its result last.

This is what ``being-stage REQUEST`` runs, whether launched in-process, as a subprocess or in a container.
"""

from __future__ import annotations

import logging
import shutil
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from .errors import BeingError, InputError, StageFailed
from .manifest import INTERNAL_DIR
from .progress import Reporter
from .protocol import StageError, StageRequest, StageResult, write_json_atomic
from .stage import Stage, StageContext, StageKind

if TYPE_CHECKING:
    from .registry import Registry

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
            cls: type[Stage[Any]] | None = None, registry: Registry | None = None) -> StageResult:
    """Run the requested stage and write ``result.json``. Errors inside the stage become a failed result.

    ``cls`` is the implementation when the caller has it (a runner in this process); otherwise it is looked up
    in ``registry``, the plugins installed where the request runs (``being-stage`` in a child process or a
    container).
    """
    if cls is None and registry is None:
        raise TypeError("execute() needs the implementation (cls) or a registry to find it in")
    request = read_request(request_path)
    root = (root or root_of(request_path)).resolve()
    out = root / request.out_dir
    started = time.monotonic()

    def finish(ok: bool, metrics=None, info=None, error=None) -> StageResult:
        result = StageResult(stage=request.stage, impl=request.impl, version=request.version, ok=ok,
                             metrics=metrics or {}, info=info or {}, error=error,
                             seconds=round(time.monotonic() - started, 3))
        write_json_atomic(root / request.result_path, result)
        return result

    try:
        if cls is None:
            assert registry is not None
            cls = registry.get(StageKind(request.stage), request.impl)
        if cls.version != request.version:
            raise StageFailed(
                f"{request.stage} '{request.impl}' here is version {cls.version}, but the run asks for "
                f"{request.version}; rebuild its image or reinstall the plugin"
            )
        config = cls.Config.model_validate(request.config)
        if request.action != "run" and request.action not in cls.actions:
            raise StageFailed(f"{request.stage} '{request.impl}' has no action '{request.action}'")
        action = cls.action(request.action)
        params = action.params.model_validate(request.params) if action else None
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        state = root / request.work_dir / "state"
        state.mkdir(exist_ok=True)
        ctx = StageContext(root=root, out=out, config=config, dataset=request.dataset, upstream=request.upstream,
                           progress=progress or Reporter(), action=request.action, params=params, state=state)
        stage = cls()
        report = getattr(stage, action.method)(ctx) if action else stage.run(ctx)
        return finish(True, report.metrics, report.info)
    except KeyboardInterrupt:
        finish(False, error=StageError(type="KeyboardInterrupt", message="interrupted"))
        raise
    except Exception as exc:  # the stage's failure is data for the core, not a crash of the runner
        message = str(exc) if isinstance(exc, BeingError) else f"{type(exc).__name__}: {exc}"
        log.error("stage %s '%s' failed: %s", request.stage, request.impl, message)
        return finish(False, error=StageError(type=type(exc).__name__, message=message,
                                              traceback=traceback.format_exc()))
