"""Stage kinds: the interfaces every implementation fills in.

A stage reads files from the run folder (read-only) and writes files into its own output folder,
whose layout mirrors the run folder; the core moves them into place only after the stage succeeded.
Heavy imports (torch, mediapipe, onnxruntime) belong inside ``run()`` so that listing plugins stays cheap.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from .progress import Reporter


class StageKind(str, Enum):
    FACE_TRACKER = "face_tracker"
    AUDIO_ENCODER = "audio_encoder"
    AU_EXTRACTOR = "au_extractor"
    TEETH_SEGMENTER = "teeth_segmenter"
    TRAINER = "trainer"
    REFINER = "refiner"

    def __str__(self) -> str:  # "face_tracker", not "StageKind.FACE_TRACKER"
        return self.value


#: The order stages run in; each reads only what earlier ones (and ingest) wrote.
STAGE_ORDER: tuple[StageKind, ...] = tuple(StageKind)
#: Stages of ``being prepare`` (dataset building); the trainer and refiner come after.
PREPARE_STAGES: tuple[StageKind, ...] = STAGE_ORDER[:4]

#: Short names used in image tags, plugin folders and container folders (``face-mediapipe``).
KIND_PREFIX = {
    StageKind.FACE_TRACKER: "face",
    StageKind.AUDIO_ENCODER: "audio",
    StageKind.AU_EXTRACTOR: "au",
    StageKind.TEETH_SEGMENTER: "teeth",
    StageKind.TRAINER: "trainer",
    StageKind.REFINER: "refiner",
}

_NAME_RE = re.compile(r"^[a-z][a-z0-9-]*$")
_VERSION_RE = re.compile(r"^\d+\.\d+\.\d+$")


class StageConfig(BaseModel):
    """Base of every stage's config: unknown keys are rejected and every field must carry a description."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        missing = [name for name, f in cls.model_fields.items() if not f.description]
        if missing:
            raise TypeError(f"{cls.__qualname__}: fields without a description: {', '.join(missing)}")


@dataclass
class StageReport:
    """What ``run()`` returns: ``metrics`` for people, ``info`` for later stages (stored in ``being.json``)."""

    metrics: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class StageContext:
    """Everything a running stage may touch.

    ``root`` is the run folder (treat it as read-only), ``out`` the stage's output folder that mirrors it.
    ``manifest`` is the run's ``being.json`` as it was when the stage started.
    """

    root: Path
    out: Path
    config: StageConfig
    manifest: dict[str, Any]
    progress: Reporter
    action: str = "run"
    params: dict[str, Any] = field(default_factory=dict)
    #: Scratch folder kept between attempts of the same stage with the same inputs and config (checkpoints
    #: for resuming); wiped when they change. Never published.
    state: Path | None = None
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("being.stage"))

    def input(self, rel: str) -> Path:
        """Absolute path of an input file, relative to the run folder."""
        return self.root / rel

    def output(self, rel: str) -> Path:
        """Absolute path to write ``rel`` to (its parent folder is created)."""
        path = self.out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def dataset(self) -> dict[str, Any]:
        """Ingest facts: ``n_frames``, ``fps``, ``width``, ``height``, ``has_audio``."""
        return self.manifest.get("dataset", {})

    def stage_info(self, kind: str) -> dict[str, Any]:
        """The ``info`` an earlier stage recorded in the manifest (empty when it did not run)."""
        return self.manifest.get("stages", {}).get(kind, {}).get("info", {})


class Stage:
    """One implementation of one stage kind.

    Subclasses set ``name`` (lower-case, dashes), ``version`` (x.y.z; bump it when outputs change),
    ``Config`` (a :class:`StageConfig`), and implement :meth:`run`. ``inputs``/``outputs`` are glob patterns
    relative to the run folder; a kind sets the contract, an implementation may add to it.
    """

    kind: ClassVar[StageKind]
    name: ClassVar[str]
    version: ClassVar[str]
    Config: ClassVar[type[StageConfig]] = StageConfig
    needs_gpu: ClassVar[bool] = False
    inputs: ClassVar[tuple[str, ...]] = ()
    #: Inputs used when present (e.g. landmarks that sharpen a mask) but not required.
    optional_inputs: ClassVar[tuple[str, ...]] = ()
    outputs: ClassVar[tuple[str, ...]] = ()
    #: Files an implementation may write in some configurations (e.g. a reference file name).
    optional_outputs: ClassVar[tuple[str, ...]] = ()
    #: Config the contract tests use to run this implementation quickly on a short real clip.
    test_config: ClassVar[dict[str, Any]] = {}

    @classmethod
    def contract_config(cls, workdir: Path) -> dict[str, Any]:
        """Config for the contract tests; override to build test assets first (e.g. a tiny model in
        ``workdir``). Default: ``test_config``."""
        return dict(cls.test_config)

    @classmethod
    def image(cls) -> str:
        """The container image that runs this implementation, tagged with its version."""
        return f"being/{cls.slug()}:{cls.version}"

    @classmethod
    def slug(cls) -> str:
        """``face-mediapipe``: the name of its plugin folder, container folder and image."""
        return f"{KIND_PREFIX[cls.kind]}-{cls.name}"

    @classmethod
    def summary(cls) -> str:
        doc = (cls.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""

    @classmethod
    def check_definition(cls) -> list[str]:
        """Problems with the class as written (used by the registry and the contract tests)."""
        problems = []
        if not isinstance(getattr(cls, "kind", None), StageKind):
            problems.append("subclass a stage kind (FaceTracker, AudioEncoder, ...), not Stage itself")
        if not _NAME_RE.match(str(getattr(cls, "name", ""))):
            problems.append(f"name {getattr(cls, 'name', None)!r} must be lower-case letters, digits and dashes")
        if not _VERSION_RE.match(str(getattr(cls, "version", ""))):
            problems.append(f"version {getattr(cls, 'version', None)!r} must look like 1.2.3")
        if not (isinstance(cls.Config, type) and issubclass(cls.Config, StageConfig)):
            problems.append("Config must subclass being_core.StageConfig")
        for pattern in (*cls.inputs, *cls.optional_inputs, *cls.outputs, *cls.optional_outputs):
            if pattern.startswith("/") or ".." in Path(pattern).parts or pattern.startswith(".being"):
                problems.append(f"path {pattern!r} must be relative to the run folder and outside .being/")
        if not cls.outputs:
            problems.append("declares no outputs")
        return problems

    def run(self, ctx: StageContext) -> StageReport:
        raise NotImplementedError


class FaceTracker(Stage):
    """Tracks the face in every frame and writes the dataset's geometry and parsing files.

    Inputs: ``ori_imgs/<i>.jpg`` frames (``N`` of them, numbered from 0).
    Outputs (every implementation): ``face/landmarks.npy`` ``[N, L, 3] float32`` pixel x, y and relative depth;
    ``face/confidence.npy`` ``[N] float32`` (0 where no face was found); ``ori_imgs/<i>.lms`` 68 iBUG points
    (``np.savetxt``, 68 rows of x y). Implementations add ``track_params.pt``, ``transforms_*.json``,
    ``parsing/``, ``bc.jpg``, ``gt_imgs/`` and ``torso_imgs/`` as the dataset reference describes.
    """

    kind = StageKind.FACE_TRACKER
    inputs = ("ori_imgs/*.jpg",)
    outputs = ("face/landmarks.npy", "face/confidence.npy", "ori_imgs/*.lms")


class AudioEncoder(Stage):
    """Turns ``aud.wav`` into per-video-frame features.

    Inputs: ``aud.wav`` 16 kHz mono.
    Outputs: one features file ``aud_<name>.npy`` ``[N, W, D] float32`` with ``N`` the number of ingested
    frames (``being_core.audio.frame_windows`` cuts them), optionally also under the reference name of the
    model it ran (``aud_eo.npy``, ``aud_hu.npy``). The report's ``info`` must carry ``encoder``, ``file``,
    ``dim`` (D), ``window`` (W), ``rate`` (feature rate in Hz) and ``source_rate``, so that the trainer and
    render-time encoding read them from ``being.json``.
    """

    kind = StageKind.AUDIO_ENCODER
    inputs = ("aud.wav",)


class AUExtractor(Stage):
    """Writes facial action unit intensities.

    Outputs: ``au.csv`` in the OpenFace 2.x schema (``frame, face_id, timestamp, confidence, success,
    AU01_r ... AU45_r, AU01_c ... AU45_c`` with ``", "`` separators), exactly one row per frame.
    """

    kind = StageKind.AU_EXTRACTOR
    outputs = ("au.csv",)


class TeethSegmenter(Stage):
    """Writes a teeth mask per frame.

    Inputs: ``ori_imgs/<i>.jpg``. Outputs: ``teeth_mask/<i>.npy`` ``bool [H, W]`` for every frame
    (all false when the mouth is closed or no face is found).
    """

    kind = StageKind.TEETH_SEGMENTER
    inputs = ("ori_imgs/*.jpg",)
    outputs = ("teeth_mask/*.npy",)


class Trainer(Stage):
    """Trains the avatar (``action="run"``) and renders it for new audio (``action="render"``).

    Render requests carry ``params``: ``audio`` (16 kHz mono wav), ``features`` (``[M, W, D] float32`` from the
    run's own audio encoder), ``n_frames`` (M) and ``output`` (the ``.mp4`` to write), all relative to the run.
    """

    kind = StageKind.TRAINER
    render_inputs: ClassVar[tuple[str, ...]] = ()
    render_outputs: ClassVar[tuple[str, ...]] = ("renders/*/*.mp4",)

    def render(self, ctx: StageContext) -> StageReport:
        raise NotImplementedError


class Refiner(Stage):
    """Post-processes rendered frames (e.g. a 2D refinement network)."""

    kind = StageKind.REFINER


KIND_CLASSES: dict[StageKind, type[Stage]] = {
    c.kind: c for c in (FaceTracker, AudioEncoder, AUExtractor, TeethSegmenter, Trainer, Refiner)
}
