"""Held-out lip sync that a short clip can vouch for: the training repeated with each stretch of the clip held out
in turn (folds over time), the mouth scored over all the held-out stretches at once (run by hand; results in
docs/benchmarks.md).

    python -m benchmarks.folds make RUN OUT [--folds K]       # anywhere (numpy, torch): fold views OUT/<run>-f<k>
    python -m benchmarks.gpu_quality OUT/<run>-f0,OUT/<run>-f1,... RESULTS base-s0:seed=0 --slim   # a GPU box
    python -m benchmarks.folds score RUN RESULTS [--json OUT.json]   # here (mediapipe)
    python -m benchmarks.folds baseline RUN [--leads 0,4,8]   # here: the audio baseline alone, windows moved later

The trainer holds out the last eleventh of a clip: 16-19 frames of the 7-8 s shared clips, over which a
correlation is known to about ±0.2, so three seeds on them cannot tell whether an avatar's mouth follows the
real one at 0.5 or 0.7. Fold ``k`` holds out the stretch of that length ``k`` stretches before the trainer's own
(fold 0 is the trainer's split); together the folds hold out nearly the whole clip, each trained on as many frames
as the real split trains on.

A fold view is a run folder whose frames are ``RUN``'s in another order: the frames outside its stretch first, in
order, then the stretch, so that the trainer's split (the last frames) holds that stretch out and nothing in the
trainer changes. Per-frame files are links to ``RUN``'s under new numbers; per-frame arrays (audio features,
landmarks, the head model's fit, the AU rows, the cameras of ``transforms_*.json``) are reordered copies; the
speech (``aud.wav``) is cut at the frames' edges (``i / fps``; sound that ends before the last frame is first made
up to it with silence) and put back in the same order, so each frame keeps the sound under it, and the held-out
stretch's sound stays whole. The seams between reordered pieces only touch what
spans frames in training (``audio_smooth``, off by default; the clip's own sync check).

``score`` finds each fold's ``<run>-f<k>-<variant>-stage/avatar/val.mp4`` in RESULTS and scores each variant's
mouth over every fold it has, with the trainer's own measures, the folds kept apart (no lag pairs frames of two
stretches). Beside it, the audio baseline of ``benchmarks.lipsync`` over the same stretches (a ridge fit on the
frames each fold trains on): what the clip's audio alone predicts of its mouth there.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import re
import shutil
import wave
from pathlib import Path

import numpy as np

#: outputs of a trained run and the core's own state: never part of a fold's view
SKIPPED = {"avatar", "renders", "refiner"}


def stretches(n_frames: int, val_start: int, folds: int | None = None) -> list[tuple[int, int]]:
    """``[(start, end)]`` of each fold's held-out frames: the trainer's split first, then every stretch as long
    before it, as many as fit (at most ``folds``)."""
    length = n_frames - val_start
    if length <= 0:
        raise ValueError("the run holds out no frames (val_start = n_frames)")
    out = []
    start = val_start
    while start >= 0 and (folds is None or len(out) < folds):
        out.append((start, start + length))
        start -= length
    return out


def order(n_frames: int, stretch: tuple[int, int]) -> np.ndarray:
    """The fold view's frame ``j`` is frame ``order[j]`` of the run: the frames outside ``stretch``, then it."""
    start, end = stretch
    return np.r_[0:start, end:n_frames, start:end]


def make_view(run: Path, dest: Path, perm: np.ndarray) -> None:
    """Write the fold view of ``run`` whose frame ``j`` is ``run``'s frame ``perm[j]`` into ``dest`` (which must not
    exist; built under a temporary name, then renamed)."""
    manifest = json.loads((run / "being.json").read_text())
    n, fps = manifest["dataset"]["n_frames"], manifest["dataset"]["fps"]
    if len(perm) != n or sorted(perm.tolist()) != list(range(n)):
        raise ValueError(f"the order must name each of the {n} frames of {run} once")
    if dest.exists():
        raise FileExistsError(f"{dest} exists; fold views are written into new folders only")
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for entry in sorted(run.iterdir()):
        if entry.name.startswith(".") or entry.name in SKIPPED:
            continue
        target = tmp / entry.name
        if entry.is_dir():
            _view_folder(entry, target, perm, n)
        elif entry.suffix == ".npy":
            _save_npy(entry, target, perm, n)
        elif entry.name == "track_params.pt":
            _reorder_track(entry, target, perm, n)
        elif entry.name == "aud.wav":
            _reorder_wav(entry, target, perm, fps)
        elif entry.name == "au.csv":
            _reorder_csv(entry, target, perm, fps)
        elif re.fullmatch(r"transforms_(train|val)\.json", entry.name):
            continue  # both written together below
        else:
            target.symlink_to(entry.resolve())
    if (run / "transforms_train.json").is_file():
        _reorder_transforms(run, tmp, perm, manifest["dataset"]["val_start"])
    os.replace(tmp, dest)


def _view_folder(folder: Path, target: Path, perm: np.ndarray, n: int) -> None:
    """A folder of the run: per-frame files (``<i>.<ext>``, as in ``ori_imgs``) linked under their new numbers,
    per-frame arrays (``face/landmarks.npy``) reordered, anything else linked as it is."""
    target.mkdir()
    new_number = np.empty(n, np.int64)
    new_number[perm] = np.arange(n)
    for f in sorted(folder.iterdir()):
        stem, _, ext = f.name.partition(".")
        if f.is_file() and stem.isdigit() and int(stem) < n:
            (target / f"{new_number[int(stem)]}.{ext}").symlink_to(f.resolve())
        elif f.is_file() and f.suffix == ".npy":
            _save_npy(f, target / f.name, perm, n)
        else:
            (target / f.name).symlink_to(f.resolve())


def _save_npy(path: Path, target: Path, perm: np.ndarray, n: int) -> None:
    array = np.load(path, allow_pickle=False)
    if array.ndim and len(array) == n:
        np.save(target, array[perm])
    else:
        target.symlink_to(path.resolve())


def _reorder_track(path: Path, target: Path, perm: np.ndarray, n: int) -> None:
    import torch

    track = torch.load(path, map_location="cpu", weights_only=True)
    index = torch.as_tensor(perm)
    torch.save({k: v[index] if isinstance(v, torch.Tensor) and v.ndim and len(v) == n else v
                for k, v in track.items()}, target)


def _reorder_wav(path: Path, target: Path, perm: np.ndarray, fps: float) -> None:
    with wave.open(str(path), "rb") as w:
        params, data = w.getparams(), w.readframes(w.getnframes())
    size = params.sampwidth * params.nchannels
    edges = np.round(np.arange(len(perm) + 1) * params.framerate / fps).astype(np.int64)
    data += bytes(max(0, edges[-1] * size - len(data)))  # sound that ends before the last frame: silence to its end
    pieces = [data[edges[i] * size:edges[i + 1] * size] for i in perm]
    with wave.open(str(target), "wb") as w:
        w.setparams(params)
        w.writeframes(b"".join(pieces) + data[edges[-1] * size:])


def _reorder_csv(path: Path, target: Path, perm: np.ndarray, fps: float) -> None:
    with open(path, newline="") as f:
        rows = list(csv.reader(f, skipinitialspace=True))
    header, body = rows[0], rows[1:]
    if len(body) != len(perm):  # not one row per frame: the trainer does not read it either
        target.symlink_to(path.resolve())
        return
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    for j, i in enumerate(perm):
        row = list(body[i])
        if "frame" in header:
            row[header.index("frame")] = str(j + 1)
        if "timestamp" in header:
            row[header.index("timestamp")] = f"{j / fps:.3f}"
        writer.writerow(row)
    target.write_text(out.getvalue())


def _reorder_transforms(run: Path, tmp: Path, perm: np.ndarray, val_start: int) -> None:
    train = json.loads((run / "transforms_train.json").read_text())
    val = json.loads((run / "transforms_val.json").read_text())
    frames = {f["img_id"]: f for f in [*train["frames"], *val["frames"]]}
    moved = [{**frames[int(i)], "img_id": j, "aud_id": j} for j, i in enumerate(perm)]
    for name, part, chosen in (("transforms_train.json", train, moved[:val_start]),
                               ("transforms_val.json", val, moved[val_start:])):
        (tmp / name).write_text(json.dumps({**part, "frames": chosen}, indent=2))


def make(run: Path, out: Path, folds: int | None = None) -> list[Path]:
    """The fold views of ``run`` in ``out`` (``<run>-f<k>``), the trainer's own split first."""
    facts = json.loads((run / "being.json").read_text())["dataset"]
    views = []
    for k, stretch in enumerate(stretches(facts["n_frames"], facts["val_start"], folds)):
        view = out / f"{run.name}-f{k}"
        make_view(run, view, order(facts["n_frames"], stretch))
        views.append(view)
    return views


#: bootstrap resamples of the folds behind ``mouth_corr_90``
RESAMPLES = 2000


def joined(parts: list[np.ndarray]) -> np.ndarray:
    """The folds' series one after another, apart: between two folds lie more frames without a face (NaN) than
    any lag spans, so no correlation at a lag pairs frames of two stretches."""
    from being_trainer_gaussian_avatar import lipsync

    gap = np.full((lipsync.MAX_LAG + 1, *parts[0].shape[1:]), np.nan)
    return np.concatenate([x for part in parts for x in (part, gap)])


def over_folds(folds: list[tuple[np.ndarray, np.ndarray]]) -> dict:
    """How the ``(predicted, real)`` mouth openings of every fold agree, scored over all folds at once:
    ``mouth_corr``; ``mouth_corr_90``, the 5th and 95th percentiles of it over folds drawn again with
    replacement (how far another set of stretches of such a clip could read); ``av_offset`` and
    ``av_offset_frames``; ``lag_corr``, the correlation at each lag (how clear the offset's peak is);
    ``fold_corr``, each fold's own correlation; and the closures (``shut_frames``, ``shut_closed``:
    :func:`~being_trainer_gaussian_avatar.lipsync.closures`)."""
    from being_trainer_gaussian_avatar import lipsync

    predicted, real = joined([p for p, _ in folds]), joined([t for _, t in folds])
    rng = np.random.default_rng(0)
    drawn = [lipsync.correlation(joined([folds[k][0] for k in pick]), joined([folds[k][1] for k in pick]))
             for pick in rng.integers(len(folds), size=(RESAMPLES, len(folds)))] if len(folds) >= 3 else []
    drawn = [r for r in drawn if r is not None]
    r = lipsync.correlation(predicted, real)
    fold_corr = [lipsync.correlation(p, t) for p, t in folds]
    return {"folds": len(folds), "frames": int(sum(len(p) for p, _ in folds)),
            "mouth_corr": None if r is None else round(r, 3),
            "mouth_corr_90": [round(float(np.percentile(drawn, q)), 3) for q in (5, 95)] if drawn else None,
            "av_offset": lipsync.best_lag(predicted, real), "av_offset_frames": lipsync.fine_lag(predicted, real),
            "lag_corr": {k: round(v, 3) for k, v in lipsync.lag_scores(predicted, real).items()},
            "fold_corr": [None if c is None else round(c, 3) for c in fold_corr], **lipsync.closures(predicted, real)}


def pooled(folds: list[tuple[np.ndarray, np.ndarray]]) -> dict:
    """An avatar's held-out mouth over every fold's ``(rendered, real)`` FaceMesh mouth points: :func:`over_folds`
    of their openings, with the trainer's bias and mouth LMD
    (:func:`~being_trainer_gaussian_avatar.lipsync.against_real`) over all the frames."""
    from being_trainer_gaussian_avatar import lipsync

    whole = lipsync.against_real(joined([r for r, _ in folds]), joined([t for _, t in folds]))
    scores = over_folds([(lipsync.opening(r), lipsync.opening(t)) for r, t in folds])
    return {**scores, "mouth_bias_pct": whole["mouth_bias_pct"], "lmd": whole["lmd"]}


def baseline(run: Path, spans: list[tuple[int, int]], leads: tuple[int, ...] = (0,)) -> list[dict]:
    """The audio baseline (:func:`benchmarks.lipsync.audio_baseline`) on each held-out stretch, fitted on the
    frames its fold trains on, scored as :func:`pooled` scores an avatar (:func:`over_folds`): one result per
    ``lead``, the run's windows moved that many features later (whole frames: frame ``i`` takes the window of a
    later frame, the last one repeated), to see what a window reaching further ahead (``mel``'s ``lead``) tells."""
    from benchmarks.lipsync import audio_and_mouth, audio_baseline

    facts, windows, real = audio_and_mouth(run)
    n = facts["n_frames"]
    manifest = json.loads((run / "being.json").read_text())
    per_frame = manifest["stages"]["audio_encoder"]["info"]["rate"] / facts["fps"]
    out = []
    for lead in leads:
        if lead % per_frame:
            raise ValueError(f"a lead of {lead} features is not a whole number of frames ({per_frame:g} features each)")
        moved = windows[np.minimum(np.arange(n) + int(lead // per_frame), n - 1)]
        out.append(over_folds([(audio_baseline(moved, real, np.r_[0:start, end:n], np.arange(start, end)),
                                real[start:end]) for start, end in spans]))
    return out


def score(run: Path, results: Path) -> list[dict]:
    """Every variant of ``run``'s folds found in ``results``, scored over its folds, then the audio baseline."""
    from being_trainer_gaussian_avatar import lipsync

    from benchmarks.lipsync import render_and_real

    facts = json.loads((run / "being.json").read_text())["dataset"]
    spans = stretches(facts["n_frames"], facts["val_start"])
    found: dict[str, dict[int, Path]] = {}
    for val in results.glob(f"{run.name}-f*-stage/avatar/val.mp4"):
        match = re.fullmatch(rf"{re.escape(run.name)}-f(\d+)-(.+)-stage", val.parents[1].name)
        if match:
            found.setdefault(match.group(2), {})[int(match.group(1))] = val
    if not found:
        raise FileNotFoundError(f"no {run.name}-f<k>-<variant>-stage/avatar/val.mp4 in {results}")
    rows = []
    for variant, videos in sorted(found.items()):
        folds = []
        for k in sorted(videos):
            rendered, real = render_and_real(videos[k], spans[0][1] - spans[0][0])
            folds.append((lipsync.mouth_points(rendered), lipsync.mouth_points(real)))
        rows.append({"what": f"{run.name} {variant}, folds {sorted(videos)}", **pooled(folds)})
    used = sorted({k for videos in found.values() for k in videos})
    rows.append({"what": f"{run.name} audio baseline, the same stretches", **baseline(run, [spans[k] for k in used])[0]})
    return rows


def score_baseline(run: Path, folds: int | None, leads: tuple[int, ...]) -> list[dict]:
    """The audio baseline alone over the folds' stretches (no training needed), for each window ``lead``."""
    facts = json.loads((run / "being.json").read_text())["dataset"]
    spans = stretches(facts["n_frames"], facts["val_start"], folds)
    return [{"what": f"{run.name} audio baseline, {len(spans)} stretches, windows {lead} features later", **row}
            for lead, row in zip(leads, baseline(run, spans, leads))]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.folds", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("make", help="write the fold views of a prepared run")
    p.add_argument("run", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--folds", type=int, default=None, help="at most this many (the trainer's split first)")
    p = sub.add_parser("score", help="score the folds' returned val.mp4 files (needs mediapipe)")
    p.add_argument("run", type=Path)
    p.add_argument("results", type=Path)
    p.add_argument("--json", type=Path, default=None)
    p = sub.add_parser("baseline", help="the audio baseline over every stretch, with windows moved later (mediapipe)")
    p.add_argument("run", type=Path)
    p.add_argument("--folds", type=int, default=10, help="at most this many stretches (the trainer's split first)")
    p.add_argument("--leads", default="0", help="comma-separated: features each window is moved later (whole frames)")
    p.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.what == "make":
        args.out.mkdir(parents=True, exist_ok=True)
        print(",".join(str(v) for v in make(args.run.resolve(), args.out.resolve(), args.folds)))
        return
    if args.what == "baseline":
        rows = score_baseline(args.run, args.folds, tuple(int(v) for v in args.leads.split(",")))
    else:
        rows = score(args.run, args.results)
    for row in rows:
        print(json.dumps(row))
    if args.json:
        from being_core.protocol import write_text_atomic

        write_text_atomic(args.json, json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
