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

    def to_dict(self) -> dict:
        return asdict(self)


_VIDEO_RE = re.compile(r"Stream #\d+:\d+.*?: Video: (\w+).*?, (\d{2,5})x(\d{2,5})")
_FPS_RE = re.compile(r"([\d.]+) fps")
_AUDIO_RE = re.compile(r"Stream #\d+:\d+.*?: Audio: (\w+).*?, (\d+) Hz, ([^,]+)")
_DURATION_RE = re.compile(r"Duration: (\d+):(\d+):([\d.]+)")


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
    return MediaInfo(
        duration_s=int(dur.group(1)) * 3600 + int(dur.group(2)) * 60 + float(dur.group(3)) if dur else None,
        video_codec=video.group(1) if video else None,
        width=int(video.group(2)) if video else None,
        height=int(video.group(3)) if video else None,
        fps=fps,
        audio_codec=audio.group(1) if audio else None,
        audio_rate=int(audio.group(2)) if audio else None,
        audio_channels=audio.group(3).strip() if audio else None,
    )


def check_streams(video: Path, info: MediaInfo, cfg: IngestConfig) -> None:
    """InputError when ``video`` lacks a video stream, or an audio stream that ``cfg`` requires."""
    if info.video_codec is None:
        raise InputError(f"{video} has no video stream")
    if info.audio_codec is None and cfg.audio == "required":
        raise InputError(f"{video} has no audio stream; prepare it anyway with --no-audio "
                         f"(ingest.audio: optional), but a trainer needs audio")


def video_filter(cfg: IngestConfig) -> str:
    filters = [f"fps={cfg.fps:g}"]
    if cfg.crop == "center":
        filters.append("crop='min(iw,ih)':'min(iw,ih)'")
    if cfg.size:
        filters.append(f"scale={cfg.size}:{cfg.size}:flags=lanczos")
    return ",".join(filters)


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
           info: MediaInfo | None = None) -> IngestResult:
    """Decode ``video`` into the run folder. Everything is written under ``.being/ingest`` first and moved
    into place only when complete, so a failure never leaves a half-written dataset."""
    progress = progress or Reporter()
    info = info or probe(video)
    check_streams(video, info, cfg)
    want_audio = info.audio_codec is not None
    staging = root / INTERNAL_DIR / "ingest"
    if staging.exists():
        shutil.rmtree(staging)
    frames_tmp = staging / FRAMES_DIR
    frames_tmp.mkdir(parents=True)
    expected = round(info.duration_s * cfg.fps) if info.duration_s else None
    _run_ffmpeg(["-i", str(video), "-map", "0:v:0", "-vf", video_filter(cfg), "-q:v", str(cfg.jpeg_quality),
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
        audio_seconds = extract_audio(video, staging, progress)
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


def extract_audio(source: Path, folder: Path, progress: Reporter) -> float:
    """Write the first audio stream of ``source`` as ``folder/aud.wav`` (16 kHz mono s16, written to a
    temporary name first); returns its duration in seconds."""
    tmp = folder / f".{AUDIO_FILE}.tmp.wav"
    _run_ffmpeg(["-i", str(source), "-map", "0:a:0", "-vn", "-ac", "1", "-ar", str(AUDIO_RATE),
                 "-c:a", "pcm_s16le", str(tmp)], source, progress, "ingest: audio", None)
    with wave.open(str(tmp), "rb") as wav:
        seconds = wav.getnframes() / wav.getframerate()
    os.replace(tmp, folder / AUDIO_FILE)
    return seconds


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
