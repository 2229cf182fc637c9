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
            raise timed_out(stage, "", options.timeout_s, " and was stopped", log_path)
        check_exit(stage, "subprocess", code, log_path)


def timed_out(stage: type[Stage], where: str, timeout_s: float, what_happened: str, log_path: Path) -> StageFailed:
    """The error of a stage that an out-of-process runner stopped at ``runner_options.timeout_s``."""
    return StageFailed(f"{stage.kind} '{stage.name}'{' ' + where if where else ''} exceeded its timeout of "
                       f"{timeout_s:g} s{what_happened} (log: {log_path})")


def check_exit(stage: type[Stage], where: str, code: int | None, log_path: Path, note: str = "") -> None:
    """Raise when an out-of-process stage ended without a result of its own: any exit code but 0 (done) and
    1 (the stage failed and wrote a result saying why). The error ends with the last lines of its log."""
    if code not in (0, 1):
        raise StageFailed(f"{stage.kind} '{stage.name}' {where} exited with code {code}{note}; last log lines:\n"
                          f"{_tail(log_path)}")


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

