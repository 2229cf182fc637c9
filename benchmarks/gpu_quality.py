"""Held-out quality of trainer settings, several trainings side by side on one or more GPUs (run by hand;
results in docs/benchmarks.md).

    python -m benchmarks.gpu_quality RUN[,RUN...] OUT NAME:key=value,key=value [NAME:...] [--speech FOLDER]

RUN is a prepared run folder (on a GPU box without mediapipe: unpacked by ``tools/gpu/pack.py``). Builds
gsplat once, then trains every variant in its own process at the same time with the trainer's own ``train``
(each into its own folder under OUT), spread round-robin over the visible GPUs (one GPU has room for several
4 GB trainings, but they share its compute), and writes OUT/<NAME>.json with the stage's metrics (held-out
PSNR/SSIM under each protocol) and the wall time. Name repeats of one setting with different seeds
``<setting>-s<seed>`` (e.g. ``base-s0:seed=0 base-s1:seed=1``): the summary printed at the end gives each
setting's mean and spread, since one run cannot tell a 0.5 dB gain from run-to-run noise.

With several runs (comma-separated), every variant trains on every run, named ``<run folder>-<NAME>``, all at
once over the GPUs.

``--speech FOLDER`` (relative to RUN, holding ``aud.wav`` and the run's encoder's features of it, e.g. put there
by ``tools/gpu/carry.py --speech``): each trained avatar also says that speech with the trainer's own render,
into ``OUT/<NAME>-stage/says.mp4`` (``silence: model``) and ``says-<setting>.mp4`` (each other ``silence``
setting), for ``benchmarks.lipsync`` to score here (a GPU box has no mediapipe); and renders its own training
frames around the shut frame the pauses borrow (``avatar/train-<first>-<last>.mp4``,
:func:`benchmarks.common.render_training_stretch`): whether it renders a shut mouth where it was trained on one.

Each trained avatar's ``deformer_inputs`` (:mod:`benchmarks.deformer_inputs`): how much its mouth follows the
audio, the pose and the eye inputs.

Each trained avatar's held-out frames are also evaluated with the other ``silence`` settings (the trainer's
own uses its config's, ``close`` by default: the clip's pauses take a shut frame's inputs), into
``OUT/<NAME>-stage/silence-<other>/avatar/val.mp4`` and the result's ``held_out_silence_<other>``: the same model
with its pauses closed in each way and not.

``--slim``: leave in OUT only what a device call brings back (at most 8 files): ``results.json`` with every
variant's result and each variant's videos (``OUT/<NAME>-stage/avatar/val.mp4``, ``says*.mp4``). Checkpoints
always go to a temporary folder of each training's own, removed when it ends.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import evaluate_loaded, load_saved, render_training_stretch, trainer_context
from benchmarks.deformer_inputs import input_shares

#: every ``silence`` setting, each avatar's held-out frames and speech rendered with each
SILENCE = ("model", "close", "close-audio", "close-mouth")
#: of the held-out metrics evaluated again with the other ``silence`` settings, those worth a line in the result
HELD_OUT_KEYS = ("silence", "psnr", "psnr_gt_imgs", "ssim", "mouth_corr", "mouth_bias_pct", "lmd", "av_offset_frames",
                 "silent_frames", "silent_closed")


def parse(spec: str) -> tuple[str, dict]:
    import yaml

    name, _, body = spec.partition(":")
    overrides = {}
    for item in filter(None, body.split(",")):
        key, _, value = item.partition("=")
        overrides[key] = yaml.safe_load(value)
    return name, overrides


def train_variant(run: Path, name: str, overrides: dict, out: Path, workers: int, gpu: int | None = None,
                  speech: str | None = None) -> None:
    import os

    if gpu is not None:  # before torch initialises CUDA in this process
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
    import torch
    from being_trainer_gaussian_avatar import AvatarConfig
    from being_trainer_gaussian_avatar.train import train

    cfg = AvatarConfig(**{"num_workers": workers, "tensorboard": False, "log_every": 500, **overrides})
    # checkpoints never leave the box (a device call brings back at most 8 files); each training has a folder of its
    # own for them, removed when it is done: a training never resumes another's checkpoint
    with tempfile.TemporaryDirectory(prefix=f"gpu_quality-{name}-") as state:
        ctx = trainer_context(run, out / f"{name}-stage", cfg, Path(state))
        t = time.perf_counter()
        metrics = train(ctx, cfg)
        metrics.pop("history", None)
        result = {"variant": name, "overrides": overrides, "wall_seconds": round(time.perf_counter() - t, 1),
                  "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu", **metrics}
        av, data, _ = load_saved(ctx, ctx.out / "avatar" / "model.pt")  # once, for everything below but `say`
        result["deformer_inputs"] = input_shares(av, data)  # does its mouth follow the audio or the pose?
        for other in SILENCE:
            if other != cfg.silence:
                again = trainer_context(run, ctx.out / f"silence-{other}", cfg, Path(state))
                held = evaluate_loaded(again, av, data, other)
                result[f"held_out_silence_{other}"] = {k: v for k, v in held.items() if k in HELD_OUT_KEYS}
        if speech:
            result["training_stretch"] = render_training_stretch(ctx, av, data).name
        del av, data
        if speech:
            result["render"] = {mode: say(run, speech, ctx, mode) for mode in SILENCE}
    (out / f"{name}.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result), flush=True)


def say(run: Path, speech: str, trained, silence: str) -> dict:
    """Render the avatar that ``trained`` (a trainer context) wrote, saying ``run/speech/aud.wav`` with the
    ``silence`` setting, into ``says.mp4`` (``says-close.mp4``) beside it, with the trainer's own render on a view
    of the run whose ``avatar/`` is that one."""
    import numpy as np
    from being_trainer_gaussian_avatar.render import render

    from being_core import RenderParams

    features = trained.stage_info("audio_encoder")["file"]
    with tempfile.TemporaryDirectory() as tmp:
        view = Path(tmp)
        for entry in run.iterdir():
            if entry.name != "avatar":
                (view / entry.name).symlink_to(entry)
        (view / "avatar").symlink_to(trained.out / "avatar")
        n = len(np.load(run / speech / features, mmap_mode="r"))
        output = "says.mp4" if silence == "model" else f"says-{silence}.mp4"
        params = RenderParams(audio=f"{speech}/aud.wav", features=f"{speech}/{features}", n_frames=n, output=output)
        cfg = trained.config.model_copy(update={"silence": silence})
        return render(dataclasses.replace(trained, root=view, action="render", params=params), cfg)


def main() -> None:
    from benchmarks.gpu_trainer import compare_rasterisers

    args = sys.argv[1:]
    speech = None
    slim = "--slim" in args
    if slim:
        args.remove("--slim")
    if "--speech" in args:
        at = args.index("--speech")
        speech = args[at + 1]
        del args[at:at + 2]
    out = Path(args[1])
    out.mkdir(parents=True, exist_ok=True)
    jobs = trainings([Path(r).resolve() for r in args[0].split(",")], [parse(s) for s in args[2:]])
    compare_rasterisers()  # builds gsplat's extension once, before the trainings start
    if len(jobs) == 1:
        train_variant(*jobs[0], out, 12, speech=speech)
    else:
        import torch

        gpus = max(1, torch.cuda.device_count())
        ctx = mp.get_context("spawn")
        procs = [ctx.Process(target=train_variant,
                             args=(run, name, ov, out, max(2, 14 * gpus // len(jobs)), k % gpus, speech))
                 for k, (run, name, ov) in enumerate(jobs)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
    summarise(out, [name for _, name, _ in jobs])
    if slim:
        slim_down(out, [name for _, name, _ in jobs])


def slim_down(out: Path, names: list[str]) -> None:
    """What a device call can bring back (8 files): every variant's result in ``results.json``, and of its
    stage folder only the videos (``avatar/val.mp4``, the ``says*.mp4``) for ``benchmarks.lipsync returned``."""
    results = {}
    for name in names:
        path = out / f"{name}.json"
        if path.is_file():
            results[name] = json.loads(path.read_text())
            path.unlink()
        for kept in (out / f"{name}-stage").rglob("*"):
            if kept.is_file() and kept.suffix != ".mp4":
                kept.unlink()
    (out / "results.json").write_text(json.dumps(results, indent=1))


def trainings(runs: list[Path], variants: list[tuple[str, dict]]) -> list[tuple[Path, str, dict]]:
    """``(run, name, overrides)`` for every variant on every run; with several runs the name starts with the
    run folder's name."""
    if len(runs) == 1:
        return [(runs[0], name, ov) for name, ov in variants]
    return [(run, f"{run.name}-{name}", ov) for run in runs for name, ov in variants]


def summarise(out: Path, names: list[str]) -> None:
    """Mean and spread of each setting over its seeds (variants named ``<setting>-s<seed>``)."""
    import re
    import statistics

    groups: dict[str, list[dict]] = {}
    for name in names:
        path = out / f"{name}.json"
        if path.is_file():
            groups.setdefault(re.sub(r"-s\d+$", "", name), []).append(json.loads(path.read_text()))
    keys = ("psnr", "psnr_full_frame", "psnr_gt_imgs", "ssim", "lpips", "lmd")
    print("setting | runs | " + " | ".join(keys))
    for setting, runs in groups.items():
        cells = []
        for key in keys:
            vals = [r[key] for r in runs if r.get(key) is not None]
            cells.append("-" if not vals else f"{statistics.mean(vals):.3f}" +
                         (f" ± {statistics.stdev(vals):.3f}" if len(vals) > 1 else ""))
        print(f"{setting} | {len(runs)} | " + " | ".join(cells), flush=True)


if __name__ == "__main__":
    main()
