"""au_extractor 'landmarks' and 'openface', teeth_segmenter 'landmarks', on real clips and real OpenFace CSVs."""

import csv
import os
import stat

import numpy as np
import pytest
from being_au_openface.normalise import normalise, run_feature_extraction
from conftest import FAST_FACE, prepare

from being_core.au import COLUMNS
from being_core.progress import Reporter

ICFACE_CSV = "openface/icface_00296.csv"


def read_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f, skipinitialspace=True))


@pytest.fixture(scope="session")
def prepared_icface(tmp_path_factory, being_testdata):
    """icface_00296.mp4 (291 frames, 224x224), the clip OpenFace ran on for icface_00296.csv."""
    root = tmp_path_factory.mktemp("icface") / "run"
    prepare(being_testdata / "openface" / "icface_00296.mp4", root,
            [*(f"stages.face_tracker.config.{k}={v}" for k, v in FAST_FACE.items()), "ingest.size=null",
             "stages.au_extractor.impl=landmarks", "stages.teeth_segmenter.impl=landmarks"])
    return root


def test_au_csv_has_the_reference_layout(prepared_icface):
    with open(prepared_icface / "au.csv", newline="") as f:
        raw = list(csv.reader(f))  # the way the reference readers split it: names keep their leading space
    assert raw[0] == [COLUMNS[0], *(" " + c for c in COLUMNS[1:])]
    assert " AU45_r" in raw[0] and len(raw) == 1 + 291
    rows = read_rows(prepared_icface / "au.csv")
    assert [int(r["frame"]) for r in rows] == list(range(1, 292))
    assert all(0 <= float(r["AU45_r"]) <= 5 for r in rows)


def test_landmark_aus_follow_openface(prepared_icface, being_testdata):
    ours = read_rows(prepared_icface / "au.csv")
    openface = read_rows(being_testdata / ICFACE_CSV)
    corr = {au: np.corrcoef([float(r[f"{au}_r"]) for r in ours], [float(r[f"{au}_r"]) for r in openface])[0, 1]
            for au in ("AU01", "AU02", "AU25", "AU45")}
    # Measured on this clip: AU01 0.88, AU02 0.80, AU25 0.64, AU45 0.82 (AU26 0.52; aligned on every point: AU01
    # 0.83, AU26 0.44).
    assert corr["AU45"] >= 0.6 and corr["AU25"] >= 0.6, corr
    assert corr["AU01"] >= 0.5 and corr["AU02"] >= 0.5, corr
    blinks = [i for i, r in enumerate(openface) if float(r["AU45_r"]) > 1.5]
    ours45 = np.array([float(r["AU45_r"]) for r in ours])
    assert blinks and ours45[blinks].mean() > 3 * np.median(ours45) + 0.5, "AU45 peaks where OpenFace sees blinks"


def test_a_dropping_jaw_moves_no_brow_or_eye_measure(prepared_icface):
    """Frames made from one real face whose jaw and lower lip alone move down, each seen at another pose: aligned
    on the upper face the brow and eye AUs stay still and the jaw drop follows the jaw; aligned on every point
    (align: all) the jaw tilts and shrinks the alignment, and the brows move with the jaw."""
    from being_au_landmarks.measures import align, raw_measures

    lm = np.load(prepared_icface / "face" / "landmarks.npy")
    face = lm[int(np.argmax(np.load(prepared_icface / "face" / "confidence.npy")))].astype(np.float64)
    below = face[:, 1] > face[14, 1] - 1  # the lower lip, the chin and the jaw (image y runs down)
    rng = np.random.default_rng(0)
    drop = np.tile([0.0, 2.0, 4.0, 6.0, 8.0, 4.0, 1.0], 6)
    frames = []
    for d in drop:
        moved = face.copy()
        moved[below, 1] += d * (moved[below, 1] - face[14, 1] + 3) / 20  # lower points drop further, as a jaw turns
        turn = rng.normal(0, 0.08)
        rot = np.array([[np.cos(turn), -np.sin(turn), 0], [np.sin(turn), np.cos(turn), 0], [0, 0, 1]])
        frames.append((moved - moved.mean(0)) @ rot.T * rng.uniform(0.9, 1.1) + [100, 100, 0] + rng.normal(0, 3, 3))
    frames = np.stack(frames)
    found = np.ones(len(frames), bool)
    shapes = align(frames, found)
    assert np.abs(shapes[:, [10, 151, 33, 263]] - shapes[0, [10, 151, 33, 263]]).max() < 1e-6  # the pose is gone
    upper, every = raw_measures(shapes), raw_measures(align(frames, found, rigid=None))
    assert np.corrcoef(upper["AU26"], drop)[0, 1] > 0.99
    for au in ("AU01", "AU02", "AU05", "AU45"):  # brows and lids, in eye-corner units
        assert np.ptp(upper[au]) < 1e-6, (au, upper[au])
    for au in ("AU01", "AU02"):  # what aligning on every point did
        assert abs(np.corrcoef(every[au], drop)[0, 1]) > 0.9 and np.ptp(every[au]) > 0.005, (au, every[au])


def test_openface_csv_round_trip(being_testdata):
    rows, report = normalise(being_testdata / ICFACE_CSV, 291)
    src = read_rows(being_testdata / ICFACE_CSV)
    assert report["frames_without_row"] == 0 and report["had_face_id"] is True
    assert [r["AU45_r"] for r in rows] == [float(r["AU45_r"]) for r in src]
    assert [r["AU28_c"] for r in rows] == [int(float(r["AU28_c"])) for r in src]


def test_openface_legacy_header_and_missing_frames(being_testdata):
    # py-feat's fixture: early OpenFace 2.0 output, no face_id, frames 1-100; the dataset here has 105.
    rows, report = normalise(being_testdata / "openface" / "pyfeat_OpenFace_Test.csv", 105)
    assert len(rows) == 105 and report["had_face_id"] is False
    assert report["frames_without_row"] == 5 and [r["success"] for r in rows[100:]] == [0] * 5
    src = read_rows(being_testdata / "openface" / "pyfeat_OpenFace_Test.csv")
    assert rows[0]["AU12_r"] == float(src[0]["AU12_r"])


def test_openface_csv_errors(being_testdata, tmp_path):
    path = being_testdata / ICFACE_CSV
    with pytest.raises(ValueError) as err:
        normalise(path, 100)
    assert str(err.value) == f"{path} has a row for frame 101, but the dataset has only 100 frames"
    bad = tmp_path / "x.csv"
    bad.write_text("a, b\n1, 2\n")
    with pytest.raises(ValueError) as err:
        normalise(bad, 10)
    assert str(err.value) == f"{bad} is not an OpenFace CSV: no frame, confidence, success column"


def test_openface_binary_sees_frames_in_order(prepared_icface, being_testdata, tmp_path):
    # A stand-in for FeatureExtraction (OpenFace cannot be built here): it lists the frames it was given,
    # in the order OpenFace reads them (sorted by name), and writes the real CSV.
    fake = tmp_path / "FeatureExtraction"
    fake.write_text("#!/bin/sh\nwhile [ $# -gt 0 ]; do case $1 in -fdir) d=$2;; -out_dir) o=$2;; esac; shift; done\n"
                    f"mkdir -p $o && ls $d > {tmp_path}/seen.txt && cp {being_testdata / ICFACE_CSV} $o/au.csv\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    out = run_feature_extraction(fake, prepared_icface / "ori_imgs", 291, tmp_path / "scratch", 60, Reporter())
    seen = (tmp_path / "seen.txt").read_text().split()
    assert seen[:3] == ["000000.jpg", "000001.jpg", "000002.jpg"] and len(seen) == 291
    assert os.path.realpath(tmp_path / "scratch" / "openface" / "frames" / "000010.jpg").endswith("ori_imgs/10.jpg")
    assert normalise(out, 291)[1]["rows_in_csv"] == 291
    with pytest.raises(ValueError) as err:
        run_feature_extraction(tmp_path / "seen.txt", prepared_icface / "ori_imgs", 291, tmp_path / "s2", 60, Reporter())
    assert str(err.value) == f"binary: {tmp_path / 'seen.txt'} is not an executable file (OpenFace's FeatureExtraction)"


def test_openface_config_needs_one_source(being_registry):
    from being_core.config import resolve
    from being_core.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        resolve({"stages": {"au_extractor": {"impl": "openface"}}}, being_registry, "c.yaml")
    assert str(err.value) == ("c.yaml has 1 problem:\n  - stages.au_extractor.config: Value error, set exactly one of "
                              "binary (run OpenFace) or csv (use its output)")


def test_teeth_masks_open_and_closed_mouth(prepared_copy, being_run_stage):
    """Checked by eye on videoretalking_face5.mp4: frames 67 and 74 have closed lips; frames 36, 57, 82 and 88
    show the upper and lower teeth."""
    being_run_stage(prepared_copy, "teeth_segmenter", "landmarks")
    masks = {i: np.load(prepared_copy / "teeth_mask" / f"{i}.npy") for i in range(122)}
    assert all(m.dtype == bool and m.shape == (512, 512) for m in masks.values())
    assert not masks[67].any() and not masks[74].any()
    for i in (36, 57, 82, 88):
        assert masks[i].sum() > 150, i
    lm = np.load(prepared_copy / "face" / "landmarks.npy")
    ys, xs = np.nonzero(masks[36])
    assert lm[36, 61, 0] <= xs.min() and xs.max() <= lm[36, 291, 0], "teeth lie between the mouth corners"


def test_easyportrait_letterboxes_and_maps_back(prepared_copy, being_run_stage, tmp_path):
    from being_teeth_easyportrait import EasyPortraitConfig
    from being_teeth_easyportrait.testing import save_tiny_model
    from PIL import Image

    # A non-square 48x64 model on 512x512 frames: letterboxed to 48x48, padded right, mapped back.
    model = save_tiny_model(tmp_path / "tiny.onnx", height=48, width=64)
    entry = being_run_stage(prepared_copy, "teeth_segmenter", "easyportrait", {"model": str(model)})
    assert entry["metrics"]["input_size"] == [48, 64]
    cfg = EasyPortraitConfig()
    for i in (0, 60):
        mask = np.load(prepared_copy / "teeth_mask" / f"{i}.npy")
        assert mask.dtype == bool and mask.shape == (512, 512)
        rgb = np.asarray(Image.open(prepared_copy / "ori_imgs" / f"{i}.jpg").convert("RGB"), np.float32)
        expected = (((rgb - cfg.mean) / cfg.std).sum(-1) > 3.0)  # the tiny model's rule, at full resolution
        iou = (mask & expected).sum() / (mask | expected).sum()
        assert iou > 0.7, iou


def test_easyportrait_model_errors(prepared_copy, being_run_stage, tmp_path):
    from being_core.errors import StageFailed

    with pytest.raises(StageFailed) as err:
        being_run_stage(prepared_copy, "teeth_segmenter", "easyportrait", {"model": str(tmp_path / "none.onnx")})
    assert str(err.value) == (f"teeth_segmenter 'easyportrait' failed: ValueError: stages.teeth_segmenter.config.model: "
                              f"{tmp_path / 'none.onnx'} does not exist")
    with pytest.raises(StageFailed) as err:
        being_run_stage(prepared_copy, "teeth_segmenter", "easyportrait")
    assert str(err.value) == ("teeth_segmenter 'easyportrait' failed: ValueError: stages.teeth_segmenter.config.model "
                              "is not set: export an EasyPortrait model to ONNX and give its path")
