"""Native code and child processes, kept in their place (no model code here).

:func:`native_stderr_to` keeps a native library's log lines off the user's console; :func:`die_with_parent`
ties a child process's life to its parent's.

Native code such as mediapipe's TFLite and absl writes straight to file descriptor 2 ("Created TensorFlow
Lite XNNPACK delegate", "All log messages before absl::InitializeLog()", ...), bypassing Python's logging
and its level settings. Inside :func:`native_stderr_to`, fd 2 goes to a temporary file while Python's own
``sys.stderr`` (progress bars, log records) keeps writing to the real stderr; the captured lines go to the
given logger at DEBUG level afterwards.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from collections.abc import Iterator


@contextlib.contextmanager
def native_stderr_to(log: logging.Logger) -> Iterator[None]:
    sys.stderr.flush()
    saved_fd = os.dup(2)
    saved_stream = sys.stderr
    with tempfile.TemporaryFile(mode="w+b") as capture:
        os.dup2(capture.fileno(), 2)
        sys.stderr = os.fdopen(os.dup(saved_fd), "w", buffering=1, encoding="utf-8", errors="replace")
        try:
            yield
        finally:
            sys.stderr.flush()
            sys.stderr.close()
            sys.stderr = saved_stream
            os.dup2(saved_fd, 2)
            os.close(saved_fd)
            capture.seek(0)
            for line in capture.read().decode("utf-8", "replace").splitlines():
                if line.strip():
                    log.debug("native: %s", line)


def die_with_parent() -> None:
    """``preexec_fn`` for a child process (ffmpeg, a stage's own process): on Linux the kernel kills it when
    the process that started it dies, even by ``kill -9``, so no orphan keeps writing into a run folder that
    the next attempt uses. Elsewhere it does nothing."""
    import ctypes
    import signal

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: no parent-death signal to ask for
        pass
