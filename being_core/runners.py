"""Runners launch a stage request somewhere: this process, a child process, a container, a cluster.

A runner is a plugin like any stage implementation (``being_register_runners``); the two here come with the
core. Every runner ends the same way: the stage's ``result.json`` exists (or the stage counts as failed).
A runner receives the implementation, the request file and its own typed options, nothing global.
"""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from .errors import StageFailed
from .execute import execute
from .hookspecs import hookimpl
from .native import die_with_parent
from .progress import Reporter, replay
from .stage import Stage

if TYPE_CHECKING:
    from .registry import Implementation, Registry

log = logging.getLogger("being.runner")


class RunnerOptions(BaseModel):
    """Options every runner takes (``runner_options`` in a stage's config); runners extend them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    timeout_s: float | None = Field(None, gt=0, le=30 * 86400, description="Wall-clock limit for the stage, seconds.")


OptionsT = TypeVar("OptionsT", bound=RunnerOptions)


class Runner(Generic[OptionsT]):
    """Subclass with ``name``, an ``Options`` model (a :class:`RunnerOptions` subclass) and :meth:`launch`."""

    name: ClassVar[str]
    Options: ClassVar[type[RunnerOptions]] = RunnerOptions

    @classmethod
    def summary(cls) -> str:
        doc = (cls.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""

    @classmethod
    def check_definition(cls) -> list[str]:
        problems = []
        if not re.fullmatch(r"[a-z][a-z0-9-]*", str(getattr(cls, "name", ""))):
            problems.append(f"name {getattr(cls, 'name', None)!r} must be lower-case letters, digits and dashes")
        if not (isinstance(cls.Options, type) and issubclass(cls.Options, RunnerOptions)):
            problems.append("Options must subclass being_core.runners.RunnerOptions")
        return problems

    def check(self, impl: Implementation, options: OptionsT) -> None:
        """Raise a UsageError before any stage starts when this runner cannot run ``impl``."""

    def launch(self, impl: Implementation, request: Path, root: Path, options: OptionsT,
               progress: Reporter) -> None:
        """Run the request (``root``-relative paths inside) to completion."""
        raise NotImplementedError


class InProcessRunner(Runner[RunnerOptions]):
    """Runs the stage in this Python process (fastest; shares this environment)."""

    name = "inprocess"

    def launch(self, impl: Implementation, request: Path, root: Path, options: RunnerOptions,
               progress: Reporter) -> None:
        execute(request, root, progress, impl.cls)


class SubprocessRunner(Runner[RunnerOptions]):
    """Runs ``being stage REQUEST`` in a child Python: same environment, separate memory, killable."""

    name = "subprocess"

    def launch(self, impl: Implementation, request: Path, root: Path, options: RunnerOptions,
               progress: Reporter) -> None:
        cmd = [sys.executable, "-m", "being_core", "stage", str(request), "--root", str(root),
               "--progress", "jsonl"]
        log_path = request.parent / "work" / "stage.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "w", encoding="utf-8") as log_file:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log_file, text=True, bufsize=1,
                                    preexec_fn=die_with_parent)
            timer = _kill_after(proc, options.timeout_s)
            tasks: dict[Any, Any] = {}
            try:
                assert proc.stdout is not None
                for line in proc.stdout:
                    if not replay(line, progress, tasks):
                        log_file.write(line)
                code = proc.wait()
            except KeyboardInterrupt:
                proc.kill()
                proc.wait()
                raise
            finally:
                for task in tasks.values():
                    task.close()
                if timer:
                    timer.cancel()
        if timer and timer.fired:
            assert options.timeout_s is not None
            raise timed_out(impl.cls, "", options.timeout_s, " and was stopped", log_path)
        check_exit(impl.cls, "subprocess", code, log_path)


def timed_out(stage: type[Stage[Any]], where: str, timeout_s: float, what_happened: str,
              log_path: Path) -> StageFailed:
    """The error of a stage that an out-of-process runner stopped at ``runner_options.timeout_s``."""
    return StageFailed(f"{stage.kind} '{stage.name}'{' ' + where if where else ''} exceeded its timeout of "
                       f"{timeout_s:g} s{what_happened} (log: {log_path})")


def check_exit(stage: type[Stage[Any]], where: str, code: int | None, log_path: Path, note: str = "") -> None:
    """Raise when an out-of-process stage ended without a result of its own: any exit code but 0 (done) and
    1 (the stage failed and wrote a result saying why). The error ends with the last lines of its log."""
    if code not in (0, 1):
        raise StageFailed(f"{stage.kind} '{stage.name}' {where} exited with code {code}{note}; last log lines:\n"
                          f"{tail(log_path)}")


class _Timer(threading.Timer):
    fired = False


def _kill_after(proc: subprocess.Popen, timeout_s: float | None) -> _Timer | None:
    if not timeout_s:
        return None

    def kill() -> None:
        timer.fired = True
        proc.kill()

    timer = _Timer(timeout_s, kill)
    timer.daemon = True
    timer.start()
    return timer


def tail(path: Path, lines: int = 20) -> str:
    """The last lines of a log file ("(no log)" when it cannot be read)."""
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@hookimpl
def being_register_runners(registry: Registry) -> None:
    registry.add_runner(InProcessRunner)
    registry.add_runner(SubprocessRunner)
