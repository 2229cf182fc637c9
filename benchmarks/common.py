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


def evaluate_saved(ctx: StageContext, model_path: Path, **settings: Any) -> dict:
    """The trainer's own held-out evaluation (``evaluate``) of the avatar saved at ``model_path``, on the run of
    the trainer context ``ctx`` (its val.mp4 into ``ctx.out``), with its training config but ``settings`` (e.g.
    ``device``, ``silence``); the features smoothed as its training smoothed them."""
    from being_trainer_gaussian_avatar import AvatarConfig
    from being_trainer_gaussian_avatar.avatar import Avatar
    from being_trainer_gaussian_avatar.data import RunData, load_tensors, pick_device, smooth_audio
    from being_trainer_gaussian_avatar.evaluate import evaluate

    model = load_tensors(model_path, str(model_path))
    cfg = AvatarConfig(**{**model["config"], **settings})
    data = RunData.from_context(ctx, model["width"])
    data.audio = smooth_audio(data.audio, cfg.audio_smooth)
    av = Avatar(data, cfg, pick_device(cfg.device))
    av.load(model["model"])
    return evaluate(ctx, av, data, silence=cfg.silence) | {"backend": av.raster.__name__}
