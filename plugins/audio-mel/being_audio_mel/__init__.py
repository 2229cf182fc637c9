"""Being audio_encoder ``mel``: log-mel features, the weightless default.

Timing (shared with the wav2vec2 layout the public trainers use): features at 50 Hz (hop 320 samples at
16 kHz); video frame ``i`` (shown at ``i / fps``) takes the ``window`` 50 Hz frames centred on that time
(``being_core.audio.frame_windows``; ``lead`` moves it later), edge frames repeated at the clip's ends. The
feature count is matched to the ingested frame count ``N``: a difference of up to ``max_mismatch_frames`` (audio
and video tracks rarely end together) is padded or trimmed at the end, a larger one is an error.
"""

from __future__ import annotations

from pydantic import Field

from being_core import AudioEncoder, StageConfig, StageContext, StageReport, hookimpl
from being_core.audio import SAMPLE_RATE, FrameWindows, check_mismatch, frame_windows, read_wav

FEATURE_FILE = "aud_mel.npy"
HOP = 320  # 20 ms: 50 feature frames per second, two per 25 fps video frame
WIN = 400  # 25 ms analysis window


class MelConfig(StageConfig):
    n_mels: int = Field(80, ge=8, le=256, description="Mel bands, the feature width D.")
    window: int = Field(16, ge=1, le=64, description="50 Hz frames per video frame, the window W (even).")
    lead: int = Field(0, ge=-32, le=32, description="50 Hz frames the window is moved later than centred on the "
                      "frame's time (lips move before the sound they shape; a live session waits as much longer).")
    n_fft: int = Field(512, ge=128, le=8192, description="FFT size in samples (32 ms at 16 kHz).")
    fmin: float = Field(55.0, ge=0, lt=8000, description="Lowest mel frequency, Hz.")
    fmax: float = Field(7600.0, gt=0, le=8000, description="Highest mel frequency, Hz.")
    max_mismatch_frames: int = Field(
        25, ge=0, le=10_000, description="Largest difference between audio length and video frame count, in video frames."
    )


class MelEncoder(AudioEncoder[MelConfig]):
    """Log-mel spectrogram windows per video frame (librosa; no weights)."""

    name = "mel"
    version = "1.1.0"
    outputs = (FEATURE_FILE,)

    def run(self, ctx: StageContext[MelConfig]) -> StageReport:
        import numpy as np

        cfg = ctx.config
        n_frames = ctx.dataset.n_frames
        fps = ctx.dataset.fps
        audio = read_wav(ctx.input("aud.wav"))
        with ctx.progress.task("audio: log-mel", total=1, unit="clip") as task:
            feats = log_mel(audio, cfg)
            task.advance()
        windows, mismatch = frame_windows(feats, n_frames, fps, cfg.window, lead=cfg.lead)
        check_mismatch(mismatch, cfg.max_mismatch_frames, len(audio), n_frames, fps)
        np.save(ctx.output(FEATURE_FILE), windows.astype(np.float32))
        return StageReport(
            metrics={"seconds_of_audio": round(len(audio) / SAMPLE_RATE, 3), "frame_mismatch": mismatch},
            # (a lead only when there is one: a run made before the setting existed keeps its trained avatar)
            info={"encoder": self.name, "file": FEATURE_FILE, "dim": cfg.n_mels, "window": cfg.window,
                  "rate": SAMPLE_RATE / HOP, "source_rate": SAMPLE_RATE, "shape": list(windows.shape),
                  **({"lead": cfg.lead} if cfg.lead else {})},
        )


    def stream(self, ctx: StageContext[MelConfig], device: str | None = None) -> MelStream:
        return MelStream(ctx.config, ctx.dataset.fps)


class MelStream:
    """:func:`log_mel` as samples arrive (a :class:`being_core.live.FeatureStream`): feature ``j`` is the frame
    centred on sample ``j * HOP`` (librosa's ``center=True``, zeros before the start), computed once its last
    sample is in, so it equals the offline feature except at the end of the audio."""

    def __init__(self, cfg: MelConfig, fps: float):
        import numpy as np
        from librosa.filters import get_window, mel
        from librosa.util import pad_center

        self.cfg = cfg
        # what librosa.feature.melspectrogram builds on every call, built once: a session pushes every 20 ms
        self.basis = mel(sr=SAMPLE_RATE, n_fft=cfg.n_fft, n_mels=cfg.n_mels, fmin=cfg.fmin,
                                         fmax=cfg.fmax).astype(np.float32)
        self.window = pad_center(get_window("hann", WIN, fftbins=True), size=cfg.n_fft).astype(np.float32)
        self.half = cfg.n_fft // 2
        self.buffer = np.zeros(self.half, np.float32)  # the zeros that centring puts before sample 0
        self.start = -self.half  # the sample index of buffer[0]
        self.next_feature = 0
        self.windows = FrameWindows(cfg.window, fps, SAMPLE_RATE / HOP, cfg.lead)
        self.lookahead = self.windows.lookahead(HOP, self.half)

    def push(self, samples):
        import numpy as np

        self.buffer = np.concatenate([self.buffer, np.asarray(samples, np.float32).reshape(-1)])
        end = self.start + len(self.buffer)  # samples known: up to (not including) end
        n = (end - self.half) // HOP + 1 - self.next_feature  # features whose last sample is in
        if n <= 0:
            return self.windows.add(np.zeros((0, self.cfg.n_mels), np.float32))
        lo = self.next_feature * HOP - self.half - self.start
        piece = self.buffer[lo:lo + (n - 1) * HOP + self.cfg.n_fft]
        frames = np.lib.stride_tricks.sliding_window_view(piece, self.cfg.n_fft)[::HOP]
        power = np.abs(np.fft.rfft(frames * self.window, axis=1)) ** 2
        feats = np.log(power.astype(np.float32) @ self.basis.T + 1e-6).astype(np.float32)
        self.next_feature += n
        keep = self.next_feature * HOP - self.half - self.start
        self.buffer, self.start = self.buffer[keep:], self.start + keep
        return self.windows.add(feats)


def log_mel(audio, cfg: MelConfig):
    """``[T50, n_mels] float32`` natural-log mel energies at 50 Hz."""
    import librosa
    import numpy as np

    mel = librosa.feature.melspectrogram(y=audio, sr=SAMPLE_RATE, n_fft=cfg.n_fft, hop_length=HOP,
                                         win_length=WIN, n_mels=cfg.n_mels, fmin=cfg.fmin, fmax=cfg.fmax,
                                         center=True, pad_mode="constant", power=2.0)
    return np.log(mel + 1e-6).T.astype(np.float32)


@hookimpl
def being_register_stages(registry):
    registry.add(MelEncoder)
