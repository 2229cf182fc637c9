"""Runners launch a stage request somewhere: in this process, in a subprocess, or in a container.

Every runner ends the same way: the stage's ``result.json`` exists (or the stage counts as failed).
"""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
from pathlib import Path

from .config import RunnerOptions
from .errors import StageFailed, UsageError
from .execute import execute
from .progress import Reporter, replay
from .registry import Registry
from .stage import Stage

log = logging.getLogger("being.runner")


class Runner:
    name = "base"

    def check(self, stage: type[Stage], options: RunnerOptions) -> None:
        """Raise a UsageError before any stage starts when this runner cannot run ``stage``."""

    def launch(self, request: Path, root: Path, stage: type[Stage], options: RunnerOptions,
               progress: Reporter, registry: Registry | None = None) -> None:
        """Run the request to completion; ``registry`` is the caller's (used only in-process)."""
        raise NotImplementedError


class InProcessRunner(Runner):
    """Runs the stage in this Python process (fastest; shares this environment)."""

    name = "inprocess"

    def launch(self, request, root, stage, options, progress, registry=None):
        execute(request, root, progress, registry)


class SubprocessRunner(Runner):
    """Runs ``being stage REQUEST`` in a child Python: same environment, separate memory, killable."""

    name = "subprocess"

    def launch(self, request, root, stage, options, progress, registry=None):
        cmd = [sys.executable, "-m", "being_core", "stage", str(request), "--root", str(root),
               "--progress", "jsonl"]
        log_path = request.parent / "work" / "stage.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "w", encoding="utf-8") as log_file:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log_file, text=True, bufsize=1)
            timer = _kill_after(proc, options.timeout_s)
            tasks: dict = {}
            try:
                for line in proc.stdout:  # type: ignore[union-attr]
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
            raise StageFailed(f"{stage.kind} '{stage.name}' exceeded its timeout of {options.timeout_s:g} s "
                              f"and was stopped (log: {log_path})")
        if code not in (0, 1):  # 1 = the stage failed and wrote a result saying why
            tail = _tail(log_path)
            raise StageFailed(f"{stage.kind} '{stage.name}' subprocess exited with code {code}; last log lines:\n"
                              f"{tail}")


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


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def get_runner(name: str) -> Runner:
    if name == "inprocess":
        return InProcessRunner()
    if name == "subprocess":
        return SubprocessRunner()
    if name == "docker":
        from .dockerrun import DockerRunner

        return DockerRunner()
    raise UsageError(f"unknown runner '{name}'; available: inprocess, subprocess, docker")

