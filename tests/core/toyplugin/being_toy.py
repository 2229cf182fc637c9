"""Toy implementations of every kind, and a third-party runner, for the core tests.

They write small real files (numpy arrays, text) in milliseconds, so caching, resuming, runners, contracts
and the CLI are tested without torch, mediapipe or real clips. The folder holding this module also holds
its ``being_toy-0.1.0.dist-info``: put the folder on ``sys.path`` (or PYTHONPATH) and the ``being`` entry
point makes it an installed plugin like any other.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import numpy as np
from pydantic import Field

from being_core import (
    AudioEncoder,
    Command,
    FaceTracker,
    Runner,
    RunnerOptions,
    StageConfig,
    StageContext,
    StageReport,
    TeethSegmenter,
    Trainer,
    hookimpl,
)
from being_core.execute import execute


class ToyConfig(StageConfig):
    value: float = Field(0.0, description="Written into the outputs, so a config change changes them.")
    fail: bool = Field(False, description="Raise after writing one file.")
    undeclared: bool = Field(False, description="Also write a file the class does not declare.")
    pause: float = Field(0.0, ge=0, description="Seconds the trainer's render waits before writing (to interrupt it).")
    face: tuple[float, float, float, float] | None = Field(
        (1 / 3, 1 / 4, 2 / 3, 3 / 4), description="Where locate 'finds' the face, as shares of the frame; null: none.")


def _runs_file(ctx: StageContext) -> Path:
    return Path(os.environ.get("BEING_TOY_RUNS", str(ctx.root.parent / "toy-runs.jsonl")))


def count_run(ctx: StageContext, name: str) -> None:
    """Append one line per run to a file beside the run folder (counts runs across processes)."""
    with open(_runs_file(ctx), "a", encoding="utf-8") as f:
        f.write(json.dumps({"stage": name, "pid": os.getpid(), "thread": threading.current_thread().name}) + "\n")


class ToyTracker(FaceTracker[ToyConfig]):
    """Writes only what every face tracker promises: landmarks, confidence and .lms."""

    name = "toy"
    version = "1.0.0"
    actions = {"locate": FaceTracker.locate_action}

    def locate(self, ctx: StageContext[ToyConfig]) -> StageReport:
        """Reports ``config.face`` (shares of each sampled frame's size) as the face box."""
        from being_core.ingest import _jpeg_size

        boxes = []
        for rel in ctx.params.frames:
            width, height = _jpeg_size(ctx.input(rel).read_bytes(), ctx.input(rel))
            f = ctx.config.face
            boxes.append(None if f is None else [f[0] * width, f[1] * height, f[2] * width, f[3] * height])
        ctx.output("crop/faces.json").write_text(json.dumps({"boxes": boxes}))
        return StageReport(metrics={"frames": len(boxes)})

    def run(self, ctx: StageContext[ToyConfig]) -> StageReport:
        count_run(ctx, "face_tracker")
        n = ctx.dataset.n_frames
        if ctx.config.fail:
            raise ValueError(f"no face found in any of the {n} frames of ori_imgs/")
        np.save(ctx.output("face/landmarks.npy"), np.full((n, 5, 3), ctx.config.value, np.float32))
        np.save(ctx.output("face/confidence.npy"), np.ones(n, np.float32))
        for i in range(n):
            np.savetxt(ctx.output(f"ori_imgs/{i}.lms"), np.zeros((68, 2)))
        return StageReport(metrics={"frames": n}, info={"landmarks": 5})


class ToyBlindTracker(ToyTracker):
    """A face tracker without the ``locate`` action (ingest.crop: face cannot use it)."""

    name = "toy-blind"
    actions = {}


class ToyFullTracker(ToyTracker):
    """Also writes the reference layout the toy trainer needs, and the split files from the dataset facts."""

    name = "toy-full"
    outputs = (*ToyTracker.outputs, "track_params.json", "transforms_train.json", "transforms_val.json")
    provides = ("dataset:split",)

    def run(self, ctx: StageContext[ToyConfig]) -> StageReport:
        report = super().run(ctx)
        ctx.output("track_params.json").write_text(json.dumps({"focal": 1.0}))
        for name, ids in (("train", ctx.dataset.train_ids), ("val", ctx.dataset.val_ids)):
            ctx.output(f"transforms_{name}.json").write_text(json.dumps({"frames": ids}))
        return report


class ToyEncoder(AudioEncoder[ToyConfig]):
    """Audio 'features': the wav's RMS per frame."""

    name = "toy"
    version = "1.0.0"
    outputs = ("aud_toy.npy",)

    def run(self, ctx: StageContext[ToyConfig]) -> StageReport:
        count_run(ctx, "audio_encoder")
        from being_core.audio import read_wav

        audio = read_wav(ctx.input("aud.wav"))
        n = ctx.dataset.n_frames
        chunks = np.array_split(audio, n)
        feats = np.array([[[float(np.sqrt(np.mean(c ** 2))) + ctx.config.value]] for c in chunks], np.float32)
        np.save(ctx.output("aud_toy.npy"), feats)
        return StageReport(info={"encoder": "toy", "file": "aud_toy.npy", "dim": 1, "window": 1, "rate": 25.0,
                                 "source_rate": 16000})


class ToyTeeth(TeethSegmenter[ToyConfig]):
    """Empty masks; can fail or write an undeclared file on request."""

    name = "toy"
    version = "1.0.0"

    def run(self, ctx: StageContext[ToyConfig]) -> StageReport:
        count_run(ctx, "teeth_segmenter")
        for i in range(ctx.dataset.n_frames):
            np.save(ctx.output(f"teeth_mask/{i}.npy"), np.full((4, 4), ctx.config.value > 0))
            if ctx.config.fail:
                raise RuntimeError("out of teeth")
        if ctx.config.undeclared:
            ctx.output("notes.txt").write_text("not declared")
        return StageReport(metrics={"masks": ctx.dataset.n_frames})


class ToyTrainer(Trainer[ToyConfig]):
    """'Trains' by averaging the audio features; renders by writing the features it was given."""

    name = "toy"
    version = "1.0.0"
    inputs = ("face/landmarks.npy", "track_params.json", "aud_*.npy")
    outputs = ("avatar/model.json", "avatar/val.mp4")
    requires = ("dataset:split",)
    actions = {"render": Trainer.render_action(inputs=("avatar/model.json",))}
    action_settings = {"render": ("pause",)}
    headline_metrics = ("val_frames", "score")

    def run(self, ctx: StageContext[ToyConfig]) -> StageReport:
        count_run(ctx, "trainer")
        info = ctx.stage_info("audio_encoder")
        feats = np.load(ctx.input(info["file"]))
        ctx.output("avatar/model.json").write_text(json.dumps({"mean": float(feats.mean()), "dim": info["dim"]}))
        ctx.output("avatar/val.mp4").write_bytes(b"toy video")
        return StageReport(metrics={"val_frames": len(ctx.dataset.val_ids), "score": 1.5},
                           info={"train_frames": len(ctx.dataset.train_ids)})

    def render(self, ctx: StageContext[ToyConfig]) -> StageReport:
        import time

        time.sleep(ctx.config.pause)
        feats = np.load(ctx.input(ctx.params.features))
        ctx.output(ctx.params.output).write_bytes(feats.tobytes())
        return StageReport(metrics={"frames": ctx.params.n_frames})


class ThreadOptions(RunnerOptions):
    thread_name: str = Field("toy-worker", description="Name of the worker thread.")


class ThreadRunner(Runner[ThreadOptions]):
    """A third-party runner: runs the stage in a named worker thread of this process."""

    name = "toy-thread"
    Options = ThreadOptions

    def launch(self, impl, request, root, options, progress):
        errors: list[BaseException] = []

        def work() -> None:
            try:
                execute(request, root, progress, impl.cls)
            except BaseException as exc:  # carried back to the caller's thread
                errors.append(exc)

        worker = threading.Thread(target=work, name=options.thread_name)
        worker.start()
        worker.join(options.timeout_s)
        if errors:
            raise errors[0]


class ToyCommand(Command):
    """``being toy greet --to NAME``: a plugin's command with a nested action."""

    name = "toy"
    help = "the toy plugin's command"

    def configure(self, parser, parents):
        actions = parser.add_subparsers(dest="toy_action", required=True)
        greet = actions.add_parser("greet", parents=parents, help="print a greeting")
        greet.add_argument("--to", default="world")

    def run(self, args, ctx):
        if not ctx.quiet:
            ctx.console.out(f"hello {args.to}", highlight=False)
        return 0


@hookimpl
def being_register_commands(commands):
    commands.add(ToyCommand())


@hookimpl
def being_register_runners(registry):
    registry.add_runner(ThreadRunner)


@hookimpl
def being_register_stages(registry):
    for cls in (ToyTracker, ToyBlindTracker, ToyFullTracker, ToyEncoder, ToyTeeth, ToyTrainer):
        registry.add(cls)
