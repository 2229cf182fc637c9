"""One trained avatar, loaded once, rendering the frames of all its sessions in shared batches.

Sessions submit frames in order; a render thread takes whatever is waiting (up to ``max_batch`` frames, of any
sessions), renders it in one batch (deformation, rasterisation and the refiner, on the avatar's device), and
hands each frame back through its session's callback, in the order it was submitted. The event loop never waits
for a render. A frame submitted without ``render`` (a session that fell behind) keeps its place in the order and
comes back as None.

On a CPU, batching buys nothing (a frame costs the same alone or in a batch) and PyTorch's threads inside one
frame's operations buy little (most of the rasteriser's steps run on one core), so a CPU avatar gets several
render threads, each rendering its own frames with one PyTorch thread: the waiting frames are shared out among
them, and what they render is still handed back in the order it was submitted.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from being_core.audio import frame_edges
from being_core.live import LiveRun

from .timeline import FrameJob
from .wire import JPEG_QUALITY

log = logging.getLogger("being.serve")


@dataclass
class Request:
    job: FrameJob
    step: Any
    render: bool
    done: Callable[[FrameJob, np.ndarray | bytes | None, BaseException | None], None]
    jpeg: int | None = None  # a JPEG quality: the frame comes back encoded (bytes), on the GPU where it can be
    submitted: float = field(default_factory=time.monotonic)


@dataclass
class HostStats:
    batches: int = 0
    frames: int = 0
    render_seconds: float = 0.0
    batch_sizes: deque = field(default_factory=lambda: deque(maxlen=1000))
    render_ms: deque = field(default_factory=lambda: deque(maxlen=1000))


class AvatarHost:
    """A :class:`LiveRun` with its render threads (``threads``; one is the rule on a GPU)."""

    def __init__(self, run: LiveRun, max_batch: int = 32, gpu_jpeg: bool = True, threads: int = 1):
        if threads < 1:
            raise ValueError(f"render threads: {threads}; give 1 or more")
        self.run, self.max_batch = run, max_batch
        self.name = run.name
        self.stats = HostStats()
        self._queue: deque[Request] = deque()
        self._wake = threading.Condition()
        self._stop = False
        self._taken = 0  # batches taken, in order
        self._order = threading.Lock()  # hands back the frames of finished batches in the order they were taken
        self._next = 0
        self._finished: dict[int, tuple[list[Request], list, BaseException | None, float]] = {}
        self._refine = threading.Lock()  # a refiner (a diffusion pipeline's scheduler) is not called twice at once
        self._gpu_jpeg = gpu_jpeg and self._nvjpeg()
        self._warm_up()
        self._threads = [threading.Thread(target=self._loop, name=f"render-{run.name}-{i}", daemon=True)
                         for i in range(threads)]
        for thread in self._threads:
            thread.start()

    def _nvjpeg(self) -> bool:
        """Whether frames can be JPEG-encoded on the avatar's GPU (torchvision's nvJPEG), off the interpreter."""
        if not self.run.avatar.device.startswith("cuda"):
            return False
        try:
            from torchvision.io import encode_jpeg  # noqa: F401
        except ImportError:
            return False
        return True

    def _warm_up(self) -> None:
        """Render (and JPEG-encode) a few batches before the first session comes: the first call of a model, of
        the GPU's JPEG encoder and of a new batch size is slow (on an H100, the first session's first turn took
        up to half a second without this)."""
        stream = self.run.stream()
        window = stream.push(np.zeros(int(frame_edges(4, self.run.avatar.fps)) + stream.lookahead, np.float32))[:1]
        job = FrameJob(0, window[0], 1.0, np.zeros(0, np.int16), False)
        state = self.run.avatar.session(0)
        sizes = {1, 2, 4, min(8, self.max_batch)} if self.run.avatar.device.startswith("cuda") else {1}
        for size in sorted(sizes):
            self._render([Request(job, state.step(1.0), True, lambda *a: None, jpeg=JPEG_QUALITY) for _ in range(size)])

    @property
    def lookahead(self) -> int:
        return self.run.lookahead

    def pending(self) -> int:
        return len(self._queue)

    def submit(self, requests: list[Request]) -> None:
        with self._wake:
            self._queue.extend(requests)
            self._wake.notify()

    def close(self) -> None:
        with self._wake:
            self._stop = True
            self._wake.notify_all()
        for thread in self._threads:
            thread.join(timeout=10)

    def _take(self) -> tuple[int, list[Request]] | None:
        """The next batch and its number: up to ``max_batch`` waiting frames, shared out among the threads."""
        with self._wake:
            while not self._queue and not self._stop:
                self._wake.wait()
            if self._stop:
                return None
            size = min(self.max_batch, math.ceil(len(self._queue) / len(self._threads)))
            batch = [self._queue.popleft() for _ in range(size)]
            if self._queue:
                self._wake.notify()  # more for another thread
            self._taken += 1
            return self._taken - 1, batch

    def _loop(self) -> None:
        while (taken := self._take()) is not None:
            number, batch = taken
            todo = [r for r in batch if r.render]
            frames: list[np.ndarray | bytes | None] = [None] * len(batch)
            error: BaseException | None = None
            took = 0.0
            if todo:
                started = time.monotonic()
                try:
                    frames_u8 = self._render(todo)
                except Exception as exc:  # a broken render ends the sessions it served, not the server
                    log.exception("render of %s failed", self.name)
                    error = exc
                else:
                    it = iter(frames_u8)
                    frames = [next(it) if r.render else None for r in batch]
                took = time.monotonic() - started
            with self._order:
                self._finished[number] = (batch, frames, error, took)
                while self._next in self._finished:
                    self._hand_back(*self._finished.pop(self._next))
                    self._next += 1

    def _hand_back(self, batch: list[Request], frames: list, error: BaseException | None, took: float) -> None:
        rendered = sum(r.render for r in batch)
        if rendered:
            self.stats.batches += 1
            self.stats.frames += rendered
            self.stats.render_seconds += took
            self.stats.batch_sizes.append(rendered)
            self.stats.render_ms.append(1000 * took)
        for request, frame in zip(batch, frames, strict=True):
            try:
                request.done(request.job, frame, error)
            except Exception:  # a session that went away meanwhile
                log.debug("frame callback failed", exc_info=True)

    def _render(self, todo: list[Request]) -> list[np.ndarray | bytes]:
        """The frames of ``todo``: uint8 ``[H, W, 3]`` arrays, or JPEG bytes for requests that ask for them when
        the GPU encodes (else the caller encodes the array)."""
        avatar = self.run.avatar
        audio = np.stack([r.job.window for r in todo])
        quiet = np.array([r.job.quiet for r in todo], np.float32)
        rgb, alpha = avatar.render([r.step for r in todo], audio, quiet)
        if self.run.refiner is not None:
            with self._refine:
                rgb = self.run.refiner(rgb, alpha)
        u8 = (rgb.clamp(0, 1) * 255).round().byte()
        out: list[np.ndarray | bytes | None] = [None] * len(todo)
        if self._gpu_jpeg:
            from torchvision.io import encode_jpeg

            qualities: dict[int, list[int]] = {}
            for i, r in enumerate(todo):
                if r.jpeg:
                    qualities.setdefault(r.jpeg, []).append(i)
            for quality, index in qualities.items():
                encoded = encode_jpeg([u8[i].permute(2, 0, 1).contiguous() for i in index], quality=quality)
                for i, data in zip(index, encoded, strict=True):
                    out[i] = data.cpu().numpy().tobytes()
        rest = [i for i, o in enumerate(out) if o is None]
        if rest:
            for i, frame in zip(rest, u8[rest].cpu().numpy(), strict=True):
                out[i] = frame
        return out  # type: ignore[return-value]
