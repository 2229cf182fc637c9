"""A trained run loaded in-process for live use (``being serve``, a plugin): the promises between its parts.

A live session turns a stream of audio into a stream of frames, one video frame of audio at a time:

- the run's **audio encoder** streams (:meth:`being_core.AudioEncoder.stream` gives a :class:`FeatureStream`):
  samples in, the per-frame windows of the frames whose audio is complete out, in order, equal to the offline
  windows of the same audio except near its ends, after a bounded look-ahead it declares;
- the run's **trainer** renders live (:meth:`being_core.Trainer.live` gives a :class:`LiveAvatar`): batches of
  frames of any number of sessions at once, each session's head motion and blinks kept by its own
  :class:`LiveSession`;
- the run's **refiner**, when one was fitted, is the same :class:`being_core.FrameFilter` a render uses.

:func:`open_run` checks these promises for a run folder and loads the three; nothing here imports a model stack.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast

from .audio import SAMPLE_RATE
from .errors import InputError
from .manifest import Manifest
from .progress import Reporter
from .registry import Registry
from .stage import AudioEncoder, FrameFilter, Refiner, Stage, StageContext, StageKind, Trainer

log = logging.getLogger("being.live")


class FeatureStream(Protocol):
    """One session's audio encoder: :data:`being_core.audio.SAMPLE_RATE` mono float32 samples in, windows out.

    ``push(samples)`` returns the ``[k, W, D]`` float32 windows of the next ``k`` video frames (frame ``i`` spans
    samples ``round(i * rate / fps)`` to ``round((i + 1) * rate / fps)``) whose windows need no audio beyond what
    was pushed; ``k`` may be 0. ``lookahead`` is how many samples past a frame's end its window needs: the
    encoder's part of a live session's delay.
    """

    lookahead: int

    def push(self, samples: Any) -> Any: ...


class WindowFilter(Protocol):
    """What an avatar does to a session's windows before they reach it, across frames (optional: a
    :class:`LiveAvatar` with ``window_filter()`` returning one per session, or None). ``push(windows)`` takes the
    encoder's next ``[k, W, D]`` windows and returns the filtered windows of the frames now complete, in order;
    ``frames_ahead`` is how many frames past a frame its filtered window needs (part of the session's delay)."""

    frames_ahead: int

    def push(self, windows: Any) -> Any: ...


class _Filtered:
    """A :class:`FeatureStream` whose windows go through a :class:`WindowFilter`; its look-ahead grows by the
    filter's frames."""

    def __init__(self, stream: FeatureStream, window_filter: WindowFilter, fps: float):
        self.stream, self.filter = stream, window_filter
        self.lookahead = int(stream.lookahead) + math.ceil(window_filter.frames_ahead * SAMPLE_RATE / fps)

    def push(self, samples: Any) -> Any:
        return self.filter.push(self.stream.push(samples))


class LiveSession(Protocol):
    """One stream's state in a :class:`LiveAvatar`: where its head motion and its blinks are. ``step(quiet)``
    moves it on by one frame (``quiet`` as in :meth:`LiveAvatar.render`: an idle head may move slower) and returns
    that frame's inputs (opaque to the caller), to pass to :meth:`LiveAvatar.render` in the same order."""

    def step(self, quiet: float = 0.0) -> Any: ...


class LiveAvatar(Protocol):
    """A trained avatar loaded once, rendering frames for many sessions.

    ``render(steps, audio, quiet)`` renders one frame per entry of ``steps`` (from :meth:`LiveSession.step`, of
    any sessions), with ``audio`` ``[B, W, D]`` windows (a :class:`FeatureStream`'s) and ``quiet`` ``[B]`` in 0..1
    (1: a pause in the speech, or no speech; the avatar closes its mouth there as its config says). It returns
    ``(rgb, alpha)`` tensors on ``device``: ``[B, H, W, 3]`` and ``[B, H, W]`` in 0..1, ready for a
    :class:`being_core.FrameFilter`. Called from one thread at a time.
    """

    fps: float
    width: int
    height: int
    device: str

    def session(self, seed: int) -> LiveSession: ...

    def render(self, steps: list[Any], audio: Any, quiet: Any) -> tuple[Any, Any]: ...

    # optional: ``window_filter() -> WindowFilter | None``, a new filter of one session's windows


@dataclass
class LiveRun:
    """A trained run loaded for live use: its name, a factory of feature streams, the avatar and its refiner."""

    name: str
    root: Path
    encoder: str
    trainer: str
    refiner_name: str | None
    avatar: LiveAvatar
    refiner: FrameFilter | None
    #: the encoder's look-ahead in samples (the same for every stream; read once, from the first stream)
    lookahead: int
    _stream: Any = field(repr=False)

    def stream(self) -> FeatureStream:
        """A new :class:`FeatureStream` for one session (encoders keep state per stream)."""
        return self._stream()


def _context(root: Path, manifest: Manifest, cls: type[Stage[Any]], config: Any, progress: Reporter) -> StageContext:
    """A read-only stage context on the run folder: live loading writes nothing (``out`` is the run itself,
    which a live stage must not write to)."""
    from .stage import DatasetFacts

    upstream = {str(k): (manifest.stages.get(str(k)) or {}).get("info", {}) for k in cls.reads_info}
    return StageContext(root=root, out=root, config=config, dataset=DatasetFacts.model_validate(
        manifest.data["dataset"]), progress=progress, state=root, upstream=upstream, action="live")


def _done(manifest: Manifest, kind: StageKind) -> dict[str, Any] | None:
    entry = manifest.stages.get(str(kind)) or {}
    return entry if entry.get("status") == "done" else None


def made_with_installed(root: Path, used: Iterable[tuple[Any, dict[str, Any]]]) -> None:
    """InputError when a trained run was made with another version of an implementation than the one installed
    (``used``: ``(class, its being.json stage entry)`` pairs): new audio through a changed encoder, or an avatar
    through a changed trainer, would not be what it was trained on."""
    for cls, entry in used:
        if cls.version != entry.get("version"):
            raise InputError(f"{root} was made with {cls.kind} '{cls.name}' {entry.get('version')}, but "
                             f"{cls.version} is installed; retrain it (`being train {root}`) or install that version")


def open_run(root: Path, registry: Registry, device: str | None = None, progress: Reporter | None = None) -> LiveRun:
    """Load the trained run in ``root`` for live use on ``device`` (None: where its trainer's config says).

    The implementations and configs are those recorded in the run (what trained it), not a config file's.
    :class:`InputError` naming the folder when it was never prepared or trained, or when an implementation it
    used cannot stream (its name and what it lacks).
    """
    root = Path(root).resolve()
    progress = progress or Reporter()
    if not (root / "being.json").is_file():
        raise InputError(f"{root} is not a Being run folder (no being.json); prepare and train it first")
    manifest = Manifest.load(root)
    trainer_entry = _done(manifest, StageKind.TRAINER)
    if trainer_entry is None:
        raise InputError(f"{root} has no trained avatar; run `being train {root}` first")
    enc_entry = _done(manifest, StageKind.AUDIO_ENCODER)
    if enc_entry is None:
        raise InputError(f"{root} has no audio features, so its encoder is unknown; prepare it with audio")
    enc_cls = cast(type[AudioEncoder[Any]], registry.get(StageKind.AUDIO_ENCODER, enc_entry["impl"]))
    trainer_cls = cast(type[Trainer[Any]], registry.get(StageKind.TRAINER, trainer_entry["impl"]))
    made_with_installed(root, ((enc_cls, enc_entry), (trainer_cls, trainer_entry)))
    if not enc_cls.can_stream():
        raise InputError(f"{root}: its audio encoder '{enc_cls.name}' cannot stream audio (no stream()), so it "
                         "cannot be served live")
    if not trainer_cls.can_go_live():
        raise InputError(f"{root}: its trainer '{trainer_cls.name}' cannot render live (no live())")
    enc_config = enc_cls.Config.model_validate(enc_entry.get("config", {}))
    trainer_config = trainer_cls.Config.model_validate(trainer_entry.get("config", {}))
    enc_ctx = _context(root, manifest, enc_cls, enc_config, progress)
    trainer_ctx = _context(root, manifest, trainer_cls, trainer_config, progress)
    encoder = enc_cls()
    avatar = trainer_cls().live(trainer_ctx, device)
    refiner, refiner_name = None, None
    refiner_entry = _done(manifest, StageKind.REFINER)
    if refiner_entry is not None:
        refiner_cls = cast(type[Refiner[Any]], registry.get(StageKind.REFINER, refiner_entry["impl"]))
        refiner_name = refiner_cls.name
        refiner = refiner_cls().open(root, refiner_cls.Config.model_validate(refiner_entry.get("config", {})),
                                     avatar.device)
    make_filter = getattr(avatar, "window_filter", None)

    def new_stream() -> FeatureStream:
        stream = encoder.stream(enc_ctx, avatar.device)
        window_filter = make_filter() if make_filter is not None else None
        return stream if window_filter is None else _Filtered(stream, window_filter, avatar.fps)

    run = LiveRun(root.name, root, enc_cls.name, trainer_cls.name, refiner_name, avatar, refiner,
                  int(new_stream().lookahead), new_stream)
    log.info("live: %s: encoder '%s' (look-ahead %.0f ms), trainer '%s', refiner %s, on %s", root, enc_cls.name,
             1000 * run.lookahead / SAMPLE_RATE, trainer_cls.name, refiner_name and f"'{refiner_name}'", avatar.device)
    return run
