"""Re-run the trainer's held-out evaluation on a saved avatar, here on the CPU (run by hand; results in
docs/benchmarks.md).

    python -m benchmarks.evaluate_model RUN MODEL.pt [MODEL.pt ...]

The GPU box has no mediapipe, so the trainings of ``gpu_quality.py`` report ``lmd`` as null. This loads each
``avatar/model.pt`` they bring back, renders the val split of the same prepared run with the reference
(pure-PyTorch) rasteriser and calls the trainer's own ``evaluate``: every metric again, now with LMD. Its
PSNR/SSIM also cross-check gsplat's numbers with the reference rasteriser on a whole trained model.
Writes ``<model folder>/metrics_cpu.json`` (and ``val_cpu.mp4``) beside each model, or under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from benchmarks.common import evaluate_saved, trainer_context


def evaluate_model(run: Path, model_path: Path, out: Path) -> dict:
    from being_trainer_gaussian_avatar import AvatarConfig

    with tempfile.TemporaryDirectory() as tmp:
        ctx = trainer_context(run, Path(tmp) / "out", AvatarConfig(), Path(tmp) / "state")
        started = time.perf_counter()
        metrics = evaluate_saved(ctx, model_path, device="cpu", frame_cache="off")
        metrics.update({"model": str(model_path), "seconds": round(time.perf_counter() - started, 1)})
        out.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ctx.output("avatar/val.mp4"), out / "val_cpu.mp4")
    (out / "metrics_cpu.json").write_text(json.dumps(metrics, indent=1))
    return metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="the prepared run the models were trained on")
    parser.add_argument("models", type=Path, nargs="+", help="avatar/model.pt files")
    parser.add_argument("--out", type=Path, help="write here (one sub-folder per model) instead of beside it")
    args = parser.parse_args()
    for k, model in enumerate(args.models):
        out = args.out / f"{k}-{model.parent.parent.name}" if args.out else model.parent
        print(json.dumps(evaluate_model(args.run, model, out)), flush=True)


if __name__ == "__main__":
    main()
