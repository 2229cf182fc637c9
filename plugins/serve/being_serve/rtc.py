"""WebRTC sessions (aiortc): the client's audio track in, the avatar's video and audio tracks out, in sync.

The browser (or any WebRTC client) posts an SDP offer with one audio track to ``/api/offer``; the answer adds a
video and an audio track. Incoming audio is resampled to 16 kHz mono and fed to a
:class:`~being_serve.session.Session`; each frame it makes goes out on both tracks with timestamps on the same
audio clock (video at 90 kHz, audio at 16 kHz, frame ``k`` at ``k / fps`` seconds), paced to the wall clock.
"""

from __future__ import annotations

import asyncio
import logging
import time
from fractions import Fraction
from typing import Any

import numpy as np

from being_core.audio import frame_edges

from .session import Session
from .timeline import FrameJob

log = logging.getLogger("being.serve")
AUDIO_PIECE = 320  # 20 ms at 16 kHz, one audio packet
PLAYOUT_DELAY = 0.05  # seconds between the first frame's arrival and its presentation


class Playout:
    """When a timestamp falls due on the wall clock, the same for both tracks of a session: the first one
    asked about is due :data:`PLAYOUT_DELAY` from then, the others as far after it as their timestamps say."""

    def __init__(self) -> None:
        self.start: float | None = None

    async def wait(self, seconds: float) -> None:
        if self.start is None:
            self.start = time.monotonic() + PLAYOUT_DELAY - seconds
        await asyncio.sleep(max(0.0, self.start + seconds - time.monotonic()))


def _tracks():
    from aiortc import MediaStreamTrack
    from av import AudioFrame, VideoFrame

    class VideoOut(MediaStreamTrack):
        kind = "video"

        def __init__(self, queue: asyncio.Queue, fps: float, playout: Playout, size: tuple[int, int]):
            super().__init__()
            self.queue, self.fps, self.playout = queue, fps, playout
            self.last = np.zeros((size[1], size[0], 3), np.uint8)

        async def recv(self):
            job, frame = await self.queue.get()
            if frame is not None:
                self.last = frame
            await self.playout.wait(job.index / self.fps)
            out = VideoFrame.from_ndarray(self.last, format="rgb24")
            out.pts, out.time_base = round(job.index * 90000 / self.fps), Fraction(1, 90000)
            return out

    class AudioOut(MediaStreamTrack):
        kind = "audio"

        def __init__(self, queue: asyncio.Queue, playout: Playout):
            super().__init__()
            self.queue, self.playout = queue, playout
            self.pending = np.zeros(0, np.int16)
            self.at = 0  # the timeline sample of pending[0]

        async def recv(self):
            while len(self.pending) < AUDIO_PIECE:
                start, samples = await self.queue.get()
                if start != self.at + len(self.pending):  # frames were dropped on the way: follow the timeline
                    self.pending, self.at = np.zeros(0, np.int16), start
                self.pending = np.concatenate([self.pending, samples])
            piece, self.pending = self.pending[:AUDIO_PIECE], self.pending[AUDIO_PIECE:]
            await self.playout.wait(self.at / 16000)
            out = AudioFrame.from_ndarray(piece[None, :], format="s16", layout="mono")
            out.sample_rate, out.pts, out.time_base = 16000, self.at, Fraction(1, 16000)
            self.at += AUDIO_PIECE
            return out

    return VideoOut, AudioOut


def _put(queue: asyncio.Queue, item: Any) -> None:
    if queue.full():
        queue.get_nowait()
    queue.put_nowait(item)


async def _consume(track, session: Session) -> None:
    """The client's audio into the session, at 16 kHz mono, until the track ends."""
    from aiortc.mediastreams import MediaStreamError
    from av import AudioResampler

    resampler = AudioResampler(format="s16", layout="mono", rate=16000)
    try:
        while not session.ended.is_set():
            frame = await track.recv()
            for piece in resampler.resample(frame):
                session.feed(piece.to_ndarray().reshape(-1).astype(np.float32) / 32768.0)
    except MediaStreamError:
        session.close("the client's audio ended")
    except Exception as exc:  # noqa: BLE001 (this session ends with its error; the server goes on)
        log.warning("WebRTC session: %s", exc)
        session.close(f"{type(exc).__name__}: {exc}", 1011)


async def answer(server, body: Any) -> dict[str, str]:
    """Answer a browser's offer ``{sdp, type, avatar}``: ValueError for a bad offer or avatar, OverflowError when
    the server is full."""
    from aiortc import RTCPeerConnection, RTCSessionDescription

    if not isinstance(body, dict) or not isinstance(body.get("sdp"), str) or body.get("type") != "offer":
        raise ValueError("the offer must be JSON {\"sdp\": \"...\", \"type\": \"offer\", \"avatar\": \"NAME\"}")
    host = server.host(body.get("avatar"))
    VideoOut, AudioOut = _tracks()
    fps = host.run.avatar.fps
    depth = max(8, int(2 * server.settings.max_behind * fps))
    video: asyncio.Queue = asyncio.Queue(depth)
    audio: asyncio.Queue = asyncio.Queue(depth)

    def on_frame(job: FrameJob, frame: np.ndarray | bytes | None) -> None:  # raw frames: no jpeg asked
        _put(video, (job, frame))
        _put(audio, (int(frame_edges(job.index, fps)), job.audio))

    session = server.open_session(host, on_frame)
    pc = RTCPeerConnection()
    session.last_input = float("inf")  # the idle clock starts once the connection is up (ICE and DTLS take a while)
    playout = Playout()
    tasks: list[asyncio.Task] = []

    @pc.on("track")
    def on_track(track) -> None:
        if track.kind == "audio":
            tasks.append(asyncio.ensure_future(_consume(track, session)))

    closing: list[bool] = []

    async def close() -> None:  # once: the connection's end and the session's end both come here
        if closing:
            return
        closing.append(True)
        server.end_session(session)
        for task in tasks:
            if task is not asyncio.current_task():
                task.cancel()
        await pc.close()

    @pc.on("connectionstatechange")
    async def on_state() -> None:
        if pc.connectionState == "connected":
            session.touch()
        if pc.connectionState in ("failed", "closed"):
            await close()

    async def watch() -> None:  # the session ended on the server's side (idle, a failed render)
        await session.ended.wait()
        await close()

    tasks.append(asyncio.ensure_future(watch()))
    try:
        await pc.setRemoteDescription(RTCSessionDescription(sdp=body["sdp"], type="offer"))
        kinds = {t.kind for t in pc.getTransceivers()}
        if kinds != {"audio", "video"}:
            raise ValueError(f"it must offer to send audio and to receive video; it has {sorted(kinds) or 'nothing'}")
        # after the offer: the tracks take the transceivers it offered (an answer cannot add any)
        pc.addTrack(VideoOut(video, fps, playout, (host.run.avatar.width, host.run.avatar.height)))
        pc.addTrack(AudioOut(audio, playout))
        await pc.setLocalDescription(await pc.createAnswer())
    except Exception as exc:
        await close()
        raise ValueError(f"the offer cannot be answered: {exc}") from None
    return {"sdp": pc.localDescription.sdp, "type": pc.localDescription.type}
