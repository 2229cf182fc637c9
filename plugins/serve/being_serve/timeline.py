"""One session's audio clock: the audio the avatar says, sample by sample, and the frames cut from it.

The timeline is the session's output audio at 16 kHz. It advances with the wall clock: the client's speech is
placed on it as it arrives (at most ``ahead`` seconds before the clock, so an interruption takes effect at
once), and where no speech has come ``slack`` seconds after its time, silence is placed instead, so the avatar
idles and the video never stops. Video frame ``k`` spans samples ``round(k * rate / fps)`` to ``round((k + 1) *
rate / fps)``: its presentation time is exactly ``k / fps`` on the audio clock, for any length of session.

A frame is cut once the encoder has its window (the encoder's look-ahead) and the pause detector has seen
:data:`QUIET_AHEAD` frames past it: a pause is at least :data:`PAUSE_FRAMES` quiet frames (speech
:data:`SILENCE_DB` below its recent loud level, or no speech at all), and the mouth closes into it over
:data:`FADE` frames either side, so speech starts and stops without a jump.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from being_core.audio import SAMPLE_RATE, frame_edges

#: speech quieter than the recent loud level (95th percentile of speech frames' RMS) by this many dB is quiet
SILENCE_DB = 25.0
#: frames below this level (dBFS) are quiet whatever the speech around them
FLOOR_DB = -60.0
#: a pause: this many quiet frames in a row (centred on the frame)
PAUSE_FRAMES = 5
#: the mouth closes into a pause and opens out of it over this many frames either side
FADE = 1
#: frames past a frame that its pause weight needs
QUIET_AHEAD = PAUSE_FRAMES // 2 + FADE
#: frames of speech whose levels set the loud level (about 20 s at 25 fps)
LOUD_HISTORY = 500


class QueueFull(ValueError):
    """More speech queued than the session holds."""


@dataclass
class FrameJob:
    """One video frame to render: its window of audio features, how quiet it is (0..1), and its audio."""

    index: int
    window: np.ndarray  # [W, D]
    quiet: float
    audio: np.ndarray  # int16 [n] at 16 kHz: what the frame lip-syncs
    speech: bool  # whether any of that audio is the client's


class Timeline:
    """The audio clock of one session (not thread-safe: one event loop drives it)."""

    def __init__(self, stream, fps: float, slack: float = 0.1, ahead: float = 0.3, max_queue: float = 120.0,
                 rate: int = SAMPLE_RATE):
        self.stream, self.fps, self.rate = stream, fps, rate
        self.slack, self.ahead = int(slack * rate), int(ahead * rate)
        self.max_queue = int(max_queue * rate)
        self.queue: deque[list] = deque()  # [samples, arrival time or None once its first sample is placed]
        self.queued = 0
        self.pos = 0  # samples on the timeline
        self.windows: deque[np.ndarray] = deque()  # encoder windows of frames not cut yet, from frame self.cut
        self.cut = 0  # the next frame to cut
        self.samples = np.zeros(0, np.float32)  # timeline samples from frame_edges(self.cut) on
        self.is_speech = np.zeros(0, bool)
        self.marks: deque[tuple[int, float]] = deque()  # (timeline sample, arrival): where each chunk began
        self.measured = 0  # frames whose level is known
        self.quiet_raw: dict[int, bool] = {}
        self.loud: deque[float] = deque(maxlen=LOUD_HISTORY)
        self.speech_samples = 0
        self.silence_samples = 0
        self.pending: list[tuple[np.ndarray, bool]] = []  # placed, not yet given to the encoder (no frame due)
        #: samples past a frame's end needed before it is cut (the encoder's and the pause detector's)
        self.lookahead = max(int(stream.lookahead), int(frame_edges(QUIET_AHEAD, fps, rate)))

    def add(self, samples: np.ndarray, arrival: float = 0.0) -> None:
        """Queue speech (float32 at 16 kHz) that arrived at ``arrival`` (a monotonic time, for latency figures).
        :class:`QueueFull` when more than ``max_queue`` seconds would wait."""
        if self.queued + len(samples) > self.max_queue:
            raise QueueFull(f"more than {self.max_queue / self.rate:g} s of speech is queued; send it no faster "
                            "than it plays, or interrupt first")
        if len(samples):
            self.queue.append([np.asarray(samples, np.float32), arrival])
            self.queued += len(samples)

    def interrupt(self) -> int:
        """Drop the queued speech; returns how many samples were dropped (what is on the timeline still plays:
        at most ``ahead`` seconds)."""
        dropped = self.queued
        self.queue.clear()
        self.marks.clear()
        self.queued = 0
        return dropped

    @property
    def speaking(self) -> bool:
        """Whether speech of the client is still to be said: queued, or on the timeline in frames not cut yet."""
        return bool(self.queued) or any(sp for _, sp in self.pending) or bool(self.is_speech.any())

    def advance(self, clock: int) -> list[FrameJob]:
        """Move the timeline to the wall ``clock`` (samples since the session began) and cut the frames now
        complete."""
        while self.queue and self.pos < clock + self.ahead:
            piece, arrival = self.queue[0]
            take = min(len(piece), clock + self.ahead - self.pos)
            if arrival is not None:
                self.marks.append((self.pos, arrival))
            self._place(piece[:take], True)
            if take == len(piece):
                self.queue.popleft()
            else:
                self.queue[0] = [piece[take:], None]
            self.queued -= take
        if not self.queue and self.pos < clock - self.slack:
            self._place(np.zeros(clock - self.slack - self.pos, np.float32), False)
        if self.pos < int(frame_edges(self.cut + 1, self.fps, self.rate)) + self.lookahead:
            return []  # no frame can be cut yet: the encoder gets the samples when one can (fewer, larger pushes)
        self._flush()
        return self._cut()

    def arrivals(self, job: FrameJob) -> list[float]:
        """The arrival times of the chunks whose first sample is in ``job``'s frame (and of earlier ones not
        yet reported): the chunks that frame is the first to lip-sync."""
        end = int(frame_edges(job.index + 1, self.fps, self.rate))
        out = []
        while self.marks and self.marks[0][0] < end:
            out.append(self.marks.popleft()[1])
        return out

    def _place(self, samples: np.ndarray, speech: bool) -> None:
        self.pos += len(samples)
        if speech:
            self.speech_samples += len(samples)
        else:
            self.silence_samples += len(samples)
        self.pending.append((samples, speech))

    def _flush(self) -> None:
        if not self.pending:
            return
        samples = np.concatenate([p for p, _ in self.pending])
        speech = np.concatenate([np.full(len(p), sp) for p, sp in self.pending])
        self.pending = []
        self.samples = np.concatenate([self.samples, samples])
        self.is_speech = np.concatenate([self.is_speech, speech])
        for w in self.stream.push(samples):
            self.windows.append(w)

    def _measure(self) -> None:
        """The level of every frame whose samples are all on the timeline."""
        base = int(frame_edges(self.cut, self.fps, self.rate))
        while int(frame_edges(self.measured + 1, self.fps, self.rate)) <= self.pos:
            lo = int(frame_edges(self.measured, self.fps, self.rate)) - base
            hi = int(frame_edges(self.measured + 1, self.fps, self.rate)) - base
            piece = self.samples[lo:hi]
            level = 10 * np.log10(float(np.mean(piece.astype(np.float64) ** 2)) + 1e-12) if len(piece) else -120.0
            speech = bool(self.is_speech[lo:hi].any())
            if speech and level > FLOOR_DB:
                self.loud.append(level)
            loud = float(np.percentile(self.loud, 95)) if self.loud else FLOOR_DB + SILENCE_DB
            self.quiet_raw[self.measured] = (not speech) or level < max(FLOOR_DB, loud - SILENCE_DB)
            self.measured += 1

    def _pause(self, k: int) -> float:
        half = PAUSE_FRAMES // 2
        return float(all(self.quiet_raw.get(j, True) for j in range(k - half, k + half + 1)))

    def _cut(self) -> list[FrameJob]:
        self._measure()
        jobs = []
        while self.windows and self.measured > self.cut + QUIET_AHEAD:
            k = self.cut
            quiet = float(np.mean([self._pause(j) for j in range(k - FADE, k + FADE + 1)]))
            base = int(frame_edges(k, self.fps, self.rate))
            n = int(frame_edges(k + 1, self.fps, self.rate)) - base
            audio = np.clip(np.round(self.samples[:n] * 32767), -32768, 32767).astype(np.int16)
            jobs.append(FrameJob(k, self.windows.popleft(), quiet, audio, bool(self.is_speech[:n].any())))
            self.samples, self.is_speech = self.samples[n:], self.is_speech[n:]
            self.cut += 1
            for j in [j for j in self.quiet_raw if j < k - PAUSE_FRAMES - FADE]:
                del self.quiet_raw[j]
        return jobs
