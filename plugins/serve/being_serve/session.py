"""A live session: a client's audio in, the avatar's frames (with the audio they lip-sync) out, on its clock.

The session's :class:`~being_serve.timeline.Timeline` is moved on every frame period by a ticker task (deadlines
on the monotonic clock from the session's start, so ticks never drift) and whenever audio arrives. The frames it
cuts go to the avatar's :class:`~being_serve.host.AvatarHost` (which hands them back as JPEG bytes when the session
asks for JPEG and the GPU can encode them); a session more than ``max_behind`` seconds of
frames behind (a GPU that cannot keep up) sends the next ones unrendered (the client keeps the last image; the
audio goes on), counted as dropped. Rendered frames come back on the event loop, in order, to ``on_frame``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from being_core.audio import SAMPLE_RATE

from .host import AvatarHost, Request
from .timeline import FrameJob, Timeline

log = logging.getLogger("being.serve")


@dataclass
class Settings:
    """How every session behaves (``being serve`` options)."""

    slack: float = 0.1  # seconds to wait for late speech before placing silence
    ahead: float = 0.3  # seconds of speech placed before its time at most (what an interruption cannot stop)
    max_queue: float = 120.0  # seconds of speech a session queues at most
    max_behind: float = 1.0  # seconds of frames in flight before the next ones are dropped
    idle_timeout: float = 300.0  # a session that sends nothing this long after its speech was said is closed
    out_frames: int = 50  # encoded frames waiting for a slow client at most (older ones are dropped)
    send_timeout: float = 10.0  # a client that takes longer than this to take one message is disconnected
    max_message: int = 256 * 1024  # bytes per WebSocket message at most
    max_sessions: int = 32  # concurrent sessions at most (all avatars together)


@dataclass
class SessionStats:
    frames: int = 0
    dropped: int = 0
    latencies: deque = field(default_factory=lambda: deque(maxlen=10_000))  # seconds, chunk arrival to frame


class Session:
    """One client's session on one avatar; created and driven on the event loop."""

    def __init__(self, host: AvatarHost, settings: Settings, seed: int,
                 on_frame: Callable[[FrameJob, np.ndarray | bytes | None], None], jpeg: int | None = None):
        self.host, self.settings, self.on_frame, self.jpeg = host, settings, on_frame, jpeg
        self.loop = asyncio.get_running_loop()
        run = host.run
        self.fps = run.avatar.fps
        self.timeline = Timeline(run.stream(), self.fps, settings.slack, settings.ahead, settings.max_queue)
        self.state = run.avatar.session(seed)
        self.stats = SessionStats()
        self.in_flight = 0
        self.speech_in_flight = 0  # frames of the client's speech submitted and not yet delivered
        self.started = time.monotonic()
        self.last_input = self.started
        self.ended = asyncio.Event()
        self.reason: str | None = None
        self.code = 1000  # the WebSocket close code of the reason (1000: a normal end)
        self._ticker = self.loop.create_task(self._tick())

    @property
    def lookahead_ms(self) -> float:
        return 1000 * self.timeline.lookahead / SAMPLE_RATE

    def clock(self) -> int:
        return int((time.monotonic() - self.started) * SAMPLE_RATE)

    def touch(self) -> None:
        """The client is there (any message), or its speech is still being said: the idle timeout starts again."""
        self.last_input = time.monotonic()

    def feed(self, samples: np.ndarray) -> None:
        """Queue speech (float32, 16 kHz); raises :class:`~being_serve.timeline.QueueFull`."""
        self.touch()
        self.timeline.add(samples, time.monotonic())
        self.pump()

    def interrupt(self) -> int:
        self.touch()
        return self.timeline.interrupt()

    def pump(self) -> None:
        if self.ended.is_set():
            return
        jobs = self.timeline.advance(self.clock())
        if not jobs:
            return
        limit = max(1, int(self.settings.max_behind * self.fps))
        requests = []
        for job in jobs:
            render = self.in_flight < limit
            if not render:
                self.stats.dropped += 1
            self.in_flight += 1
            self.speech_in_flight += job.speech
            requests.append(Request(job, self.state.step(job.quiet), render, self._done, self.jpeg))
        self.host.submit(requests)

    def _done(self, job: FrameJob, frame: np.ndarray | bytes | None, error: BaseException | None) -> None:
        """Called on the render thread."""
        self.loop.call_soon_threadsafe(self._deliver, job, frame, error)

    def _deliver(self, job: FrameJob, frame: np.ndarray | bytes | None, error: BaseException | None) -> None:
        self.in_flight -= 1
        self.speech_in_flight -= job.speech
        if self.ended.is_set():
            return
        if error is not None:
            self.close(f"the avatar failed to render: {type(error).__name__}: {error}", 1011)
            return
        now = time.monotonic()
        for arrival in self.timeline.arrivals(job):
            self.stats.latencies.append(now - arrival)
        self.stats.frames += 1
        self.on_frame(job, frame)

    async def _tick(self) -> None:
        period, k = 1.0 / self.fps, 0
        try:
            while not self.ended.is_set():
                k += 1
                await asyncio.sleep(max(0.0, self.started + k * period - time.monotonic()))
                self.pump()
                if self.timeline.speaking or self.speech_in_flight:
                    self.touch()  # a session saying what the client sent is not idle, however slow the server
                elif time.monotonic() - self.last_input > self.settings.idle_timeout:
                    self.close(f"closed: nothing came from the client for {self.settings.idle_timeout:g} s")
        except Exception as exc:  # the session ends with its error; the server goes on
            log.exception("session ticker failed")
            self.close(f"{type(exc).__name__}: {exc}", 1011)

    @property
    def failed(self) -> bool:
        return self.code != 1000

    def close(self, reason: str = "closed", code: int = 1000) -> None:
        """End the session for ``reason``; ``code`` the WebSocket close code that says why (1000: normal)."""
        if self.ended.is_set():
            return
        self.reason, self.code = reason, code
        self.ended.set()
        if asyncio.current_task() is not self._ticker:
            self._ticker.cancel()
