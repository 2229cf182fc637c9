"""A small client of ``being serve``'s WebSocket protocol (:mod:`being_serve.wire`).

    being-serve-client ws://127.0.0.1:8000/ws speech.wav -o answer.mp4 [--avatar NAME] [--token T] [--webrtc]

streams a 16-bit PCM wav in real time (as a voice agent would), receives the avatar's frames with the audio they
lip-sync, and writes them into ``answer.mp4`` (the frames at their presentation times, the server's audio muxed
in). :class:`Client` is the same in a program. ``--webrtc`` does it over WebRTC instead
(:mod:`being_serve.rtc_client`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .wire import FLAG_REPEAT, FLAG_SPEECH, Ready, unpack_frame


@dataclass
class Frame:
    index: int
    speech: bool
    jpeg: bytes | None  # None: repeat the previous image
    audio: np.ndarray  # int16, 16 kHz
    received: float  # time.monotonic() at arrival


class ServerError(RuntimeError):
    """An error message from the server."""


class Client:
    """One session: ``async with Client(url, rate) as c: await c.send(pcm); async for f in c.frames(): ...``"""

    def __init__(self, url: str, sample_rate: int, avatar: str | None = None, token: str | None = None,
                 fmt: str = "s16le", channels: int = 1, quality: int = 85):
        self.url, self.token = url, token
        self.start = {"type": "start", "avatar": avatar, "sample_rate": sample_rate, "format": fmt,
                      "channels": channels, "quality": quality}
        self.ready: Ready | None = None
        self.events: list[dict] = []
        self._ws: Any = None

    async def __aenter__(self) -> Client:
        import websockets

        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        self._ws = await websockets.connect(self.url, additional_headers=headers, max_size=2**24)
        await self._ws.send(json.dumps(self.start))
        first = json.loads(await self._ws.recv())
        if first.get("type") != "ready":
            raise ServerError(first.get("message", str(first)))
        self.ready = Ready.model_validate(first)
        return self

    async def __aexit__(self, *exc) -> None:
        await self._ws.close()

    async def send(self, pcm: bytes | np.ndarray) -> None:
        await self._ws.send(pcm.tobytes() if isinstance(pcm, np.ndarray) else pcm)

    async def control(self, kind: str) -> None:
        await self._ws.send(json.dumps({"type": kind}))

    async def next_frame(self) -> Frame:
        """The next frame; text messages on the way are kept in ``events`` (a fatal error raises)."""
        while True:
            message = await self._ws.recv()
            if isinstance(message, bytes):
                index, flags, jpeg, audio = unpack_frame(message)
                return Frame(index, bool(flags & FLAG_SPEECH), None if flags & FLAG_REPEAT else jpeg, audio,
                             time.monotonic())
            event = json.loads(message)
            self.events.append(event)
            if event.get("type") == "error" and event.get("fatal"):
                raise ServerError(event["message"])


def read_wav(path: Path) -> tuple[np.ndarray, int, int]:
    """``(int16 samples [T, C], rate, channels)`` of a 16-bit PCM wav."""
    with wave.open(str(path), "rb") as w:
        if w.getsampwidth() != 2:
            raise ValueError(f"{path}: the client sends 16-bit PCM wav files; this one has {8 * w.getsampwidth()}-bit "
                             "samples")
        rate, channels = w.getframerate(), w.getnchannels()
        data = np.frombuffer(w.readframes(w.getnframes()), "<i2").reshape(-1, channels)
    return data, rate, channels


async def speak(url: str, wav: Path, avatar: str | None = None, token: str | None = None,
                tail: float = 1.0, chunk: float = 0.02) -> tuple[Ready, list[Frame]]:
    """Stream ``wav`` in real time in ``chunk``-second pieces and collect the frames until ``tail`` seconds after
    its end has played."""
    pcm, rate, channels = read_wav(wav)
    step = max(1, int(rate * chunk))
    frames: list[Frame] = []
    async with Client(url, rate, avatar, token, channels=channels) as client:
        assert client.ready is not None
        fps = client.ready.fps
        last = int((len(pcm) / rate + tail) * fps)

        async def send() -> None:
            t0 = time.monotonic()
            for i, lo in enumerate(range(0, len(pcm), step)):
                await client.send(pcm[lo:lo + step])
                await asyncio.sleep(max(0.0, t0 + (i + 1) * chunk - time.monotonic()))

        sender = asyncio.create_task(send())
        try:
            while True:
                frame = await client.next_frame()
                frames.append(frame)
                if frame.index >= last and sender.done():
                    break
        finally:
            sender.cancel()
        return client.ready, frames


def write_video(frames: list[Frame], ready: Ready, output: Path) -> None:
    """The frames and their audio into an .mp4 (a repeated frame shows the image before it)."""
    import io

    from PIL import Image

    def images():
        image = np.zeros((ready.height, ready.width, 3), np.uint8)
        for f in frames:
            if f.jpeg:
                image = np.asarray(Image.open(io.BytesIO(f.jpeg)).convert("RGB"))
            yield image

    audio = np.concatenate([f.audio for f in frames]) if frames else np.zeros(0, np.int16)
    mux(output, ready.fps, images(), audio, ready.sample_rate)


def mux(output: Path, fps: float, images, audio: np.ndarray, rate: int) -> None:
    """RGB ``images`` (uint8 ``[H, W, 3]``, one per frame) and mono int16 ``audio`` at ``rate`` into an .mp4."""
    from being_core.frames import VideoWriter

    wav = output.with_suffix(".wav.tmp")
    with wave.open(str(wav), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(audio.astype("<i2").tobytes())
    try:
        with VideoWriter(output, fps, audio=wav) as writer:
            for image in images:
                writer.write(image[None])
    finally:
        wav.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="being-serve-client", description=__doc__.split("\n\n")[0])
    p.add_argument("url", help="the server's WebSocket address, e.g. ws://127.0.0.1:8000/ws")
    p.add_argument("wav", type=Path, help="16-bit PCM wav to say")
    p.add_argument("-o", "--output", type=Path, required=True, help=".mp4 to write")
    p.add_argument("--avatar", help="avatar name (needed when the server has several)")
    p.add_argument("--token", help="the server's token, if it has one")
    p.add_argument("--webrtc", action="store_true", help="over WebRTC (POST /api/offer) instead of the WebSocket")
    args = p.parse_args(argv)
    if args.webrtc:
        return _main_webrtc(args)
    try:
        ready, frames = asyncio.run(speak(args.url, args.wav, args.avatar, args.token))
    except (OSError, ValueError, ServerError) as exc:
        print(f"being-serve-client: {exc}", file=sys.stderr)
        return 1
    write_video(frames, ready, args.output)
    lat = ready.lookahead_ms
    print(f"{len(frames)} frames ({sum(f.jpeg is None for f in frames)} repeated) from '{ready.avatar}' at "
          f"{ready.fps:g} fps, look-ahead {lat:.0f} ms: {args.output}")
    return 0


def _main_webrtc(args: argparse.Namespace) -> int:
    import urllib.request

    from .rtc_client import http_base, rtc_speak, write_answer

    base = http_base(args.url)
    try:
        query = f"?token={args.token}" if args.token else ""
        with urllib.request.urlopen(f"{base}/api/avatars{query}", timeout=30) as response:
            avatars = {a["name"]: a for a in json.loads(response.read())}
        name = args.avatar or next(iter(avatars))
        if name not in avatars:
            raise ValueError(f"no avatar {name!r} at {base}; it has {', '.join(avatars)}")
        answer = asyncio.run(rtc_speak(base, args.wav, name, args.token))
    except (OSError, ValueError) as exc:
        print(f"being-serve-client: {exc}", file=sys.stderr)
        return 1
    fps = avatars[name]["fps"]
    write_answer(answer, fps, args.output)
    print(f"{len(answer.frames)} frames and {len(answer.audio) / answer.audio_rate:.1f} s of audio from '{name}' "
          f"over WebRTC: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
