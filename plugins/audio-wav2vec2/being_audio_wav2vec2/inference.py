"""Chunked inference of wav2vec2-family models (wav2vec2, HuBERT) with bounded memory.

Both models turn 16 kHz samples into 50 Hz states with a conv stack of receptive field 400 and stride 320.
Long audio is cut into chunks of ``chunk`` samples with ``context`` samples of extra audio on each side;
only the states of the chunk itself are kept, so memory is bounded by the chunk size.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

import numpy as np

STRIDE = 320
RECEPTIVE_FIELD = 400


def n_states(n_samples: int) -> int:
    """Number of 50 Hz states the conv stack makes from ``n_samples``."""
    return max(0, (n_samples - RECEPTIVE_FIELD) // STRIDE + 1)


def normalise(audio: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance over the whole clip (what Wav2Vec2FeatureExtractor does per call), done once
    so that chunking does not change the input."""
    return ((audio - audio.mean()) / np.sqrt(audio.var() + 1e-7)).astype(np.float32)


def chunked(audio: np.ndarray, infer: Callable[[np.ndarray], np.ndarray], chunk_s: float, context_s: float,
            progress=None) -> np.ndarray:
    """``[T50, D]`` states of ``audio`` computed chunk by chunk (one call when it fits in one chunk)."""
    total = n_states(len(audio))
    chunk = max(1, int(chunk_s * 50)) * STRIDE
    context = int(context_s * 50) * STRIDE
    if len(audio) <= chunk + 2 * context:
        states = infer(audio)
        if progress is not None:
            progress.advance()
        return states[:total]
    parts = []
    for start in range(0, len(audio), chunk):
        lo, hi = max(0, start - context), min(len(audio), start + chunk + context + RECEPTIVE_FIELD - STRIDE)
        states = infer(audio[lo:hi])
        first = (start - lo) // STRIDE
        parts.append(states[first:first + min(chunk // STRIDE, total - start // STRIDE)])
        if progress is not None:
            progress.advance()
    return np.concatenate(parts)[:total]


def n_chunks(n_samples: int, chunk_s: float, context_s: float) -> int:
    chunk = max(1, int(chunk_s * 50)) * STRIDE
    context = int(context_s * 50) * STRIDE
    return 1 if n_samples <= chunk + 2 * context else -(-n_samples // chunk)


def load(model_cls, name: str, config_key: str = "stages.audio_encoder.config.model"):
    """Load a model and whether it wants normalised input, from a local folder or the local HF cache only."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the hub, never hang on a network
    from transformers import AutoFeatureExtractor

    try:
        model = model_cls.from_pretrained(name, local_files_only=True)
        extractor = AutoFeatureExtractor.from_pretrained(name, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ValueError(
            f"{config_key}: model '{name}' is not available locally ({type(exc).__name__}). Being never downloads "
            f"at run time: fetch it once (e.g. `huggingface-cli download {name}`) or set {config_key} to a local "
            f"folder holding config.json, the weights and preprocessor_config.json"
        ) from None
    return model, bool(getattr(extractor, "do_normalize", True))


@functools.cache
def load_once(model_cls, name: str, device: str, dtype):
    """:func:`load`, once per model, device and precision in a process: every live session of a server streams
    with the same weights (a model per session would load it from disk at each session's start)."""
    model, wants_norm = load(model_cls, name)
    return model.to(device=device, dtype=dtype).eval(), wants_norm


def pick_device(device: str, fp16: bool):
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: 'cuda' was asked for but torch sees no GPU")
    if fp16 and device != "cuda":
        raise ValueError("fp16: true needs a GPU (device: cuda or auto on a GPU machine)")
    return torch.device(device), (torch.float16 if fp16 else torch.float32)


def runner(model, device, dtype, pick: Callable) -> Callable[[np.ndarray], np.ndarray]:
    """A function ``samples -> [T50, D] float32`` that runs ``model`` and extracts ``pick(outputs)``."""
    import torch

    model = model.to(device=device, dtype=dtype).eval()

    def infer(samples: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            x = torch.from_numpy(samples).to(device=device, dtype=dtype)[None]
            return pick(model(x, output_hidden_states=True))[0].float().cpu().numpy()

    return infer


#: a live stream runs the model every STREAM_HOP states on STREAM_LEFT states of past audio (2 s), the new states
#: and STREAM_RIGHT states of look-ahead (160 ms): bounded work and delay, close to (not equal to) the offline states,
#: which see 2 s on both sides and are normalised over the whole clip
STREAM_LEFT, STREAM_HOP, STREAM_RIGHT = 100, 4, 8


class StateStream:
    """Model states as samples arrive, cut into per-frame windows (a :class:`being_core.live.FeatureStream`)."""

    def __init__(self, infer: Callable[[np.ndarray], np.ndarray], wants_norm: bool, window: int, fps: float):
        from being_core.audio import FrameWindows

        self.infer, self.wants_norm = infer, wants_norm
        self.buffer = np.zeros(0, np.float32)
        self.start = 0  # the sample index of buffer[0]
        self.next_state = 0
        self.windows = FrameWindows(window, fps)
        self.dim = int(infer(np.zeros(16000, np.float32)).shape[1])  # the state width (and a warm model)
        tail = RECEPTIVE_FIELD - STRIDE
        # state j is known once its block (which may start up to HOP - 1 states before it) has its look-ahead
        self.lookahead = self.windows.lookahead(STRIDE, (STREAM_HOP + STREAM_RIGHT) * STRIDE + tail)

    def push(self, samples: np.ndarray) -> np.ndarray:
        self.buffer = np.concatenate([self.buffer, np.asarray(samples, np.float32).reshape(-1)])
        known = self.start + len(self.buffer)
        tail = RECEPTIVE_FIELD - STRIDE
        parts = []
        while (self.next_state + STREAM_HOP + STREAM_RIGHT) * STRIDE + tail <= known:
            a = self.next_state
            first = max(0, a - STREAM_LEFT)
            piece = self.buffer[first * STRIDE - self.start:(a + STREAM_HOP + STREAM_RIGHT) * STRIDE + tail - self.start]
            states = self.infer(normalise(piece) if self.wants_norm else piece)
            parts.append(states[a - first:a - first + STREAM_HOP])
            self.next_state += STREAM_HOP
        keep = max(0, self.next_state - STREAM_LEFT) * STRIDE
        if keep > self.start:
            self.buffer, self.start = self.buffer[keep - self.start:], keep
        if not parts:
            return self.windows.add(np.zeros((0, self.dim), np.float32))
        return self.windows.add(np.concatenate(parts))
