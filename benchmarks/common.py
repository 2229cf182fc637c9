"""What several benchmarks share: printed progress, timing, and a trainer's view of a prepared run folder."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from being_core import DatasetFacts, StageContext
from being_core.audio import AudioFeatures
from being_core.progress import Reporter


class PrintReporter(Reporter):
    """Progress as a few printed, time-stamped lines (a GPU box has no terminal)."""

    def on_note(self, task_id: int, text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def timed(fn: Callable[[], Any], n: int, warmup: int = 3) -> float:
    """Seconds per call of ``fn``, after ``warmup`` calls (CUDA work synchronised)."""
    import torch

    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    sync()
    return (time.perf_counter() - start) / n


def run_facts(run: Path) -> tuple[DatasetFacts, dict[str, Any]]:
    """A prepared run's dataset facts and its audio encoder's info, from ``being.json``."""
    manifest = json.loads((run / "being.json").read_text())
    return DatasetFacts.model_validate(manifest["dataset"]), manifest["stages"]["audio_encoder"]["info"]


def trainer_context(run: Path, out: Path, config: Any, state: Path) -> StageContext:
    """The context the core would give a trainer on ``run``, writing into ``out``, checkpoints in ``state``."""
    facts, audio = run_facts(run)
    out.mkdir(parents=True, exist_ok=True)
    state.mkdir(parents=True, exist_ok=True)
    return StageContext(root=run, out=out, config=config, dataset=facts, progress=PrintReporter(), state=state,
                        upstream={"audio_encoder": audio})


def run_data(run: Path, resolution: int | None) -> Any:
    """The trainer's view of a prepared run (``RunData``), as a trainer stage on it would see it."""
    from being_trainer_gaussian_avatar.data import RunData

    facts, audio = run_facts(run)
    return RunData(run, facts, AudioFeatures.from_info(audio), resolution)


def load_saved(ctx: StageContext, model_path: Path, **settings: Any) -> tuple[Any, Any, Any]:
    """``(avatar, data, cfg)``: the avatar saved at ``model_path`` on the run of the trainer context ``ctx``, with
    its training config but ``settings`` (e.g. ``device``, ``silence``); the features smoothed as its training
    smoothed them."""
    from being_trainer_gaussian_avatar import AvatarConfig
    from being_trainer_gaussian_avatar.avatar import Avatar
    from being_trainer_gaussian_avatar.data import RunData, load_tensors, pick_device, smooth_audio

    model = load_tensors(model_path, str(model_path))
    cfg = AvatarConfig(**{**model["config"], **settings})
    data = RunData.from_context(ctx, model["width"])
    data.audio = smooth_audio(data.audio, cfg.audio_smooth)
    av = Avatar(data, cfg, pick_device(cfg.device))
    av.load(model["model"])
    return av, data, cfg


def evaluate_saved(ctx: StageContext, model_path: Path, **settings: Any) -> dict:
    """The trainer's own held-out evaluation (``evaluate``) of the avatar saved at ``model_path`` (its val.mp4
    into ``ctx.out``; :func:`load_saved`)."""
    av, data, cfg = load_saved(ctx, model_path, **settings)
    return evaluate_loaded(ctx, av, data, cfg.silence)


def evaluate_loaded(ctx: StageContext, av: Any, data: Any, silence: str) -> dict:
    """:func:`evaluate_saved` of an avatar already loaded, its pauses rendered with ``silence``."""
    from being_trainer_gaussian_avatar.evaluate import evaluate

    return evaluate(ctx, av, data, silence=silence) | {"backend": av.raster.__name__}


#: how many training frames :func:`render_training_stretch` renders
TRAINING_STRETCH = 250


def shut_or_middle(data: Any) -> int:
    """The training frame ``silence: close`` borrows for the pauses (its mouth shut in silence), or the middle
    training frame when the clip's mouth never shuts: where the benchmarks look for the mouth."""
    import numpy as np
    from being_trainer_gaussian_avatar.render import shut_reference

    ref = shut_reference(data)
    train = np.asarray(data.train_ids)
    return ref.frame if ref is not None else int(train[len(train) // 2])


def render_training_stretch(ctx: StageContext, av: Any, data: Any, frames: int = TRAINING_STRETCH) -> Path:
    """Avatar ``av`` (:func:`load_saved`, with its ``data``) rendering up to ``frames`` consecutive training frames
    with their own inputs, around :func:`shut_or_middle` within its stretch of consecutive training frames, beside
    the real frames, into ``ctx.out/avatar/train-<first>-<last>.mp4``: whether the avatar renders its own training
    frames' mouths, the shut one among them (``benchmarks.lipsync``)."""
    import numpy as np
    import torch
    from being_trainer_gaussian_avatar.evaluate import targets
    from being_trainer_gaussian_avatar.render import u8

    from being_core.frames import VideoWriter

    train = np.asarray(data.train_ids)
    centre = shut_or_middle(data)
    runs = np.split(train, np.flatnonzero(np.diff(train) != 1) + 1)  # the training frames' consecutive stretches
    run = next(r for r in runs if r[0] <= centre <= r[-1])
    at = int(np.searchsorted(run, centre))
    lo = max(0, min(at - frames // 2, len(run) - frames))
    ids = run[lo:lo + frames]
    path = ctx.out / "avatar" / f"train-{ids[0]}-{ids[-1]}.mp4"
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), VideoWriter(path, data.fps) as video:
        for chunk in np.array_split(ids, max(1, len(ids) // 8)):
            image, _, bg = targets(data, chunk, av.device, None)
            rgb = av.render(torch.as_tensor(chunk), bg, deform=True)[0]
            video.write(np.concatenate([u8(rgb), u8(image)], 2))
    return path
