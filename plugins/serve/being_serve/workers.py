"""Several server processes on one port: ``being serve --workers N``.

One Python process handles every session's audio, clock, encoder stream and WebSocket; on a GPU that renders
thousands of frames a second, that interpreter, not the card, is what limits the number of sessions. With
``--workers N`` the command binds the port once and starts N worker processes (spawned, so that none inherits a
CUDA context) that share the listening socket: the kernel hands each new connection to one of them. Each worker
loads the avatars on the same device and batches the frames of its own sessions; ``--max-sessions`` counts the
sessions of all of them (a shared counter), and ``/api/stats`` answers for all of them (each worker writes its
figures to a shared board once a second; ``workers`` there lists the sessions of each).

A worker that dies (its sessions end with it) is started again; Ctrl+C stops them all.
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import os
import queue
import signal
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from being_core.errors import BeingError, InputError, os_error_text

log = logging.getLogger("being.serve")
SLOT = 128 * 1024  # bytes of figures per worker on the board


def process_tree(pid: int) -> set[int]:
    """``pid`` and every process under it (from ``/proc``; what is not readable is left out)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            pass
    tree, grew = {pid}, True
    while grew:
        more = {child for child, parent in parents.items() if parent in tree} - tree
        tree |= more
        grew = bool(more)
    return tree


class Board:
    """Each worker's latest figures (:meth:`being_serve.app.Server.counts`, as JSON), in shared memory."""

    def __init__(self, context: Any, workers: int):
        self.workers = workers
        self._data = context.Array("c", workers * SLOT)

    def write(self, worker: int, figures: dict) -> None:
        data = json.dumps(figures, separators=(",", ":")).encode()
        if len(data) > SLOT - 8:  # too many samples: keep the counts
            figures = {**figures, "latencies": [], "avatars": {n: {**a, "batch_sizes": [], "render_ms": []}
                                                               for n, a in figures["avatars"].items()}}
            data = json.dumps(figures, separators=(",", ":")).encode()
        with self._data.get_lock():
            self._data[worker * SLOT:worker * SLOT + 8] = len(data).to_bytes(8, "little")
            self._data[worker * SLOT + 8:worker * SLOT + 8 + len(data)] = data

    def read(self) -> list[dict | None]:
        """Every worker's figures (None for one that has written nothing yet)."""
        out: list[dict | None] = []
        with self._data.get_lock():
            raw = self._data.raw
        for i in range(self.workers):
            n = int.from_bytes(raw[i * SLOT:i * SLOT + 8], "little")
            out.append(json.loads(raw[i * SLOT + 8:i * SLOT + 8 + n]) if n else None)
        return out


@dataclass
class Plan:
    """What every worker serves, and how (the command's options)."""

    runs: list[str]
    device: str | None
    max_batch: int
    gpu_jpeg: bool
    settings: Any  # being_serve.session.Settings
    token: str | None
    ws_max_size: int
    switch_ms: float
    render_threads: int | None = None  # per avatar; None: 1 on a GPU, one per core on a CPU


def cores() -> int:
    """The CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def load_hosts(plan: Plan, progress: Any = None) -> dict:
    """Open every run of ``plan`` and start its render thread; the names made unique (``face5``, ``face5-2``)."""
    from being_core.live import open_run
    from being_core.plugins import load_registry

    from .host import AvatarHost

    registry = load_registry()
    hosts: dict = {}
    try:
        for root in plan.runs:
            run = open_run(Path(root), registry, plan.device, progress)
            name, n = run.name, 2
            while name in hosts:
                name, n = f"{run.name}-{n}", n + 1
            run.name = name
            on_gpu = run.avatar.device.startswith("cuda")
            threads = plan.render_threads or (1 if on_gpu else cores())
            if not on_gpu and threads > 1:
                import torch

                # each render thread renders its own frames on one core (docs/serving.md)
                torch.set_num_threads(max(1, cores() // threads))
            hosts[name] = AvatarHost(run, plan.max_batch, gpu_jpeg=plan.gpu_jpeg, threads=threads)
    except BaseException:
        for host in hosts.values():
            host.close()
        raise
    return hosts


def _worker(index: int, workers: int, plan: Plan, sock: socket.socket, seats: Any, board: Board, events: Any,
            parent: int) -> None:
    """One worker process: load the avatars, say so on ``events``, serve on ``sock`` until SIGINT/SIGTERM."""
    import sys

    import uvicorn

    from .app import Seats, Server, make_app

    sys.setswitchinterval(plan.switch_ms / 1000)
    try:
        hosts = load_hosts(plan)
    except BaseException as exc:  # noqa: BLE001 (the command reports it, with the exit code it would have had)
        events.put(("failed", index, _as_being_error(exc)))
        return
    try:
        server = Server(hosts, plan.settings, plan.token, Seats(plan.settings.max_sessions, seats, index), board, index,
                        workers)
        stop = threading.Event()

        def publish() -> None:  # and stop when the command is gone (killed without a word to its workers)
            while not stop.wait(1.0):
                if os.getppid() != parent:
                    os.kill(os.getpid(), signal.SIGINT)
                    return
                try:
                    board.write(index, server.counts())
                except RuntimeError:  # a set changed while read: next second
                    pass

        threading.Thread(target=publish, name="stats", daemon=True).start()
        config = uvicorn.Config(make_app(server), ws_max_size=plan.ws_max_size, log_level="warning", lifespan="off")
        events.put(("ready", index, None))
        uvicorn.Server(config).run(sockets=[sock])
        stop.set()
    finally:
        for host in hosts.values():
            host.close()


def _as_being_error(exc: BaseException) -> BeingError:
    """What a worker's failure to load becomes in the command (an exception that crosses processes): its own
    error when it is Being's, the file system's as bad input (as the command itself reports it), anything else
    as a failure with its type and message (and its traceback in the worker's log)."""
    if isinstance(exc, BeingError):
        return exc
    if isinstance(exc, OSError):
        return InputError(os_error_text(exc))
    log.error("worker failed to load the avatars", exc_info=exc)
    return BeingError(f"a worker process could not load the avatars: {type(exc).__name__}: {exc}")


def serve_workers(plan: Plan, workers: int, sock: socket.socket, console: Any) -> None:
    """Run ``workers`` worker processes on the bound ``sock`` until Ctrl+C; the first one that cannot load the
    avatars stops them all with its error."""
    context = multiprocessing.get_context("spawn")
    seats = context.Array("i", workers)  # sessions open per worker
    board = Board(context, workers)
    events = context.Queue()

    def start(i: int):
        p = context.Process(target=_worker, args=(i, workers, plan, sock, seats, board, events, os.getpid()),
                            name=f"being-serve-{i}", daemon=False)
        p.start()
        return p

    def terminate(signum, frame) -> None:  # SIGTERM (a service manager's stop) ends the workers as Ctrl+C does
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, terminate)
    procs = [start(i) for i in range(workers)]
    try:
        ready = 0
        while ready < workers:
            kind, _, error = _next_event(events, procs)
            if kind == "failed":
                raise error
            ready += 1
        console.print(f"being serve: {workers} worker processes ready")
        while True:
            time.sleep(1.0)
            with contextlib.suppress(queue.Empty):
                kind, _, error = events.get_nowait()
                if kind == "failed":  # a worker started again that cannot load what it loaded before
                    raise error
            for i, p in enumerate(procs):
                if p.exitcode is not None:
                    log.warning("worker %d exited (%s); its sessions ended; starting it again", i, p.exitcode)
                    with seats.get_lock():
                        seats[i] = 0
                    procs[i] = start(i)
    finally:
        _stop(procs)
        signal.signal(signal.SIGTERM, previous)


def _stop(procs: list) -> None:
    """SIGINT (uvicorn's clean shutdown) to every worker still running, then SIGKILL to those that hang."""
    deadline = time.monotonic() + 2.0  # a Ctrl+C in the terminal reached them already
    for p in procs:
        p.join(timeout=max(0.0, deadline - time.monotonic()))
    for p in procs:
        if p.is_alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGINT)
    for p in procs:
        p.join(timeout=15)
        if p.is_alive():
            p.kill()
            p.join()


def _next_event(events: Any, procs: list) -> tuple:
    """The next worker event; an error if a worker died before saying anything."""
    while True:
        try:
            return events.get(timeout=1.0)
        except queue.Empty:
            dead = [p for p in procs if p.exitcode is not None]
            if dead and events.empty():
                raise BeingError(f"a worker process ({dead[0].name}) exited with {dead[0].exitcode} while loading "
                                 "the avatars") from None
