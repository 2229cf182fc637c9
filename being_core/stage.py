"""Stage kinds: the interfaces every implementation fills in, and the promises between them.

A stage reads files from the run folder (read-only) and writes files into its own output folder, whose
layout mirrors the run folder; the core moves them into place only after the stage succeeded. What a stage
reads and writes is declared on its class (``inputs``, ``outputs``, ``requires``, ``provides``), so the whole
chain of a config is checked before anything runs (:mod:`being_core.contracts`).
Heavy imports (torch, mediapipe, onnxruntime) belong inside ``run()`` so that listing plugins stays cheap.
"""

from __future__ import annotations

import logging
import re
import time
import typing
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar, Generic, Literal, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from .paths import RunPath
from .progress import Reporter


class StageKind(StrEnum):
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

#: Short names used in image tags and plugin folders (``face-mediapipe``).
KIND_PREFIX = {
    StageKind.FACE_TRACKER: "face",
    StageKind.AUDIO_ENCODER: "audio",
    StageKind.AU_EXTRACTOR: "au",
    StageKind.TEETH_SEGMENTER: "teeth",
    StageKind.TRAINER: "trainer",
    StageKind.REFINER: "refiner",
}

#: Named promises a file pattern alone does not make. A stage ``provides`` or ``requires`` them by name;
#: third parties may add their own names (an unknown name only has to be provided by someone).
CAPABILITIES: dict[str, str] = {
    "landmarks:facemesh-478": "face/landmarks.npy holds MediaPipe FaceMesh's 478 refined landmarks, in its "
                              "vertex order, so fixed vertex ids (eye and lip contours) mean the same point.",
    "dataset:reference-layout": "parsing/ (ER-NeRF colours), torso_imgs/, gt_imgs/, bc.jpg, track_params.pt "
                                "(euler, trans, focal, vertices) and transforms_*.json follow the talking-head "
                                "dataset reference that the public trainers read.",
    "dataset:split": "files that depend on the train/val split (transforms_train.json, transforms_val.json) "
                     "follow the split in the dataset facts, the one every stage reads.",
    "trainer:frames": "the trainer hands its frames to a refiner: its 'replay' action renders the run's own frames "
                      "(refiner/replay/), its 'render' writes the frames losslessly beside the video when asked "
                      "(RenderParams.frames), and its 'score' action reports its held-out metrics for any frames "
                      "(ScoreParams), so a refined render is measured like the trainer's own.",
}

#: Vertex ids of the ``landmarks:facemesh-478`` layout that speech and expression hardly move: the forehead, the
#: nose, the eye corners and the temples (the face's outline from the brows to the ears). Their rigid motion is
#: the head's; a stage that aligns frames to remove the pose aligns on these, because aligning on every point
#: lets the jaw and lips pull the pose (docs/benchmarks.md, "The tracked pose carried the mouth").
FACEMESH_RIGID_POINTS = (10, 338, 297, 332, 109, 67, 103, 151, 9, 8, 168, 6, 197, 195, 5, 4, 33, 133, 362, 263, 127,
                         356, 234, 454, 162, 389, 21, 251)

#: Where a trainer's ``replay`` action writes the run's own frames, rendered: ``train.mkv`` and ``val.mkv`` (the
#: splits in order, lossless RGB) with ``train_alpha.mkv`` and ``val_alpha.mkv`` (the head's coverage).
REPLAY_DIR = "refiner/replay"
#: The refined held-out frames every refiner's ``run`` writes (lossless, val split in order), which the trainer's
#: ``score`` action measures.
REFINED_VAL = "refiner/val.mkv"
#: The trainer's held-out metrics of the refined frames, side by side with its own (``avatar/metrics.json``).
REFINED_METRICS = "refiner/metrics.json"

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


def split_point(n_frames: int, val_split: int) -> int:
    """First val frame when the last ``1/val_split`` of ``n_frames`` is held out (the reference: 11)."""
    return int(n_frames * (val_split - 1) / val_split)


class DatasetFacts(BaseModel):
    """What ingest decided about a run's frames, recorded once in ``being.json`` and sent in every request.

    The train/val split lives here and only here: every stage that needs it reads ``train_ids``/``val_ids``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    n_frames: int = Field(ge=1, description="Frames in ori_imgs/, numbered 0 .. n_frames - 1.")
    fps: float = Field(gt=0, description="Frame rate of the dataset.")
    width: int = Field(ge=1, description="Frame width in pixels.")
    height: int = Field(ge=1, description="Frame height in pixels.")
    has_audio: bool = Field(description="Whether aud.wav exists.")
    audio_seconds: float | None = Field(None, description="Length of aud.wav in seconds.")
    val_start: int = Field(ge=0, description="First held-out frame: train is [0, val_start), val the rest.")

    @property
    def train_ids(self) -> list[int]:
        return list(range(self.val_start))

    @property
    def val_ids(self) -> list[int]:
        return list(range(self.val_start, self.n_frames))


class NoParams(BaseModel):
    """Parameters of the plain ``run`` action: none."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class RenderParams(BaseModel):
    """Parameters of a trainer's ``render`` action; paths are relative to the run folder."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    audio: RunPath = Field(description="16 kHz mono wav to lip-sync.")
    features: RunPath = Field(description="[M, W, D] float32 features of that audio, from the run's own encoder.")
    n_frames: int = Field(ge=1, description="Frames to render (M).")
    output: RunPath = Field(description="The .mp4 to write.")
    pose: Literal["train", "still"] | RunPath = Field(
        "train", description="Head motion: 'train' plays the training frames' poses back and forth, 'still' "
        "holds one typical training pose, or a .npy of [T, 6] poses (Euler angles and translation as in "
        "track_params.pt), played back and forth.")
    blink: Literal["track", "natural", "none"] = Field(
        "track", description="Blinks: 'track' from the training frames played back, 'natural' on a blink "
        "schedule of about 15 a minute, 'none' keeps the eyes open.")
    frames: RunPath | None = Field(
        None, description="For a refiner (trainers that provide 'trainer:frames'): also write the frames "
        "losslessly to this .mkv, and the render's alpha beside it (<name>_alpha.mkv).")


class ScoreParams(BaseModel):
    """Parameters of a trainer's ``score`` action: frames made from its held-out renders (by a refiner)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    frames: RunPath = Field(description="Lossless .mkv of the held-out frames, in order (the val split).")
    output: RunPath = Field(description="The .json to write the metrics to.")


class RefineParams(BaseModel):
    """Parameters of a refiner's ``refine`` action: a trainer's lossless frames in, the refined video out."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    frames: RunPath = Field(description="Lossless .mkv of the rendered frames (RenderParams.frames).")
    alpha: RunPath = Field(description="Lossless .mkv of the render's alpha, the head's coverage, frame by frame.")
    audio: RunPath | None = Field(None, description="Speech to mux into the output (.mp4 only).")
    output: RunPath = Field(description="The .mp4 to write (or .mkv: lossless, no audio).")


def alpha_path(frames: str) -> str:
    """The alpha video beside a frames video: ``renders/x/frames.mkv`` -> ``renders/x/frames_alpha.mkv``."""
    stem, dot, suffix = frames.rpartition(".")
    return f"{stem}_alpha.{suffix}" if dot else f"{frames}_alpha"


class LocateParams(BaseModel):
    """Parameters of a face tracker's ``locate`` action: still frames sampled from the whole source video
    (before any crop), relative to the run folder."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    frames: list[RunPath] = Field(min_length=1, max_length=256, description="Sampled frames (JPEG).")


class FaceBoxes(BaseModel):
    """What ``locate`` writes to ``crop/faces.json``: per sampled frame, the subject's face box
    ``[x0, y0, x1, y1]`` in that frame's pixels (the largest face when there are several), or null."""

    model_config = ConfigDict(extra="forbid")

    boxes: list[tuple[float, float, float, float] | None]


@dataclass(frozen=True)
class Action:
    """An action other than ``run`` that a kind declares: its method, typed parameters and its files."""

    method: str
    params: type[BaseModel]
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    #: Files the action writes in some cases only (a render's lossless frames, for a refiner).
    optional_outputs: tuple[str, ...] = ()


@dataclass(frozen=True)
class Resources:
    """What one run of a stage occupies, for runners that schedule (Ray): CPUs, GPUs and memory."""

    cpus: float = 1.0
    gpus: float = 0.0
    #: False: the stage also runs (slower) where no GPU is free, so a scheduler may give it none.
    gpu_required: bool = False
    memory_gb: float | None = None

    @classmethod
    def for_device(cls, device: str, cpus: float = 1.0) -> Resources:
        """For a stage with a ``device`` setting: 'cpu' needs no GPU, 'cuda' requires one, 'auto' takes one when
        a scheduler has it (and runs, slower, without)."""
        if device == "cpu":
            return cls(cpus=cpus)
        return cls(cpus=cpus, gpus=1.0, gpu_required=device == "cuda")


@dataclass
class StageReport:
    """What ``run()`` returns: ``metrics`` for people, ``info`` for later stages (stored in ``being.json``)."""

    metrics: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


ConfigT = TypeVar("ConfigT", bound=StageConfig)


@dataclass
class StageContext(Generic[ConfigT]):
    """Everything a running stage may touch, and nothing more.

    ``root`` is the run folder (treat it as read-only), ``out`` the stage's output folder that mirrors it.
    ``dataset`` are the ingest facts (the split included); ``upstream`` the ``info`` of the earlier stages
    this implementation declares in ``reads_info``; ``params`` the action's typed parameters.
    """

    root: Path
    out: Path
    config: ConfigT
    dataset: DatasetFacts
    progress: Reporter
    #: Scratch folder kept between attempts of the same stage with the same inputs and config (checkpoints
    #: for resuming); wiped when they change. Never published.
    state: Path
    upstream: dict[str, dict[str, Any]] = field(default_factory=dict)
    action: str = "run"
    params: Any = None
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("being.stage"))

    def input(self, rel: str) -> Path:
        """Absolute path of an input file, relative to the run folder."""
        return self.root / rel

    def output(self, rel: str) -> Path:
        """Absolute path to write ``rel`` to (its parent folder is created)."""
        path = self.out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def stage_info(self, kind: StageKind | str) -> dict[str, Any]:
        """The ``info`` an earlier stage recorded; only kinds in the implementation's ``reads_info`` are sent."""
        return self.upstream.get(str(kind), {})


class Stage(Generic[ConfigT]):
    """One implementation of one stage kind.

    Subclass a kind with your config type (``class Mine(TeethSegmenter[MineConfig])``) and set ``name``
    (lower-case, dashes), ``version`` (x.y.z; bump it when outputs change) and implement :meth:`run`.
    ``inputs``/``outputs`` are glob patterns relative to the run folder; a kind sets the contract and an
    implementation may add to it. ``requires``/``provides`` name :data:`CAPABILITIES`.
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
    requires: ClassVar[tuple[str, ...]] = ()
    provides: ClassVar[tuple[str, ...]] = ()
    #: Earlier kinds whose ``info`` this stage reads (sent in the request and part of its cache key).
    reads_info: ClassVar[tuple[StageKind, ...]] = ()
    #: Actions besides ``run`` (a trainer's ``render``).
    actions: ClassVar[dict[str, Action]] = {}
    #: Config fields that only the named actions read (e.g. a trainer's render-time settings): the cache key of
    #: every other action leaves them out, so changing one never redoes a training.
    action_settings: ClassVar[dict[str, tuple[str, ...]]] = {}
    #: The metrics worth a line in the run summary (``being run`` / ``being train``), in this order.
    headline_metrics: ClassVar[tuple[str, ...]] = ()
    #: Config the contract tests use to run this implementation quickly on a short real clip.
    test_config: ClassVar[dict[str, Any]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "Config" not in cls.__dict__:  # ``Mine(TeethSegmenter[MineConfig])`` sets Config = MineConfig
            for base in getattr(cls, "__orig_bases__", ()):
                args = typing.get_args(base)
                if args and isinstance(args[0], type) and issubclass(args[0], StageConfig):
                    cls.Config = args[0]

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
        """``face-mediapipe``: the name of its plugin folder and image."""
        return f"{KIND_PREFIX[cls.kind]}-{cls.name}"

    @classmethod
    def summary(cls) -> str:
        doc = (cls.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""

    @classmethod
    def action(cls, name: str) -> Action | None:
        """The declared action ``name`` (None for ``run``); KeyError when the kind has no such action."""
        if name == "run":
            return None
        return cls.actions[name]

    @classmethod
    def files(cls, action: str = "run") -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
        """(required inputs, outputs, optional outputs) of an action."""
        act = cls.action(action)
        if act is None:
            return cls.inputs, cls.outputs, cls.optional_outputs
        return act.inputs, act.outputs, act.optional_outputs

    @classmethod
    def resources(cls, config: ConfigT) -> Resources:
        """What a run with ``config`` occupies; by default one CPU, and a GPU when ``needs_gpu``. Override when the
        config decides (a trainer told to use the CPU needs no GPU)."""
        return Resources(gpus=1.0 if cls.needs_gpu else 0.0)

    @classmethod
    def config_problems(cls, config: Any) -> list[str]:
        """Problems with ``config`` that show before anything runs (a model folder that does not exist, or lacks
        a file), each one line; the core reports them with the chain's, before the first file is written. Keep
        it cheap: no model stack imports."""
        return []

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
        patterns = [*cls.inputs, *cls.optional_inputs, *cls.outputs, *cls.optional_outputs]
        for act in cls.actions.values():
            patterns += [*act.inputs, *act.outputs, *act.optional_outputs]
        for pattern in patterns:
            if not isinstance(pattern, str) or pattern.startswith("/") or ".." in Path(pattern).parts \
                    or pattern.startswith(".being"):
                problems.append(f"path {pattern!r} must be relative to the run folder and outside .being/")
        if not cls.outputs:
            problems.append("declares no outputs")
        fields = getattr(cls.Config, "model_fields", {})
        for action, names in cls.action_settings.items():
            if action not in cls.actions:
                problems.append(f"action_settings names {action!r}, which is not one of its actions")
            unknown = [n for n in names if n not in fields]
            if unknown:
                problems.append(f"action_settings[{action!r}] names {', '.join(unknown)}, not settings of its Config")
        if "trainer:frames" in cls.provides:
            missing = [a for a in ("render", "replay", "score") if a not in cls.actions]
            if missing:
                problems.append(f"provides trainer:frames but has no {', '.join(missing)} action")
        kind = getattr(cls, "kind", None)
        for upstream in cls.reads_info:
            if not isinstance(upstream, StageKind) or (isinstance(kind, StageKind)
                                                       and STAGE_ORDER.index(upstream) >= STAGE_ORDER.index(kind)):
                problems.append(f"reads_info names {upstream!r}, which is not an earlier stage kind")
        for base in KIND_CLASSES.values():
            if base is not cls and issubclass(cls, base):
                missing = [p for p in base.outputs if p not in cls.outputs]
                if missing:
                    problems.append(f"drops outputs its kind promises: {', '.join(missing)}")
                missing = [c for c in base.provides if c not in cls.provides]
                if missing:
                    problems.append(f"drops capabilities its kind promises: {', '.join(missing)}")
        return problems

    def run(self, ctx: StageContext[ConfigT]) -> StageReport:
        raise NotImplementedError


class FaceTracker(Stage[ConfigT]):
    """Tracks the face in every frame and writes the dataset's geometry and parsing files.

    Inputs: ``ori_imgs/<i>.jpg`` frames (``N`` of them, numbered from 0).
    Outputs (every implementation): ``face/landmarks.npy`` ``[N, L, 3] float32`` pixel x, y and relative depth;
    ``face/confidence.npy`` ``[N] float32`` (0 where no face was found); ``ori_imgs/<i>.lms`` 68 iBUG points
    (``np.savetxt``, 68 rows of x y). Implementations add ``track_params.pt``, ``transforms_*.json``,
    ``parsing/``, ``bc.jpg``, ``gt_imgs/`` and ``torso_imgs/`` as the dataset reference describes, and say so
    with ``provides`` (``dataset:reference-layout``, ``dataset:split``, a landmark topology).
    """

    kind = StageKind.FACE_TRACKER
    inputs: ClassVar[tuple[str, ...]] = ("ori_imgs/*.jpg",)
    outputs: ClassVar[tuple[str, ...]] = ("face/landmarks.npy", "face/confidence.npy", "ori_imgs/*.lms")

    #: The optional ``locate`` action, which ``ingest.crop: face`` needs: add it with
    #: ``actions = {"locate": FaceTracker.locate_action}`` and a method ``locate(ctx)`` that reads
    #: ``ctx.params.frames`` (:class:`LocateParams`) and writes ``crop/faces.json`` (:class:`FaceBoxes`).
    locate_action: ClassVar[Action] = Action("locate", LocateParams, inputs=("crop/sample_*.jpg",),
                                             outputs=("crop/faces.json",))

    @classmethod
    def can_locate(cls) -> bool:
        return "locate" in cls.actions


class AudioEncoder(Stage[ConfigT]):
    """Turns ``aud.wav`` into per-video-frame features.

    Inputs: ``aud.wav`` 16 kHz mono.
    Outputs: one features file ``aud_<name>.npy`` ``[N, W, D] float32`` with ``N`` the number of ingested
    frames (``being_core.audio.frame_windows`` cuts them), optionally also under the reference name of the
    model it ran (``aud_eo.npy``, ``aud_hu.npy``). The report's ``info`` must carry ``encoder``, ``file``,
    ``dim`` (D), ``window`` (W), ``rate`` (feature rate in Hz) and ``source_rate``
    (:class:`being_core.audio.AudioFeatures`), which a trainer reads through ``reads_info``.
    """

    kind = StageKind.AUDIO_ENCODER
    inputs: ClassVar[tuple[str, ...]] = ("aud.wav",)

    #: Whether :meth:`stream` gives exactly the offline windows (but for float rounding); an encoder whose model sees
    #: more context offline than a live stream can wait for sets False and promises windows close to them instead
    #: (correlation 0.99 or more, mean difference under 5 % of their spread; the contract tests check either).
    stream_exact: ClassVar[bool] = True

    def stream(self, ctx: StageContext[ConfigT], device: str | None = None) -> Any:
        """A :class:`being_core.live.FeatureStream` for one live session (``being serve``): the same windows as
        ``run`` writes for the same audio, except near its ends, computed as the samples arrive. ``ctx`` is the
        trained run's (read-only); ``device`` where a model runs (None: where the config says). Optional."""
        raise NotImplementedError

    @classmethod
    def can_stream(cls) -> bool:
        return cls.stream is not AudioEncoder.stream


class AUExtractor(Stage[ConfigT]):
    """Writes facial action unit intensities.

    Outputs: ``au.csv`` in the OpenFace 2.x schema (``frame, face_id, timestamp, confidence, success,
    AU01_r ... AU45_r, AU01_c ... AU45_c`` with ``", "`` separators), exactly one row per frame.
    """

    kind = StageKind.AU_EXTRACTOR
    outputs: ClassVar[tuple[str, ...]] = ("au.csv",)


class TeethSegmenter(Stage[ConfigT]):
    """Writes a teeth mask per frame.

    Inputs: ``ori_imgs/<i>.jpg``. Outputs: ``teeth_mask/<i>.npy`` ``bool [H, W]`` for every frame
    (all false when the mouth is closed or no face is found).
    """

    kind = StageKind.TEETH_SEGMENTER
    inputs: ClassVar[tuple[str, ...]] = ("ori_imgs/*.jpg",)
    outputs: ClassVar[tuple[str, ...]] = ("teeth_mask/*.npy",)


class Trainer(Stage[ConfigT]):
    """Trains the avatar (``run``) and renders it for new audio (the ``render`` action).

    ``render`` receives :class:`RenderParams`; the audio and its features are written by the core into a
    sub-folder ``renders/<audio>-<hash>/`` with the run's own audio encoder. An implementation declares what
    render reads by replacing the action: ``actions = {"render": Trainer.render_action(inputs=(...))}``.
    """

    kind = StageKind.TRAINER
    reads_info: ClassVar[tuple[StageKind, ...]] = (StageKind.AUDIO_ENCODER,)
    actions: ClassVar[dict[str, Action]] = {"render": Action("render", RenderParams, outputs=("renders/*/*.mp4",),
                                                             optional_outputs=("renders/*/*.mkv",))}
    #: The render's metrics worth a line after ``being render`` (e.g. how the mouth follows the new speech).
    render_headline_metrics: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def render_action(cls, inputs: tuple[str, ...]) -> Action:
        """The kind's ``render`` action with this implementation's inputs."""
        base = Trainer.actions["render"]
        return Action(base.method, base.params, inputs, base.outputs, base.optional_outputs)

    @classmethod
    def replay_action(cls, inputs: tuple[str, ...]) -> Action:
        """The ``replay`` action (with ``trainer:frames``): render every frame of the run with its own audio,
        pose and eyes, and write the splits to :data:`REPLAY_DIR` (``train.mkv``, ``train_alpha.mkv``,
        ``val.mkv``, ``val_alpha.mkv``): what a refiner learns from and is measured on."""
        return Action("replay", NoParams, inputs, (f"{REPLAY_DIR}/*.mkv",))

    @classmethod
    def score_action(cls, inputs: tuple[str, ...]) -> Action:
        """The ``score`` action (with ``trainer:frames``): the held-out metrics of :class:`ScoreParams`' frames,
        the same ones and the same way as the trainer's own evaluation, written to the params' ``output``."""
        return Action("score", ScoreParams, (*inputs, REFINED_VAL), (REFINED_METRICS,))

    def render(self, ctx: StageContext[ConfigT]) -> StageReport:
        raise NotImplementedError

    def live(self, ctx: StageContext[ConfigT], device: str | None = None) -> Any:
        """The trained avatar of ``ctx``'s run (read-only) loaded on ``device`` (None: where the config says) as a
        :class:`being_core.live.LiveAvatar`, rendering frames for live sessions in batches. Optional."""
        raise NotImplementedError

    @classmethod
    def can_go_live(cls) -> bool:
        return cls.live is not Trainer.live


class FrameFilter(Protocol):
    """A refiner loaded in-process (:meth:`Refiner.open`): batches of frames in, refined frames out.

    Called with tensors on its ``device`` (the real-time server's path: frames never leave the GPU): ``rgb``
    float ``[B, H, W, 3]`` in 0..1 and ``alpha`` ``[B, H, W]`` in 0..1 (the head's coverage in the render); it
    returns the refined ``[B, H, W, 3]``. ``refine_frames`` does the same for uint8 arrays on the host
    (``[B, H, W, 3]`` and ``[B, H, W]``), the path of files. A refiner that keeps state across frames (fixed
    noise) keeps it per object: one object per stream.
    """

    device: str

    def __call__(self, rgb: Any, alpha: Any) -> Any: ...

    def refine_frames(self, rgb: Any, alpha: Any) -> Any: ...


class Refiner(Stage[ConfigT]):
    """Refines a trainer's rendered frames in 2D (a network learned per subject, a diffusion pass).

    ``run`` is the fit: it reads the trainer's replay of the run's own frames (:data:`REPLAY_DIR`: the training
    and held-out splits, lossless, with the head's alpha) and the real frames, learns from them when the
    implementation learns (``learns``), and writes the refined held-out frames to :data:`REFINED_VAL`, which
    the trainer's ``score`` action measures beside its own. ``refine`` (:class:`RefineParams`) streams a render
    through it in batches. :meth:`open` loads it in-process for frames on a GPU (the real-time server); the
    kind's ``refine`` and :meth:`refine_file` are built on it, so an implementation writes ``run`` and ``open``.
    Frames cross the boundary as files (:mod:`being_core.frames`), the same for every runner.
    """

    kind = StageKind.REFINER
    inputs: ClassVar[tuple[str, ...]] = ("ori_imgs/*.jpg", f"{REPLAY_DIR}/*.mkv")
    outputs: ClassVar[tuple[str, ...]] = (REFINED_VAL,)
    requires: ClassVar[tuple[str, ...]] = ("trainer:frames",)
    actions: ClassVar[dict[str, Action]] = {"refine": Action("refine", RefineParams, ("renders/*/*.mkv",),
                                                             ("renders/*/*.mp4",))}
    #: Whether ``run`` learns from the avatar (its fit); False: it only refines the held-out frames.
    learns: ClassVar[bool] = False
    #: Frames per batch when streaming a file through :meth:`open`.
    batch: ClassVar[int] = 8

    @classmethod
    def refine_action(cls, inputs: tuple[str, ...]) -> Action:
        """The kind's ``refine`` action, also reading this implementation's ``inputs`` (e.g. its weights)."""
        base = Refiner.actions["refine"]
        return Action(base.method, base.params, (*base.inputs, *inputs), base.outputs)

    def open(self, folder: Path, config: ConfigT, device: str | None = None) -> FrameFilter:
        """Load the refiner for frames on ``device`` ('cpu', 'cuda', 'cuda:1'; None: where its config says);
        ``folder`` holds what ``run`` wrote (the run folder, or during ``run`` its output folder)."""
        raise NotImplementedError

    def refine_file(self, ctx: StageContext[ConfigT], refine: FrameFilter, frames: str, output: Path,
                    audio: Path | None = None, alpha: str | None = None) -> int:
        """Stream ``frames`` with ``alpha`` (run-relative; by default the alpha beside it) through ``refine`` into
        ``output``, muxing ``audio`` (an .mp4 output); returns the frame count."""
        from .frames import VideoWriter, refine_stream

        with ctx.progress.task(f"{self.kind} '{self.name}': {Path(frames).name}", unit="frame") as task, \
                VideoWriter(output, ctx.dataset.fps, audio=audio) as writer:
            return refine_stream(refine, ctx.input(frames), ctx.input(alpha or alpha_path(frames)), writer,
                                 self.batch, task)

    def refine(self, ctx: StageContext[ConfigT]) -> StageReport:
        params = ctx.params
        started = time.monotonic()
        n = self.refine_file(ctx, self.open(ctx.root, ctx.config), params.frames, ctx.output(params.output),
                             ctx.input(params.audio) if params.audio else None, params.alpha)
        return StageReport(metrics={"frames": n, "seconds": round(time.monotonic() - started, 2)})


KIND_CLASSES: dict[StageKind, type[Stage[Any]]] = {
    c.kind: c for c in (FaceTracker, AudioEncoder, AUExtractor, TeethSegmenter, Trainer, Refiner)
}
