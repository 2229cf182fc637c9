"""A small WebRTC client of ``being serve`` (aiortc), what a browser does, in a program:

    being-serve-client http://127.0.0.1:8000 speech.wav -o answer.mp4 --webrtc [--avatar NAME] [--token T]

posts an offer to ``/api/offer`` (one audio track to send, video to receive), sends a 16-bit PCM wav on the audio
track in real time (then silence, so that the end of the speech is said), and receives the avatar's video and
audio tracks: decoded frames with their timestamps (video at 90 kHz, frame ``k`` at ``k * 90000 / fps`` past the
track's first timestamp) and the audio they lip-sync (Opus, 48 kHz).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from .client import mux, read_wav

PACKET = 0.02  # seconds of audio per packet sent


@dataclass
class VideoFrame:
    pts: int  # RTP timestamp, 90 kHz
    image: np.ndarray  # uint8 [H, W, 3], RGB
    received: float  # time.monotonic() at arrival


@dataclass
class Answer:
    """What came back on the two tracks."""

    frames: list[VideoFrame]
    audio: np.ndarray  # int16, mono
    audio_rate: int


def _wav_track(pcm: np.ndarray, rate: int):
    """An audio track that plays ``pcm`` (int16 ``[T]``, mono) at real-time pace, then silence until it is
    stopped."""
    from aiortc import MediaStreamTrack
    from av import AudioFrame

    class WavTrack(MediaStreamTrack):
        kind = "audio"

        def __init__(self) -> None:
            super().__init__()
            self.step = int(rate * PACKET)
            self.sent = 0
            self.start: float | None = None

        async def recv(self) -> AudioFrame:
            if self.start is None:
                self.start = time.monotonic()
            await asyncio.sleep(max(0.0, self.start + self.sent / rate - time.monotonic()))
            piece = pcm[self.sent:self.sent + self.step]
            if len(piece) < self.step:
                piece = np.concatenate([piece, np.zeros(self.step - len(piece), np.int16)])
            frame = AudioFrame(format="s16", layout="mono", samples=self.step)
            frame.planes[0].update(np.ascontiguousarray(piece, "<i2").tobytes())
            frame.sample_rate, frame.pts, frame.time_base = rate, self.sent, Fraction(1, rate)
            self.sent += self.step
            return frame

    return WavTrack()


def _post(url: str, body: dict, token: str | None) -> dict:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, json.dumps(body).encode(), headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")
        with contextlib.suppress(ValueError, KeyError, TypeError):
            detail = json.loads(detail)["detail"]
        raise ConnectionError(f"the server refused the offer ({exc.code}): {detail}") from None


async def rtc_speak(base: str, wav: Path, avatar: str | None = None, token: str | None = None,
                    tail: float = 1.0, timeout: float = 30.0) -> Answer:
    """Say ``wav`` to the avatar at ``base`` (``http://HOST:PORT``) over WebRTC and collect its answer until its
    timestamps reach ``tail`` seconds past the end of the speech (or ``timeout`` seconds after they should
    have). ConnectionError when the server refuses or no video comes within ``timeout`` seconds."""
    from aiortc import RTCPeerConnection, RTCSessionDescription
    from aiortc.mediastreams import MediaStreamError

    pcm, rate, _ = read_wav(wav)
    pcm = pcm.mean(1).round().astype(np.int16)  # mono, whatever the file has (the server hears mono)
    seconds = len(pcm) / rate + tail
    pc = RTCPeerConnection()
    frames: list[VideoFrame] = []
    audio: list[np.ndarray] = []
    audio_rate = [48000]
    tasks: list[asyncio.Task] = []
    first = asyncio.Event()

    async def take_video(track) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                frames.append(VideoFrame(int(frame.pts), frame.to_ndarray(format="rgb24"), time.monotonic()))
                first.set()

    async def take_audio(track) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                samples = frame.to_ndarray().reshape(-1, len(frame.layout.channels))
                audio.append(samples.mean(1).astype(np.int16))
                audio_rate[0] = frame.sample_rate

    @pc.on("track")
    def on_track(track) -> None:
        tasks.append(asyncio.ensure_future(take_video(track) if track.kind == "video" else take_audio(track)))

    sender = _wav_track(pcm, rate)
    try:
        pc.addTrack(sender)
        pc.addTransceiver("video", direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())
        url = base.rstrip("/") + "/api/offer"
        body = {"sdp": pc.localDescription.sdp, "type": "offer", "avatar": avatar}
        answer = await asyncio.get_running_loop().run_in_executor(None, _post, url, body, token)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type=answer["type"]))
        try:
            await asyncio.wait_for(first.wait(), timeout)
        except TimeoutError:
            raise ConnectionError(f"no video came from {base} within {timeout:g} s") from None
        deadline = time.monotonic() + seconds + timeout
        # until the video's timestamps cover the speech and the tail (however late the frames come), or the deadline
        while (frames[-1].pts - frames[0].pts) / 90000 < seconds - 0.1 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    finally:
        sender.stop()
        for task in tasks:
            task.cancel()
        await pc.close()
    return Answer(frames, np.concatenate(audio) if audio else np.zeros(0, np.int16), audio_rate[0])


def write_answer(answer: Answer, fps: float, output: Path) -> None:
    """The received frames at their timestamps (a missing frame shows the one before it) and audio into an .mp4."""
    def images():
        if not answer.frames:
            return
        step, origin = 90000 / fps, answer.frames[0].pts
        slots = [round((f.pts - origin) / step) for f in answer.frames]
        k = 0
        for slot in range(slots[-1] + 1):
            while k + 1 < len(slots) and slots[k + 1] <= slot:
                k += 1
            yield answer.frames[k].image

    mux(output, fps, images(), answer.audio, answer.audio_rate)


def http_base(url: str) -> str:
    """``http://HOST:PORT`` of any address of the server (``ws://HOST:PORT/ws`` included)."""
    parts = urllib.parse.urlsplit(url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    return f"{scheme}://{parts.netloc}"
