"""The WebSocket protocol (version 1), shared by the server and :mod:`being_serve.client`.

1. Connect to ``ws://HOST:PORT/ws`` (``?token=T`` or an ``Authorization: Bearer T`` header when the server has
   a token).
2. Send a text message :class:`Start`: ``{"type": "start", "avatar": "NAME", "sample_rate": 48000, "format":
   "s16le", "channels": 1}``. The server answers :class:`Ready` (a text message), or an error.
3. Send audio as binary messages of any length (whole samples of the declared format, interleaved channels,
   at most the server's ``max_message`` bytes each); the server mixes the channels down and resamples to 16 kHz.
   Text messages ``{"type": "interrupt"}`` drop the speech not yet played; ``{"type": "ping"}`` keeps an idle
   session open.
4. The server sends one binary message per video frame, from the start and for as long as the session lasts (the
   avatar idles when there is no speech): a :data:`HEADER` (magic ``BEF1``, the frame index ``k``, flags, the
   JPEG's length, the number of audio samples), the JPEG, then the frame's audio, 16 kHz mono s16le. Frame ``k``
   is presented at ``k / fps`` seconds on the audio clock; its audio is samples ``round(k * 16000 / fps)`` to
   ``round((k + 1) * 16000 / fps)`` of what the avatar says (the client's speech, or silence between it). A
   frame with :data:`FLAG_REPEAT` has no image (the server fell behind): show the previous one.
5. Errors are text messages ``{"type": "error", "message": "...", "fatal": bool}``; a fatal one is followed by
   the server closing the connection (code 1008: not authorised, 1013: server full, 1003/1007: bad message,
   1011: the avatar failed, 1000: idle timeout). A message over the size limit is closed with 1009.
"""

from __future__ import annotations

import struct
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

PROTOCOL = 1
MAGIC = b"BEF1"
#: magic, frame index, flags, JPEG bytes, audio samples
HEADER = struct.Struct("<4sIIII")
FLAG_SPEECH = 1  # the frame's audio holds the client's speech
FLAG_REPEAT = 2  # no image: the previous frame's stays
OUT_RATE = 16000
JPEG_QUALITY = 85  # of the frames, unless the start message asks for another
FORMATS: dict[str, np.dtype] = {"s16le": np.dtype("<i2"), "f32le": np.dtype("<f4")}


class Start(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["start"]
    avatar: str | None = Field(None, description="Avatar name (GET /api/avatars); optional with one avatar.")
    sample_rate: int = Field(ge=8000, le=192000, description="Rate of the audio the client sends, Hz.")
    format: Literal["s16le", "f32le"] = "s16le"
    channels: int = Field(1, ge=1, le=8)
    quality: int = Field(JPEG_QUALITY, ge=10, le=100, description="JPEG quality of the frames.")


class Ready(BaseModel):
    type: Literal["ready"] = "ready"
    protocol: int = PROTOCOL
    avatar: str
    fps: float
    width: int
    height: int
    sample_rate: int = OUT_RATE
    audio_format: str = "s16le"
    lookahead_ms: float


def pack_frame(index: int, flags: int, jpeg: bytes, audio: np.ndarray) -> bytes:
    pcm = np.asarray(audio, "<i2").tobytes()
    return HEADER.pack(MAGIC, index, flags, len(jpeg), len(pcm) // 2) + jpeg + pcm


def unpack_frame(data: bytes) -> tuple[int, int, bytes, np.ndarray]:
    """``(index, flags, jpeg, audio int16)`` of a frame message; ValueError when it is not one."""
    if len(data) < HEADER.size:
        raise ValueError(f"a frame message is at least {HEADER.size} bytes, got {len(data)}")
    magic, index, flags, n_jpeg, n_audio = HEADER.unpack_from(data)
    if magic != MAGIC or len(data) != HEADER.size + n_jpeg + 2 * n_audio:
        raise ValueError("not a frame message of protocol 1")
    jpeg = data[HEADER.size:HEADER.size + n_jpeg]
    audio = np.frombuffer(data, "<i2", n_audio, HEADER.size + n_jpeg)
    return index, flags, jpeg, audio


def decode_pcm(data: bytes, start: Start) -> np.ndarray:
    """Mono float32 samples of a binary audio message; ValueError saying what is wrong with it."""
    dtype = FORMATS[start.format]
    frame = dtype.itemsize * start.channels
    if len(data) % frame:
        raise ValueError(f"an audio message of {len(data)} bytes is not a whole number of {start.format} samples "
                         f"of {start.channels} channel(s) ({frame} bytes each)")
    samples = np.frombuffer(data, dtype).reshape(-1, start.channels)
    if start.format == "s16le":
        mono = samples.astype(np.float32).mean(1) / 32768.0
    else:
        if not np.isfinite(samples).all():
            raise ValueError("the audio holds NaN or infinite samples")
        mono = samples.mean(1).astype(np.float32)
        if len(mono) and np.abs(mono).max() > 64:
            raise ValueError(f"f32le samples reach {np.abs(mono).max():.3g}; float audio is in -1..1 (was it "
                             "s16le?)")
        mono = np.clip(mono, -1, 1)
    return mono


class Resampler:
    """The client's rate to 16 kHz as chunks arrive (soxr's streaming resampler; nothing at 16 kHz)."""

    def __init__(self, rate: int):
        self.rate = rate
        self._stream = None
        if rate != OUT_RATE:
            import soxr

            self._stream = soxr.ResampleStream(rate, OUT_RATE, 1, dtype="float32")

    def __call__(self, samples: np.ndarray) -> np.ndarray:
        if self._stream is None:
            return samples
        return self._stream.resample_chunk(samples)
