"""benchmarks.folds: fold views that the trainer reads as the run in another order, and pooled lip-sync scores."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from being_core.audio import SAMPLE_RATE, read_wav
from benchmarks.common import run_data
from benchmarks.folds import make, make_view, order, pooled, stretches


def test_the_folds_tile_the_clip_backwards_from_the_trainers_split():
    assert stretches(200, 181) == [(181, 200), (162, 181), (143, 162), (124, 143), (105, 124), (86, 105),
                                   (67, 86), (48, 67), (29, 48), (10, 29)]
    assert stretches(200, 181, folds=2) == [(181, 200), (162, 181)]
    assert order(10, (4, 7)).tolist() == [0, 1, 2, 3, 7, 8, 9, 4, 5, 6]
    assert order(10, (7, 10)).tolist() == list(range(10))  # fold 0 is the run as it is
    with pytest.raises(ValueError, match="holds out no frames"):
        stretches(50, 50)


def test_a_fold_view_is_the_run_in_another_order_for_the_trainer(prepared_face5, tmp_path):
    facts = json.loads((prepared_face5 / "being.json").read_text())["dataset"]
    n, val_start = facts["n_frames"], facts["val_start"]
    views = make(prepared_face5, tmp_path, folds=3)
    assert [v.name for v in views] == ["run-f0", "run-f1", "run-f2"]
    stretch = stretches(n, val_start)[2]
    perm = order(n, stretch)
    real, view = run_data(prepared_face5, 64), run_data(views[2], 64)
    assert view.val_ids == list(range(val_start, n))  # the trainer's split holds out fold 2's stretch ...
    assert perm[view.val_ids].tolist() == list(range(*stretch))
    index = torch.as_tensor(perm)
    for name in ("audio", "lips", "eye", "viewmats", "euler"):  # ... with its own inputs
        assert torch.equal(getattr(view, name), getattr(real, name)[index]), name
    for name in ("camera", "expression"):  # normalised by means over the frames, summed in another order
        assert torch.allclose(getattr(view, name).float(), getattr(real, name)[index].float(), atol=1e-4), name
    for j in (0, stretch[0], val_start, n - 1):
        for got, want in zip(view.pixels_u8(j), real.pixels_u8(int(perm[j]))):
            assert np.array_equal(got, want)
    assert np.array_equal(np.load(views[2] / "face" / "landmarks.npy"),
                          np.load(prepared_face5 / "face" / "landmarks.npy")[perm])
    # each frame keeps the sound under it; the held-out stretch's sound is whole
    edge = SAMPLE_RATE // 25
    moved, whole = read_wav(views[2] / "aud.wav"), read_wav(prepared_face5 / "aud.wav")
    assert len(moved) == max(len(whole), n * edge)  # this clip's sound ends 7 ms before its last frame
    assert np.array_equal(moved[val_start * edge:n * edge], whole[stretch[0] * edge:stretch[1] * edge])
    assert np.array_equal(moved[:edge], whole[:edge])
    cameras = json.loads((views[2] / "transforms_val.json").read_text())["frames"]
    every = {f["img_id"]: f for name in ("transforms_train.json", "transforms_val.json")
             for f in json.loads((prepared_face5 / name).read_text())["frames"]}
    assert [f["img_id"] for f in cameras] == list(range(val_start, n))
    assert [f["transform_matrix"] for f in cameras] == [every[i]["transform_matrix"] for i in range(*stretch)]
    # fold 0 is the run as it is
    first = run_data(views[0], 64)
    assert torch.equal(first.audio, real.audio) and torch.equal(first.expression, real.expression)


def test_a_view_is_written_whole_into_a_new_folder_only(prepared_face5, tmp_path):
    n = json.loads((prepared_face5 / "being.json").read_text())["dataset"]["n_frames"]
    with pytest.raises(ValueError, match=f"each of the {n} frames"):
        make_view(prepared_face5, tmp_path / "bad", np.zeros(n, np.int64))
    assert not (tmp_path / "bad").exists() and not list(tmp_path.iterdir())
    (tmp_path / "taken").mkdir()
    with pytest.raises(FileExistsError, match="taken exists"):
        make_view(prepared_face5, tmp_path / "taken", np.arange(n))


def mouths(opening: np.ndarray) -> np.ndarray:
    """FaceMesh mouth points ``[T, 20, 2]`` whose inner-lip gap over mouth width is ``opening``."""
    from being_trainer_gaussian_avatar import lipsync

    points = np.zeros((len(opening), len(lipsync.MOUTH), 2))
    points[:, lipsync.RIGHT, 0] = 1.0  # mouth width 1
    points[:, lipsync.LOWER, 1] = opening
    return points


def test_pooled_folds_read_a_shift_within_each_stretch_and_never_across_them():
    rng = np.random.default_rng(0)
    real = [0.08 + 0.04 * rng.standard_normal(20) for _ in range(6)]
    late = [np.r_[r[0], r[:-1]] for r in real]  # every rendered stretch does a frame later what its real one does
    result = pooled([(mouths(a), mouths(b)) for a, b in zip(late, real)])
    assert result["folds"] == 6 and result["frames"] == 120 and result["av_offset"] == 1
    same = pooled([(mouths(r), mouths(r)) for r in real])
    assert same["mouth_corr"] == 1.0 and same["av_offset"] == 0 and same["fold_corr"] == [1.0] * 6
    assert same["mouth_corr_90"] == [1.0, 1.0] and same["lag_corr"][0] == 1.0 and max(same["lag_corr"].values()) == 1.0
    # folds that disagree widen the interval around the pooled correlation
    noisy = [np.r_[r[:10], rng.permutation(r[10:])] if k % 2 else r for k, r in enumerate(real)]
    mixed = pooled([(mouths(a), mouths(b)) for a, b in zip(noisy, real)])
    low, high = mixed["mouth_corr_90"]
    assert low < mixed["mouth_corr"] < high <= 1.0 and high - low > 0.05
    # a stretch that ends as the next begins would read a lag if the folds were joined end to end
    ramp = [np.linspace(0.05, 0.15, 20) for _ in range(6)]
    assert pooled([(mouths(r), mouths(r)) for r in ramp])["av_offset"] == 0
    still = pooled([(mouths(np.full(20, 0.1)), mouths(r)) for r in real])
    assert still["mouth_corr"] == 0.0  # a mouth that never moves follows nothing
    # closures over every fold: the real mouth's closed frames, and the share the rendered one closes too
    from being_trainer_gaussian_avatar import lipsync

    closed = sum(int((np.abs(r) < lipsync.CLOSED).sum()) for r in real)
    assert same["shut_frames"] == still["shut_frames"] == closed > 0
    assert same["shut_closed"] == 1.0 and still["shut_closed"] == 0.0


def test_folds_trained_and_scored_over_every_stretch_at_once(prepared_face5, tmp_path):
    """Two folds trained (tiny, on the CPU) as ``benchmarks.gpu_quality`` trains them, then ``score``: each fold's
    val.mp4 holds its own stretch's real frames, and the mouth is scored over both stretches."""
    from being_trainer_gaussian_avatar import GaussianAvatar

    from benchmarks.folds import score
    from benchmarks.gpu_quality import train_variant
    from benchmarks.lipsync import frames_of

    views = make(prepared_face5, tmp_path / "views", folds=2)
    out = tmp_path / "results"
    out.mkdir()
    for view in views:
        train_variant(view, f"{view.name}-tiny", {**GaussianAvatar.test_config, "resolution": 256}, out, 0)
    facts = json.loads((prepared_face5 / "being.json").read_text())["dataset"]
    start, end = stretches(facts["n_frames"], facts["val_start"])[1]
    frames, _ = frames_of(out / "run-f1-tiny-stage" / "avatar" / "val.mp4")
    import cv2

    for j, frame in zip(range(start, end), frames):
        real = cv2.resize(cv2.cvtColor(cv2.imread(str(prepared_face5 / "ori_imgs" / f"{j}.jpg")), cv2.COLOR_BGR2RGB),
                          (256, 256), interpolation=cv2.INTER_AREA)
        assert np.abs(frame[:, 256:].astype(float) - real).mean() < 3  # fold 1's own stretch, as H.264 keeps it
    # each avatar's held-out frames evaluated again with the other silence setting: the same renders where the
    # stretch has no pause, other ones where it has
    from being_trainer_gaussian_avatar.evaluate import clip_pauses

    for view in views:
        result = json.loads((out / f"{view.name}-tiny.json").read_text())
        again = result["held_out_silence_model"]
        assert again["silence"] == "model" and result["silence"] == "close-mouth"
        for other in ("model", "close", "close-audio"):
            assert result[f"held_out_silence_{other}"]["silence"] == other
            assert (out / f"{view.name}-tiny-stage" / f"silence-{other}" / "avatar" / "val.mp4").stat().st_size > 0
        quiet = clip_pauses(view, facts["n_frames"], facts["fps"], edge=0)[facts["val_start"]:]
        assert (again["psnr"] == result["psnr"]) == (not quiet.any()), (quiet, again, result["psnr"])
    # an avatar's render of its own training frames around the pauses' shut frame, beside the real ones, scored
    from being_trainer_gaussian_avatar import AvatarConfig
    from being_trainer_gaussian_avatar.render import shut_reference

    from benchmarks.common import load_saved, render_training_stretch, run_data, trainer_context
    from benchmarks.lipsync import trained

    stage = out / f"{views[1].name}-tiny-stage"
    ctx = trainer_context(views[1], stage, AvatarConfig(**GaussianAvatar.test_config), tmp_path / "state")
    av, data, _ = load_saved(ctx, stage / "avatar" / "model.pt")
    video = render_training_stretch(ctx, av, data, frames=30)
    first, last = (int(x) for x in video.stem.split("-")[1:])
    view = run_data(views[1], 256)
    assert last - first == 29 and set(range(first, last + 1)) <= set(view.train_ids)
    assert first <= shut_reference(view).frame <= last
    frames, _ = frames_of(video)
    assert len(frames) == 30 and frames[0].shape == (256, 512, 3)
    for j, frame in zip(range(first, last + 1), frames):  # the real half: those training frames of the view
        real = cv2.resize(cv2.cvtColor(cv2.imread(str(views[1] / "ori_imgs" / f"{j}.jpg")), cv2.COLOR_BGR2RGB),
                          (256, 256), interpolation=cv2.INTER_AREA)
        assert np.abs(frame[:, 256:].astype(float) - real).mean() < 3
    row = trained(views[1], video, "f1")
    assert row["what"] == f"f1 (training frames {first}-{last})" and row["mouth_corr"] is not None
    rows = score(prepared_face5, out)
    assert [row["what"] for row in rows] == ["run tiny, folds [0, 1]", "run audio baseline, the same stretches"]
    tiny, base = rows
    assert tiny["folds"] == base["folds"] == 2 and tiny["frames"] == base["frames"] == 2 * (end - start)
    assert len(tiny["fold_corr"]) == 2 and tiny["mouth_corr"] is not None and np.isfinite(tiny["lmd"])
    assert -1 <= base["mouth_corr"] <= 1
    with pytest.raises(FileNotFoundError, match="no run-f1-f<k>-<variant>-stage/avatar/val.mp4 in"):
        score(views[1], out)  # a run that has no folds there


def test_the_audio_baseline_with_windows_moved_later(prepared_face5, monkeypatch):
    """A mouth that opens as the audio one frame later says: the baseline with windows 2 features (one frame)
    later predicts it, the centred one does not; a lead that is not whole frames is refused."""
    import benchmarks.lipsync
    from benchmarks.folds import score_baseline

    facts = json.loads((prepared_face5 / "being.json").read_text())["dataset"]
    n = facts["n_frames"]
    rng = np.random.default_rng(0)
    windows = rng.normal(size=(n, 4, 3)).astype(np.float32)
    opening = np.r_[windows[1:, :, 0].mean(1), windows[-1, :, 0].mean()]  # what the next frame's window says
    monkeypatch.setattr(benchmarks.lipsync, "audio_and_mouth", lambda run: (facts, windows, opening))
    centred, ahead = score_baseline(prepared_face5, 4, (0, 2))
    assert centred["what"] == "run audio baseline, 4 stretches, windows 0 features later"
    # (the ridge's shrinkage on ~110 frames keeps it from 1; the centred windows know nothing of it)
    assert ahead["folds"] == 4 and ahead["mouth_corr"] > 0.8 > centred["mouth_corr"] + 0.5, (centred, ahead)
    with pytest.raises(ValueError, match="a lead of 3 features is not a whole number of frames"):
        score_baseline(prepared_face5, 4, (3,))


def test_the_expression_proxy_learns_the_tracked_mouth_and_scores_folds(prepared_face5):
    """The deformer trained on the expression loss alone: untrained it leaves the lips where the mean head has
    them; trained, the lips it gives the training frames open as the tracked head model's do; scored over folds
    beside the tracked model and the audio baseline."""
    from benchmarks.common import run_data
    from benchmarks.expression_proxy import fit_and_predict, lip_vertices, opening, score

    data = run_data(prepared_face5, None)
    lips = lip_vertices(prepared_face5)
    tracked = opening((data.points[lips][None] + data.expression[:, lips].float()).numpy())
    ids = np.arange(100)
    assert np.ptp(fit_and_predict(data, lips, ids, ids, 0, 64, True)) == 0
    learnt = fit_and_predict(data, lips, ids, ids, 200, 64, True)
    assert np.corrcoef(learnt, tracked[ids])[0, 1] > 0.8
    rows = score(prepared_face5, 2, 20, 64)
    assert [r["what"] for r in rows] == ["run deformer on the expression loss (20 steps)", "run the tracked head model",
                                         "run audio baseline"]
    assert all(r["folds"] == 2 and r["frames"] == 24 for r in rows)
    assert rows[1]["mouth_corr"] > 0.5  # the head model's lips follow FaceMesh's
