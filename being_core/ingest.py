"""Ingest: any video ffmpeg reads becomes ``ori_imgs/<i>.jpg`` at the dataset rate and ``aud.wav`` (16 kHz mono).

Uses the ffmpeg binary that imageio-ffmpeg ships, so no system ffmpeg is needed. Frames are counted
from what was decoded, never estimated from duration x fps.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import wave
from dataclasses import asdict, dataclass
from pathlib import Path

from .config import IngestConfig
from .errors import InputError
from .manifest import INTERNAL_DIR, natural_key
from .native import die_with_parent
from .progress import Reporter

log = logging.getLogger("being.ingest")

AUDIO_RATE = 16000
FRAMES_DIR = "ori_imgs"
AUDIO_FILE = "aud.wav"


def ffmpeg_exe() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


@dataclass(frozen=True)
class MediaInfo:
    """What ffmpeg reports about a file's first video and audio streams."""

    duration_s: float | None
    video_codec: str | None
    width: int | None
    height: int | None
    fps: float | None
    audio_codec: str | None
    audio_rate: int | None
    audio_channels: str | None
    sar: tuple[int, int] | None = None  # sample (pixel) aspect ratio, when the container states one
    rotation: float = 0.0  # display rotation in degrees, which ffmpeg applies while decoding

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def square_pixels(self) -> bool:
        return self.sar is None or self.sar[0] == self.sar[1] or 0 in self.sar

    @property
    def display_size(self) -> tuple[int, int]:
        """Width and height of the decoded frames: non-square pixels made square, rotation applied."""
        if self.width is None or self.height is None:
            raise ValueError("no video stream")
        width, height = self.width, self.height
        if not self.square_pixels and self.sar:
            width = int(width * self.sar[0] / self.sar[1]) // 2 * 2
        if round(abs(self.rotation)) % 180 == 90:
            width, height = height, width
        return width, height

    def geometry_notes(self) -> list[str]:
        """What decoding does to the frames beyond the crop, for the log."""
        notes = []
        if not self.square_pixels and self.sar:
            notes.append(f"its pixels are not square (sample aspect ratio {self.sar[0]}:{self.sar[1]}); frames are "
                         f"resampled to square pixels, {self.width}x{self.height} becomes "
                         f"{int(self.width or 0) * self.sar[0] // self.sar[1] // 2 * 2}x{self.height}")
        if round(self.rotation) % 360:
            notes.append(f"it carries a rotation of {self.rotation:g} degrees; frames are turned upright "
                         f"({'x'.join(map(str, self.display_size))})")
        return notes


@dataclass(frozen=True)
class Crop:
    """The fixed square that ingest keeps of every frame, in the pixels of the upright, square-pixel frame."""

    mode: str  # 'center' or 'face'
    x: int
    y: int
    side: int
    frame_width: int
    frame_height: int

    @property
    def whole_frame(self) -> bool:
        return self.side == self.frame_width == self.frame_height

    def describe(self) -> str:
        return (f"the {self.side}x{self.side} square at ({self.x}, {self.y}) of the "
                f"{self.frame_width}x{self.frame_height} frame")

    def to_dict(self) -> dict:
        return asdict(self)


def center_square(width: int, height: int) -> Crop:
    side = min(width, height)
    return Crop("center", (width - side) // 2, (height - side) // 2, side, width, height)


def face_square(boxes: list[tuple[float, float, float, float]], width: int, height: int, scale: float) -> Crop:
    """One square that holds the head and shoulders in every sampled frame: ``scale`` face heights (the median
    face box) plus the face's travel between samples, the face a little above the middle; as large as the
    frame allows, moved (never shrunk below that) to stay inside it."""
    import numpy as np

    b = np.asarray(boxes, dtype=np.float64)
    size = float(np.median(np.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1])))
    x0, y0, x1, y1 = b[:, 0].min(), b[:, 1].min(), b[:, 2].max(), b[:, 3].max()
    travel = max(x1 - x0, y1 - y0) - size
    side = int(min(width, height, round(scale * size + max(travel, 0.0))))
    side -= side % 2
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    x = int(round(min(max(cx - side / 2, 0), width - side)))
    y = int(round(min(max(cy - 0.55 * side, 0), height - side)))
    return Crop("face", x, y, side, width, height)


_VIDEO_RE = re.compile(r"Stream #\d+:\d+.*?: Video: (\w+).*?, (\d{2,5})x(\d{2,5})")
_FPS_RE = re.compile(r"([\d.]+) fps")
_AUDIO_RE = re.compile(r"Stream #\d+:\d+.*?: Audio: (\w+).*?, (\d+) Hz, ([^,]+)")
_DURATION_RE = re.compile(r"Duration: (\d+):(\d+):([\d.]+)")
_SAR_RE = re.compile(r"\[SAR (\d+):(\d+) DAR")
_ROTATION_RE = re.compile(r"rotation of (-?[\d.]+) degrees|^\s*rotate\s*:\s*(-?[\d.]+)", re.IGNORECASE | re.MULTILINE)


def probe(path: Path, expected: str = "a video") -> MediaInfo:
    """Read stream facts with ``ffmpeg -i``. Raises InputError when the file is missing or not media; the
    message says what the file was expected to be (``"a video"``, ``"audio"``)."""
    if not path.exists():
        raise InputError(f"{path} does not exist")
    if not path.is_file():
        raise InputError(f"{path} is not a file")
    proc = subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", str(path)],
                          capture_output=True, text=True, errors="replace")
    text = proc.stderr
    if "Invalid data found" in text or "Error opening input" in text:
        raise InputError(f"{path} is not {expected} ffmpeg can read (ffmpeg: invalid data)")
    video = next((m for line in text.splitlines()
                  if "attached pic" not in line and (m := _VIDEO_RE.search(line))), None)
    audio = _AUDIO_RE.search(text)
    fps = None
    if video:
        line = next(ln for ln in text.splitlines() if video.group(0) in ln)
        if m := _FPS_RE.search(line):
            fps = float(m.group(1))
    dur = _DURATION_RE.search(text)
    sar = rotation = None
    if video:
        video_section = text[text.index(video.group(0)):]
        next_stream = video_section.find("Stream #", 1)
        video_section = video_section[:next_stream] if next_stream > 0 else video_section
        if m := _SAR_RE.search(video_section):
            sar = (int(m.group(1)), int(m.group(2)))
        if m := _ROTATION_RE.search(video_section):
            rotation = float(m.group(1) or m.group(2))
    return MediaInfo(
        duration_s=int(dur.group(1)) * 3600 + int(dur.group(2)) * 60 + float(dur.group(3)) if dur else None,
        video_codec=video.group(1) if video else None,
        width=int(video.group(2)) if video else None,
        height=int(video.group(3)) if video else None,
        fps=fps,
        audio_codec=audio.group(1) if audio else None,
        audio_rate=int(audio.group(2)) if audio else None,
        audio_channels=audio.group(3).strip() if audio else None,
        sar=sar,
        rotation=rotation or 0.0,
    )


def check_streams(video: Path, info: MediaInfo, cfg: IngestConfig) -> None:
    """InputError when ``video`` lacks a video stream, or an audio stream that ``cfg`` requires."""
    if info.video_codec is None:
        raise InputError(f"{video} has no video stream")
    if info.audio_codec is None and cfg.audio == "required":
        raise InputError(f"{video} has no audio stream; prepare it anyway with --no-audio "
                         f"(ingest.audio: optional), but a trainer needs audio")


def upright_filters(info: MediaInfo) -> list[str]:
    """Filters that make the pixels square (ffmpeg applies the rotation itself, before any filter)."""
    return [] if info.square_pixels else ["scale='trunc(iw*sar/2)*2':ih", "setsar=1"]


def video_filter(cfg: IngestConfig, info: MediaInfo, crop: Crop | None) -> str:
    filters = [f"fps={cfg.fps:g}", *upright_filters(info)]
    if crop is not None and not crop.whole_frame:
        filters.append(f"crop={crop.side}:{crop.side}:{crop.x}:{crop.y}")
    if cfg.size:
        filters.append(f"scale={cfg.size}:{cfg.size}:flags=lanczos")
    return ",".join(filters)


SAMPLES_DIR = "crop"


def sample_frames(video: Path, info: MediaInfo, root: Path, count: int) -> list[str]:
    """``count`` upright, square-pixel stills spread over the whole video, as ``crop/sample_<k>.jpg`` (run-folder
    relative paths returned); the face-following crop is decided on them."""
    folder = root / SAMPLES_DIR
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("sample_*.jpg"):
        old.unlink()
    duration = info.duration_s or 0.0
    written = []
    for k in range(count):
        name = f"sample_{k}.jpg"
        tmp = folder / f".{name}.tmp.jpg"
        at = duration * (k + 0.5) / count
        vf = ",".join(upright_filters(info)) or "null"
        proc = subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y", "-ss", f"{at:.3f}",
                               "-i", str(video), "-map", "0:v:0", "-frames:v", "1", "-vf", vf, "-q:v", "2", str(tmp)],
                              capture_output=True, text=True, errors="replace", preexec_fn=die_with_parent)
        if proc.returncode == 0 and tmp.is_file() and tmp.stat().st_size:
            os.replace(tmp, folder / name)
            written.append(f"{SAMPLES_DIR}/{name}")
        else:
            tmp.unlink(missing_ok=True)
    if not written:
        raise InputError(f"ffmpeg could not decode a single frame of {video} to find the face in")
    return written


@dataclass(frozen=True)
class IngestResult:
    n_frames: int
    width: int
    height: int
    has_audio: bool
    audio_seconds: float | None
    outputs: list[str]


def check_run_folder(video: Path, root: Path) -> None:
    """The run folder must be writable and must not be (or contain at an output path) the user's input."""
    video, root = video.resolve(), root.resolve()
    if root.exists() and not root.is_dir():
        raise InputError(f"run folder {root} exists and is not a folder")
    if video == root or video in (root / AUDIO_FILE, root / "being.json") or video.parent == root / FRAMES_DIR:
        raise InputError(f"run folder {root} would overwrite the input {video}; choose another -o")
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe_file = root / f".being-write-test-{os.getpid()}"
        probe_file.write_bytes(b"")
        probe_file.unlink()
    except OSError as exc:
        raise InputError(f"cannot write to run folder {root}: {exc.strerror or exc}") from None


def _run_ffmpeg(args: list[str], what: Path, progress: Reporter, description: str, total: int | None) -> None:
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y", *args]
    with progress.task(description, total, unit="frame") as task:
        proc = subprocess.Popen([*cmd[:-1], "-progress", "pipe:1", cmd[-1]], preexec_fn=die_with_parent,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace")
        done = 0
        for line in proc.stdout:  # type: ignore[union-attr]
            if line.startswith("frame="):
                frame = int(line.split("=", 1)[1] or 0)
                task.advance(frame - done)
                done = frame
        err = proc.stderr.read()  # type: ignore[union-attr]
        if proc.wait() != 0:
            raise InputError(f"ffmpeg could not decode {what}: {err.strip().splitlines()[-1] if err.strip() else 'error'}")


def ingest(video: Path, root: Path, cfg: IngestConfig, progress: Reporter | None = None,
           info: MediaInfo | None = None, crop: Crop | None = None) -> IngestResult:
    """Decode ``video`` into the run folder, keeping ``crop`` of every frame (all of it when None).
    Everything is written under ``.being/ingest`` first and moved into place only when complete, so a
    failure never leaves a half-written dataset."""
    progress = progress or Reporter()
    info = info or probe(video)
    check_streams(video, info, cfg)
    if crop is None and cfg.crop == "face":
        raise ValueError("ingest.crop: face is decided by the pipeline from the face tracker; pass its crop")
    if crop is None and cfg.crop == "center":
        crop = center_square(*info.display_size)
    for note in info.geometry_notes():
        log.info("ingest: %s: %s", video.name, note)
    want_audio = info.audio_codec is not None
    staging = root / INTERNAL_DIR / "ingest"
    if staging.exists():
        shutil.rmtree(staging)
    frames_tmp = staging / FRAMES_DIR
    frames_tmp.mkdir(parents=True)
    expected = round(info.duration_s * cfg.fps) if info.duration_s else None
    _run_ffmpeg(["-i", str(video), "-map", "0:v:0", "-vf", video_filter(cfg, info, crop), "-q:v", str(cfg.jpeg_quality),
                 "-start_number", "0", str(frames_tmp / "%d.jpg")], video, progress, "ingest: frames", expected)
    frames = sorted((p.name for p in frames_tmp.glob("*.jpg")), key=natural_key)
    if len(frames) < cfg.min_frames:
        shutil.rmtree(staging)
        raise InputError(f"{video} is too short: {len(frames)} frames at {cfg.fps:g} fps, "
                         f"at least {cfg.min_frames} are needed (ingest.min_frames)")
    if frames[-1] != f"{len(frames) - 1}.jpg":
        raise InputError(f"ffmpeg wrote non-contiguous frames for {video}")
    if expected and len(frames) < expected - max(cfg.fps, 0.05 * expected):  # more than 1 s and 5 % short
        message = (f"{video} ends early: its container says {info.duration_s:.2f} s ({expected} frames at "
                   f"{cfg.fps:g} fps), but only {len(frames)} frames ({len(frames) / cfg.fps:.2f} s) decode; the "
                   f"file is probably cut off")
        if cfg.truncated == "refuse":
            shutil.rmtree(staging)
            raise InputError(f"{message}. Fetch it again, or keep what decodes with ingest.truncated: accept")
        log.warning("%s; keeping the %d frames that decode (ingest.truncated: accept)", message, len(frames))
    audio_seconds = None
    if want_audio:
        audio_seconds = extract_audio(video, staging, progress, cfg.audio_shift_ms)
    with open(frames_tmp / frames[0], "rb") as f:
        width, height = _jpeg_size(f.read(), frames_tmp / frames[0])

    # Move into place: old frames first out of the way (a newer ingest replaces them all).
    final_frames = root / FRAMES_DIR
    final_frames.mkdir(exist_ok=True)
    for old in final_frames.glob("*.jpg"):
        old.unlink()
    for name in frames:
        os.replace(frames_tmp / name, final_frames / name)
    outputs = [f"{FRAMES_DIR}/{name}" for name in frames]
    if want_audio:
        os.replace(staging / AUDIO_FILE, root / AUDIO_FILE)
        outputs.append(AUDIO_FILE)
    elif (root / AUDIO_FILE).exists():
        (root / AUDIO_FILE).unlink()
    shutil.rmtree(staging)
    return IngestResult(len(frames), width, height, want_audio, audio_seconds, outputs)


def extract_audio(source: Path, folder: Path, progress: Reporter, shift_ms: float = 0.0) -> float:
    """Write the first audio stream of ``source`` as ``folder/aud.wav`` (16 kHz mono s16, written to a
    temporary name first), ``shift_ms`` later (silence before it) or, negative, earlier (its start cut); returns
    its duration in seconds."""
    tmp = folder / f".{AUDIO_FILE}.tmp.wav"
    _run_ffmpeg(["-i", str(source), "-map", "0:a:0", "-vn", "-ac", "1", "-ar", str(AUDIO_RATE),
                 "-c:a", "pcm_s16le", str(tmp)], source, progress, "ingest: audio", None)
    with wave.open(str(tmp), "rb") as wav:
        params, samples = wav.getparams(), wav.readframes(wav.getnframes())
    shift = round(shift_ms * AUDIO_RATE / 1000) * params.sampwidth  # in bytes of the mono samples
    if shift:  # the samples themselves, untouched: only where they start
        samples = bytes(shift) + samples if shift > 0 else samples[-shift:]
        with wave.open(str(tmp), "wb") as wav:
            wav.setparams(params)
            wav.writeframes(samples)
    os.replace(tmp, folder / AUDIO_FILE)
    return len(samples) / params.sampwidth / params.framerate


def _jpeg_size(data: bytes, path: Path) -> tuple[int, int]:
    """Width and height from a JPEG's SOF marker (no image library needed in the core)."""
    i = 2
    while i < len(data) - 9:
        if data[i] != 0xFF:
            i += 1
            continue
        marker = data[i + 1]
        if marker in (0xC0, 0xC1, 0xC2):
            height = int.from_bytes(data[i + 5:i + 7], "big")
            width = int.from_bytes(data[i + 7:i + 9], "big")
            return width, height
        i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
    raise InputError(f"{path} is not a JPEG ffmpeg should have written")
